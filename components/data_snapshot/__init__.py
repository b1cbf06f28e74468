"""DataSnapshot: what this run ingests and what it is gated against, looked up fresh each run."""
