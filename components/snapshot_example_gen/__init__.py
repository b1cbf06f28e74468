"""SnapshotExampleGen: ExampleGen that ingests exactly what a DataSnapshot saw."""
