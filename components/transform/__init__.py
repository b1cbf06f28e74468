"""Transform preprocessing, one module per modality."""
