"""hubpipe pipeline: config, the DAG, runners, CLI and run summary."""
