"""What the benchmark scripts share: the Fashion-MNIST subset as model inputs."""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from hubpipe.components.datasets import fashion_mnist
from hubpipe.components.transform import image as image_transform


def load_fashion_mnist(train: int, eval_: int, seed: int, size: int):
  """(x_train, y_train, x_eval, y_eval, folder): images [N, size, size, 3] in
  [0, 1], decoded and resized as the pipeline's Transform does."""
  folder = fashion_mnist.prepare(train, eval_, seed=seed)
  spec = {'image': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64)}

  def decode(serialized):
    parsed = tf.io.parse_example(serialized, spec)
    return (image_transform.decode_and_resize(parsed['image'], size, size),
            parsed['label'])

  def split(name):
    ds = (tf.data.TFRecordDataset(str(folder / name / 'data.tfrecord'))
          .batch(256).map(decode, num_parallel_calls=tf.data.AUTOTUNE))
    images, labels = zip(*ds.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)

  return (*split('train'), *split('eval'), folder)
