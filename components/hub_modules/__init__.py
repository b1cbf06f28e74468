"""TF Hub modules that hubpipe builds offline from pinned, checksummed sources.

Each module is written as a TF2 *reusable SavedModel* (loadable with
`hub.KerasLayer(path, trainable=...)`) under `data_dir()/'modules'/<name>`.
See `mobilenet_v1` for the image feature-vector modules.
"""
