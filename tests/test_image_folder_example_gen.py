"""Tests for the image folder ExampleGen executor: pure helpers and Executor().Do end to end."""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import glob
import io
import json
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from hubpipe.components import image_folder_example_gen as ifeg
from hubpipe.components.image_folder_example_gen import component as ifeg_component
from hubpipe.components.image_folder_example_gen import executor as ifeg_executor

CLASSES = ('cat', 'dog', 'fox')


def _image_bytes(seed: int, fmt: str, size=(12, 10)) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt)
  return buf.getvalue()


def _make_folder(root, classes=CLASSES, per_class=6, seed=0):
  """root/<class>/img<i>.{png,jpg,JPEG} with distinct random images; returns path->label."""
  expected = {}
  for label, name in enumerate(sorted(classes)):
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(per_class):
      ext, fmt = [('png', 'PNG'), ('jpg', 'JPEG'), ('JPEG', 'JPEG')][i % 3]
      path = folder / f'img{i}.{ext}'
      path.write_bytes(_image_bytes(seed * 1000 + label * 100 + i, fmt))
      expected[str(path)] = label
  return expected


def _add_corrupt(root):
  """Four bad files in the class folders; returns their paths."""
  good = _image_bytes(999, 'PNG')
  bad = {
      root / 'cat' / 'truncated.png': good[:len(good) // 2],
      root / 'dog' / 'text.jpg': b'this is not an image\n',
      root / 'fox' / 'empty.png': b'',
  }
  for path, data in bad.items():
    path.write_bytes(data)
  broken = root / 'fox' / 'dangling.jpeg'
  os.symlink(root / 'does-not-exist.jpeg', broken)
  return sorted(str(p) for p in [*bad, broken])


def _exec_properties(input_base, splits, output_splits=None, custom_config=None):
  input_config = example_gen_pb2.Input(splits=[
      example_gen_pb2.Input.Split(name=n, pattern=p) for n, p in splits])
  output_config = example_gen_pb2.Output()
  if output_splits:
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=b)
                for n, b in output_splits]))
  props = {
      standard_component_specs.INPUT_BASE_KEY: str(input_base),
      standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
      standard_component_specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(
          output_config),
      standard_component_specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
  }
  if custom_config is not None:
    props[standard_component_specs.CUSTOM_CONFIG_KEY] = custom_config
  return props


def _run(tmp_path, exec_properties):
  examples = standard_artifacts.Examples()
  examples.uri = str(tmp_path / 'output')
  ifeg.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]},
                     exec_properties)
  return examples


def _read_split(examples, split, image_feature='image', label_feature='label'):
  files = glob.glob(os.path.join(examples.uri, f'Split-{split}', '*.gz'))
  assert files, f'no output files for split {split}'
  records = []
  for raw in tf.data.TFRecordDataset(files, compression_type='GZIP'):
    example = tf.train.Example.FromString(raw.numpy())
    feature = example.features.feature
    assert set(feature) == {image_feature, label_feature}
    records.append((feature[image_feature].bytes_list.value[0],
                    feature[label_feature].int64_list.value[0]))
  return records


def _by_bytes(expected):
  return {open(p, 'rb').read(): label for p, label in expected.items()}


# ---------------------------------------------------------------- pure helpers


def test_class_ids_sorted_in_string_order():
  assert ifeg.class_ids(['dog', 'cat', 'Zebra', 'cat']) == {
      'Zebra': 0, 'cat': 1, 'dog': 2}


def test_list_class_folders_pool_split_folder_and_hidden(tmp_path):
  for name in ('b', 'a', '.ipynb_checkpoints'):
    (tmp_path / 'pool' / name).mkdir(parents=True)
  (tmp_path / 'pool' / 'stray.png').write_bytes(b'x')
  found = ifeg.list_class_folders(str(tmp_path / 'pool'), '*')
  assert list(found) == ['a', 'b']
  assert found['a'] == [str(tmp_path / 'pool' / 'a')]

  for split in ('train', 'eval'):
    for name in ('y', 'x'):
      (tmp_path / 'pre' / split / name).mkdir(parents=True)
  # 'train' names the split folder; 'train/*' the class folders: same result.
  assert ifeg.list_class_folders(str(tmp_path / 'pre'), 'train') == {
      'x': [str(tmp_path / 'pre' / 'train' / 'x')],
      'y': [str(tmp_path / 'pre' / 'train' / 'y')]}
  assert ifeg.list_class_folders(str(tmp_path / 'pre'), 'train/*') == (
      ifeg.list_class_folders(str(tmp_path / 'pre'), 'train'))
  assert ifeg.list_class_folders(str(tmp_path / 'pre'), 'nothing*') == {}


def test_list_images_filters_by_extension_case_insensitive(tmp_path):
  for name in ('a.png', 'b.JPG', 'c.jpeg', 'd.Jpeg', 'notes.txt', '.DS_Store',
               '._e.jpg', 'f.gif'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'sub.png').mkdir()
  images, ignored = ifeg.list_images(str(tmp_path))
  assert [os.path.basename(p) for p in images] == ['a.png', 'b.JPG', 'c.jpeg',
                                                     'd.Jpeg']
  assert sorted(os.path.basename(p) for p in ignored) == sorted(
      ['notes.txt', '.DS_Store', '._e.jpg', 'f.gif', 'sub.png'])


def test_check_image_bytes_accepts_png_and_jpeg():
  assert ifeg.check_image_bytes(_image_bytes(1, 'PNG')) == 'PNG'
  assert ifeg.check_image_bytes(_image_bytes(1, 'JPEG')) == 'JPEG'


@pytest.mark.parametrize('data, reason', [
    (b'', 'empty'),
    (b'hello, not an image', 'not a PNG or JPEG'),
    (_image_bytes(2, 'PNG')[:200], 'cannot be decoded'),
    (_image_bytes(2, 'JPEG')[:-40], 'cannot be decoded'),
    (_image_bytes(2, 'GIF'), 'GIF image'),
])
def test_check_image_bytes_rejects_bad_data(data, reason):
  with pytest.raises(ValueError, match=reason):
    ifeg.check_image_bytes(data)


def test_build_example():
  example = ifeg.build_example(b'\x89PNG...', 2, 'img', 'y')
  assert example.features.feature['img'].bytes_list.value == [b'\x89PNG...']
  assert example.features.feature['y'].int64_list.value == [2]


def test_parse_custom_config_forms():
  assert ifeg.parse_custom_config(None) == ifeg.ImageFolderConfig()
  assert ifeg.parse_custom_config('') == ifeg.ImageFolderConfig()
  want = ifeg.ImageFolderConfig('img', 'y', 'skip')
  proto = ifeg.make_custom_config('img', 'y', 'skip')
  assert ifeg.parse_custom_config(proto) == want
  assert ifeg.parse_custom_config(proto_utils.proto_to_json(proto)) == want
  plain = {'image_feature': 'img', 'label_feature': 'y', 'on_corrupt': 'skip'}
  assert ifeg.parse_custom_config(plain) == want
  assert ifeg.parse_custom_config(json.dumps(plain)) == want
  assert ifeg.parse_custom_config({'on_corrupt': 'skip'}).image_feature == 'image'
  with pytest.raises(ValueError, match='unknown keys'):
    ifeg.parse_custom_config({'on_corupt': 'skip'})
  with pytest.raises(ValueError, match='on_corrupt'):
    ifeg.make_custom_config(on_corrupt='ignore')
  with pytest.raises(ValueError, match='must differ'):
    ifeg.parse_custom_config({'image_feature': 'x', 'label_feature': 'x'})


def test_corrupt_images_error_message_lists_at_most_20():
  bad = [(f'/data/cat/{i:02d}.png', 'empty file (0 bytes)') for i in range(25)]
  error = ifeg.CorruptImagesError(bad, '/data')
  message = str(error)
  assert error.count == 25 and isinstance(error, ValueError)
  assert message.startswith('25 corrupt or unreadable image file(s) under /data')
  assert '/data/cat/19.png' in message and '/data/cat/20.png' not in message
  assert '... and 5 more' in message
  assert 'remove or repair these files, or set data.on_corrupt: skip' in message
  assert 'corrupt_images.txt' in message


def test_component_wiring():
  from tfx.components import FileBasedExampleGen  # pylint: disable=g-import-not-at-top
  from tfx.dsl.components.base import executor_spec  # pylint: disable=g-import-not-at-top
  component = FileBasedExampleGen(
      input_base='/images',
      input_config=example_gen_pb2.Input(splits=[
          example_gen_pb2.Input.Split(name='all', pattern='*')]),
      output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
          splits=[example_gen_pb2.SplitConfig.Split(name='train', hash_buckets=4),
                  example_gen_pb2.SplitConfig.Split(name='eval', hash_buckets=1)])),
      custom_config=ifeg.make_custom_config(on_corrupt='skip'),
      custom_executor_spec=executor_spec.BeamExecutorSpec(ifeg.Executor))
  stored = component.exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY]
  assert ifeg.parse_custom_config(stored).on_corrupt == 'skip'


def test_split_configs_pool_and_presplit(tmp_path):
  (tmp_path / 'pool' / 'cat').mkdir(parents=True)
  input_config, output_config = ifeg_component.split_configs(str(tmp_path / 'pool'),
                                                             0.2)
  assert [(s.name, s.pattern) for s in input_config.splits] == [('all', '*')]
  assert [(s.name, s.hash_buckets) for s in output_config.split_config.splits] == [
      ('train', 800), ('eval', 200)]
  for split in ('train', 'eval'):
    (tmp_path / 'pre' / split / 'cat').mkdir(parents=True)
  input_config, output_config = ifeg_component.split_configs(str(tmp_path / 'pre'))
  assert [(s.name, s.pattern) for s in input_config.splits] == [
      ('train', 'train/*'), ('eval', 'eval/*')]
  assert not output_config.split_config.splits
  (tmp_path / 'half' / 'train' / 'cat').mkdir(parents=True)
  with pytest.raises(ValueError, match='no eval/ folder'):
    ifeg_component.split_configs(str(tmp_path / 'half'))
  # A validation/ folder beside them is a split of its own.
  (tmp_path / 'pre' / 'validation' / 'cat').mkdir(parents=True)
  input_config, _ = ifeg_component.split_configs(str(tmp_path / 'pre'))
  assert [(s.name, s.pattern) for s in input_config.splits] == [
      ('train', 'train/*'), ('eval', 'eval/*'), ('validation', 'validation/*')]
  (tmp_path / 'onlyval' / 'validation' / 'cat').mkdir(parents=True)
  with pytest.raises(ValueError, match='no train/ or eval/ folder'):
    ifeg_component.split_configs(str(tmp_path / 'onlyval'))


def test_component_from_config(tmp_path):
  (tmp_path / 'pool' / 'cat').mkdir(parents=True)
  data = types.SimpleNamespace(image_feature='img', label_feature='y',
                               on_corrupt='skip', eval_fraction=0.25)
  component = ifeg_component.image_folder_example_gen(
      types.SimpleNamespace(data=data), str(tmp_path / 'pool'))
  props = component.exec_properties
  assert props[standard_component_specs.INPUT_BASE_KEY] == str(tmp_path / 'pool')
  assert ifeg.parse_custom_config(props[standard_component_specs.CUSTOM_CONFIG_KEY]) == (
      ifeg.ImageFolderConfig('img', 'y', 'skip'))
  assert component.executor_spec.executor_class is ifeg.Executor


# ---------------------------------------------------------------- errors before Beam


def test_empty_input_names_input_base(tmp_path):
  (tmp_path / 'images').mkdir()
  props = _exec_properties(tmp_path / 'images', [('all', '*')],
                           [('train', 4), ('eval', 1)])
  with pytest.raises(ifeg.NoImagesError, match=str(tmp_path / 'images')):
    _run(tmp_path, props)
  (tmp_path / 'images' / 'cat').mkdir()
  (tmp_path / 'images' / 'cat' / 'readme.txt').write_text('no images here')
  with pytest.raises(ifeg.NoImagesError, match='no .png/.jpg/.jpeg files'):
    _run(tmp_path, props)


def test_missing_input_base(tmp_path):
  props = _exec_properties(tmp_path / 'nope', [('all', '*')], [('train', 1)])
  with pytest.raises(ifeg.NoImagesError, match='is not a folder'):
    _run(tmp_path, props)


def test_splits_with_different_classes_raise(tmp_path):
  _make_folder(tmp_path / 'images' / 'train', classes=('cat', 'dog'), per_class=1)
  _make_folder(tmp_path / 'images' / 'eval', classes=('cat', 'emu'), per_class=1)
  props = _exec_properties(tmp_path / 'images', [('train', 'train'), ('eval', 'eval')])
  with pytest.raises(ifeg.ClassMismatchError, match=r"missing in 'eval': \['dog'\]"):
    _run(tmp_path, props)


def test_a_class_empty_only_in_eval_is_a_warning_in_train_an_error(tmp_path):
  """The model learns a class from train: a class folder empty in eval
  only leaves that split without its examples; empty in train, it is an
  error (an output the model would never learn)."""
  root = tmp_path / 'images'
  _make_folder(root / 'train', classes=('cat', 'dog'), per_class=1)
  _make_folder(root / 'eval', classes=('cat',), per_class=1)
  (root / 'eval' / 'dog').mkdir()
  splits = [('train', 'train/*'), ('eval', 'eval/*')]
  assert ifeg_executor.check_layout(str(root), splits) == ['cat', 'dog']
  for image in (root / 'train' / 'dog').iterdir():
    image.unlink()
  with pytest.raises(ifeg.NoImagesError, match="dog of split 'train'"):
    ifeg_executor.check_layout(str(root), splits)


# ---------------------------------------------------------------- end to end


def test_do_hash_split_pool(tmp_path):
  expected = _make_folder(tmp_path / 'images')
  (tmp_path / 'images' / 'cat' / 'notes.txt').write_text('ignored')
  examples = _run(tmp_path, _exec_properties(
      tmp_path / 'images', [('all', '*')], [('train', 4), ('eval', 1)]))

  assert examples.split_names == artifact_utils.encode_split_names(['train', 'eval'])
  train, eval_ = _read_split(examples, 'train'), _read_split(examples, 'eval')
  assert len(train) + len(eval_) == 18 and len(train) > len(eval_) > 0
  assert sorted(train + eval_) == sorted(_by_bytes(expected).items())
  uri = examples.uri
  assert open(os.path.join(uri, 'classes.txt')).read() == 'cat\ndog\nfox\n'
  assert json.loads(examples.get_string_custom_property('class_names')) == list(CLASSES)
  assert not os.path.exists(os.path.join(uri, 'corrupt_images.txt'))
  assert not os.path.exists(os.path.join(uri, '.image_folder_example_gen'))


def test_do_presplit_folders_custom_feature_names(tmp_path):
  train = _make_folder(tmp_path / 'images' / 'train', per_class=3, seed=1)
  eval_ = _make_folder(tmp_path / 'images' / 'eval', per_class=2, seed=2)
  config = proto_utils.proto_to_json(ifeg.make_custom_config('img', 'y'))
  examples = _run(tmp_path, _exec_properties(
      tmp_path / 'images', [('train', 'train'), ('eval', 'eval/*')],
      custom_config=config))

  assert examples.split_names == artifact_utils.encode_split_names(['train', 'eval'])
  assert sorted(_read_split(examples, 'train', 'img', 'y')) == sorted(
      _by_bytes(train).items())
  assert sorted(_read_split(examples, 'eval', 'img', 'y')) == sorted(
      _by_bytes(eval_).items())


def test_do_corrupt_images_fail(tmp_path):
  _make_folder(tmp_path / 'images', per_class=2)
  bad = _add_corrupt(tmp_path / 'images')
  props = _exec_properties(tmp_path / 'images', [('all', '*')],
                           [('train', 4), ('eval', 1)])
  with pytest.raises(ifeg.CorruptImagesError) as info:
    _run(tmp_path, props)
  message = str(info.value)
  assert info.value.count == 4
  assert message.startswith('4 corrupt or unreadable image file(s)')
  for path in bad:
    assert path in message
  assert 'set data.on_corrupt: skip' in message
  assert 'empty file' in message and 'unreadable' in message


def test_do_corrupt_images_skip(tmp_path):
  expected = _make_folder(tmp_path / 'images', per_class=2)
  bad = _add_corrupt(tmp_path / 'images')
  examples = _run(tmp_path, _exec_properties(
      tmp_path / 'images', [('all', '*')], [('train', 4), ('eval', 1)],
      custom_config=json.dumps({'on_corrupt': 'skip'})))

  records = _read_split(examples, 'train') + _read_split(examples, 'eval')
  assert sorted(records) == sorted(_by_bytes(expected).items())
  report = open(os.path.join(examples.uri, 'corrupt_images.txt')).read().splitlines()
  assert [line.split('\t')[0] for line in report] == bad
  assert all(line.split('\t')[1] for line in report)
  assert examples.get_int_custom_property('skipped_corrupt_images') == 4


def test_do_all_corrupt_with_skip_raises(tmp_path):
  for name in ('cat', 'dog'):
    (tmp_path / 'images' / name).mkdir(parents=True)
    (tmp_path / 'images' / name / 'a.png').write_bytes(b'')
  with pytest.raises(ifeg.NoImagesError, match='all 2 image files'):
    _run(tmp_path, _exec_properties(
        tmp_path / 'images', [('all', '*')], [('train', 1)],
        custom_config=json.dumps({'on_corrupt': 'skip'})))


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads files without permission')
def test_unreadable_permission_is_corrupt(tmp_path):
  _make_folder(tmp_path / 'images', per_class=1)
  locked = tmp_path / 'images' / 'cat' / 'img0.png'
  locked.chmod(0)
  with pytest.raises(ifeg.CorruptImagesError, match='unreadable'):
    _run(tmp_path, _exec_properties(tmp_path / 'images', [('all', '*')],
                                    [('train', 1)]))


def test_generate_examples_outside_do_is_refused():
  with pytest.raises(RuntimeError, match='Do'):
    ifeg_executor.Executor().GetInputSourceToExamplePTransform()
