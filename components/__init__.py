"""hubpipe components: Hub module handling, data ingestion, Transform and Trainer code, custom TFX components."""
