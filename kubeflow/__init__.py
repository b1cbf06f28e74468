"""Kubeflow Pipelines: compile the hubpipe DAG, and schedule recurring runs."""
