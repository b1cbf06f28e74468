"""ExampleGen for a folder of images with one sub-folder per class (a TFX custom executor).

Layout of `input_base`, either one pool that ExampleGen splits by hash:

  input_base/<class name>/<image>.png|.jpg|.jpeg     split pattern '*'

or splits made in advance, each with the same class folders:

  input_base/train/<class name>/<image>              split pattern 'train/*' (or 'train')
  input_base/eval/<class name>/<image>               split pattern 'eval/*'  (or 'eval')

Wiring (TFX 1.16):

  from tfx.components import FileBasedExampleGen
  from tfx.dsl.components.base import executor_spec
  from tfx.proto import example_gen_pb2
  from hubpipe.components.image_folder_example_gen import Executor, make_custom_config

  example_gen = FileBasedExampleGen(
      input_base=images_dir,
      input_config=example_gen_pb2.Input(splits=[
          example_gen_pb2.Input.Split(name='all', pattern='*')]),
      output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
          splits=[example_gen_pb2.SplitConfig.Split(name='train', hash_buckets=4),
                  example_gen_pb2.SplitConfig.Split(name='eval', hash_buckets=1)])),
      custom_config=make_custom_config(image_feature='image', label_feature='label',
                                       on_corrupt='fail'),
      custom_executor_spec=executor_spec.BeamExecutorSpec(Executor))

The pipeline builds exactly this from its config with
`component.image_folder_example_gen(config, input_base)` (reads data.image_feature,
data.label_feature, data.on_corrupt, data.eval_fraction; uses train/ and eval/ when
input_base has both). For pre-made splits use `input_config=Input(splits=[Split(name='train', pattern='train/*'),
Split(name='eval', pattern='eval/*')])` and `output_config=example_gen_pb2.Output()`
(`train/*` rather than `train` keeps ExampleGen's input fingerprint, and so caching,
aware of added or removed images).

Each image becomes a tf.Example with its encoded file bytes under `image` and its
class id (int64) under `label`; see `executor` for the rules (class ids, ignored
files, corrupt images).
"""

from hubpipe.components.image_folder_example_gen.executor import (
    IMAGE_EXTENSIONS,
    ClassMismatchError,
    CorruptImagesError,
    Executor,
    ImageFolderConfig,
    NoImagesError,
    build_example,
    check_image_bytes,
    class_ids,
    list_class_folders,
    list_images,
    make_custom_config,
    parse_custom_config,
)

__all__ = [
    'IMAGE_EXTENSIONS', 'ClassMismatchError', 'CorruptImagesError', 'Executor',
    'ImageFolderConfig', 'NoImagesError', 'build_example', 'check_image_bytes',
    'class_ids', 'list_class_folders', 'list_images', 'make_custom_config',
    'parse_custom_config',
]
