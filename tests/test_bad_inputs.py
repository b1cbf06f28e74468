"""A table of bad inputs, each a test (issue 18).

Every row is one bad input and ends either in a message that names the
problem and the fix (`hubpipe run` exits 2 when the config or the module
it names is wrong, 1 when the data, the storage or a step failed;
summary.json records the failed step and the reason; nothing is pushed),
or, where the right answer is to take it, in the input being handled.

For speed, `hubpipe run` is called in this process (cli.main), the image
rows use a tiny SavedModel as the module (the DAG rows stop before any step
loads it), and rows whose problem shows in the same step share one run
(module-scoped fixtures): each row still asserts its own message.

  config rows   fail on load or before the DAG starts (exit 2 for the
                config and the module, 1 for the data);
  DAG rows      fail at the step that finds the problem (exit 1);
  handled rows  grayscale, RGBA, CMYK and 16-bit images, odd text in
                TFRecords: taken and decoded where the pipeline decodes them;
  unit rows     failures of the Trainer, checked where they are raised.
"""

import contextlib
import dataclasses
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hubpipe.pipeline import cli
from hubpipe.pipeline.config import REPO_ROOT

from reliability import record_bad_input

# ---------------------------------------------------------------- helpers


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _rgb(colour, size=(8, 8)) -> Image.Image:
  return Image.fromarray(np.full(size + (3,), colour, np.uint8))


def _bilevel_png(width: int, height: int) -> bytes:
  """A real, all-black 1-bit PNG of width x height pixels (a few KB however
  large: a decompression bomb), written chunk by chunk."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  row = b'\0' * (1 + (width + 7) // 8)  # filter byte + the packed pixels
  packer = zlib.compressobj(9)
  idat = b''.join(packer.compress(row) for _ in range(height)) + packer.flush()
  return (b'\x89PNG\r\n\x1a\n' +
          chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0))
          + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def _tfrecords(path: Path, examples):
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for features in examples:
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=features)).SerializeToString())


def _bytes(value: bytes):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


PNG = _encoded(_rgb((30, 60, 90)), 'PNG')


def _image_examples(labels):
  return [{'image': _bytes(PNG), 'label': _int(label)} for label in labels]


def _class_folders(root: Path, classes=('a', 'b'), per_class=3):
  for c, name in enumerate(classes):
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      (root / name / f'{i}.png').write_bytes(
          _encoded(_rgb((40 * c, 20 * i, 100)), 'PNG'))


def _tiny_image_module(path: Path) -> str:
  """A SavedModel that takes float images of any size: enough for the module
  check (the DAG rows stop before any step loads the module)."""

  class Tiny(tf.Module):

    def __init__(self):
      super().__init__()
      self.kernel = tf.Variable(tf.ones([3, 4]))

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
      return tf.reduce_mean(tf.einsum('nhwc,cd->nhwd', images, self.kernel),
                            axis=[1, 2])

  tf.saved_model.save(Tiny(), str(path))
  return str(path)


@pytest.fixture(scope='module')
def tiny_module(tmp_path_factory):
  return _tiny_image_module(tmp_path_factory.mktemp('module') / 'tiny')


def _real(folder: Path) -> Path:
  """`folder` (made if need be) as hubpipe names it: config paths are
  resolved, links included."""
  folder.mkdir(parents=True, exist_ok=True)
  return Path(os.path.realpath(folder))


def _config(folder: Path, text: str) -> str:
  path = folder / 'config.yaml'
  path.write_text(text)
  return str(path)


def _image_config(folder: Path, module: str, data: str, name='bad') -> str:
  return _config(folder, (
      f'name: {name}\n'
      f'data:\n{data}'
      f'module:\n  handle: {module}\n  input_size: [32, 32]\n'
      'beam:\n  direct_running_mode: in_memory\n'))


@dataclasses.dataclass
class Ran:
  rc: int
  output: str   # what hubpipe printed (stdout and stderr)
  summary: dict
  workdir: Path


def _hubpipe_run(config: str, workdir: Path) -> Ran:
  """`hubpipe run --config CONFIG --workdir WORKDIR`, in this process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = cli.main(['run', '--config', config, '--workdir', str(workdir)])
  summary = json.loads((workdir / 'summary.json').read_text())
  return Ran(rc, err.getvalue() + out.getvalue(), summary, workdir)


def _assert_stopped(ran: Ran, step: str, fragments, name: str):
  """Exit status by the step, the message in what was printed and in
  summary.json, and nothing pushed."""
  assert ran.rc == (2 if step in ('config', 'module') else 1), ran.output
  assert ran.summary['status'] == 'failed'
  assert ran.summary['failed_step'] == step, ran.summary.get('error')
  for fragment in fragments:
    assert fragment in ran.summary['error'], (name, fragment, ran.summary['error'])
    assert fragment in ran.output, (name, fragment)
  assert not ran.summary.get('pushed')
  serving = ran.workdir / 'serving'
  assert not (serving.exists() and
              [p for p in serving.rglob('*') if p.name.isdigit()]), name


# ---------------------------------------------------------------- config rows
# Each setup writes what the row needs under `folder` and returns
# (config path, the message fragments: the problem, then the fix).


def _unknown_key(folder, module):
  return (_config(folder, 'trainig:\n  epochs: 1\n'),
          ['unknown key "trainig"', 'Did you mean "training"?'])


def _wrong_type(folder, module):
  return (_config(folder, 'training:\n  batch_size: big\n'),
          ["training.batch_size: expected an integer, got 'big'"])


def _out_of_range(folder, module):
  return (_config(folder, 'evaluation:\n  min_accuracy: 1.5\n'),
          ['evaluation.min_accuracy', 'must be in [0, 1], got 1.5'])


def _value_not_allowed(folder, module):
  return (_config(folder, 'model:\n  integration: fine-tune\n'),
          ['model.integration: "fine-tune" is not allowed',
           'use one of: feature_extraction, fine_tune, hybrid'])


def _not_yaml(folder, module):
  return (_config(folder, 'name: [unclosed\n'),
          ['is not valid YAML', 'line 2'])


def _no_data_path(folder, module):
  return (_config(folder, 'data:\n  source: tfrecord\n'),
          ['data.path: required when data.source is "tfrecord"',
           '(the folder that holds the data)'])


def _missing_data_folder(folder, module):
  return (_image_config(folder, module, '  source: tfrecord\n  path: nowhere\n'),
          ['data.path', str(folder / 'nowhere'), 'is not a folder',
           'Point data.path at the folder that holds the data',
           "read from the config file's folder"])


def _empty_data_folder(folder, module):
  (folder / 'data').mkdir()
  return (_image_config(folder, module, '  source: tfrecord\n  path: data\n'),
          [f'{folder / "data" / "train" / "*"} matches no file',
           'each data root must hold train/ and eval/ folders of TFRecord files'])


def _schema_file_missing(folder, module):
  return (_config(folder, 'data:\n  schema: my_schema.pbtxt\n'),
          [f'no schema file at {folder / "my_schema.pbtxt"}',
           'Point data.schema at a schema.pbtxt, or leave it unset'])


def _feature_not_in_schema(folder, module):
  return (_config(folder, 'data:\n  label_feature: category\n'),
          ['data.label_feature: feature "category" is not in the schema',
           'Rename the feature in data.label_feature, or point data.schema'])


def _module_does_not_exist(folder, module):
  (folder / 'data').mkdir()
  return (_image_config(folder, 'mobilenet_v9_224',
                        '  source: tfrecord\n  path: data\n'),
          ['module.handle: "mobilenet_v9_224" is neither an offline module',
           'mobilenet_v1_100_224', 'nor a local SavedModel folder'])


def _module_folder_without_model(folder, module):
  (folder / 'data').mkdir()
  (folder / 'my_module').mkdir()
  return (_image_config(folder, str(folder / 'my_module'),
                        '  source: tfrecord\n  path: data\n'),
          ['holds no saved_model.pb',
           'point it at a TF2 SavedModel (or TF1 Hub format) folder'])


def _module_url_offline(folder, module):
  # Nothing listens on loopback port 1: refused at once, as without network.
  (folder / 'data').mkdir()
  return (_image_config(folder, 'https://127.0.0.1:1/google/some-module/5',
                        '  source: tfrecord\n  path: data\n'),
          ['cannot reach 127.0.0.1 to download', '(no network?)',
           'Use a local copy instead', 'TFHUB_CACHE_DIR/<sha1 of the handle>'])


def _text_config(folder, handle, module_extra=''):
  (folder / 'data').mkdir()
  return _config(folder, (
      'name: bad-text\nmodality: text\n'
      'data:\n  source: csv\n  path: data\n'
      f'module:\n  handle: {handle}\n{module_extra}'
      'beam:\n  direct_running_mode: in_memory\n'))


def _module_wrong_modality(folder, module):
  return (_text_config(folder, module),
          ['(image module;', 'does not fit the config: modality "text"',
           'Use a text module (`hubpipe modules list`)'])


def _preprocessor_as_module(folder, module):
  return (_text_config(folder, 'minilm_l6_v2_preprocess'),
          ['is a preprocessing model, not an encoder',
           'Set module.handle to its encoder and module.preprocessor to this one'])


def _seq_length_over_the_module(folder, module):
  return (_text_config(folder, 'minilm_l6_v2', '  seq_length: 1024\n'),
          ['takes at most 512 tokens', 'module.seq_length is 1024',
           'Set module.seq_length to 512 or less'])


def _unreadable_folder(folder, module):
  data = folder / 'data'
  _tfrecords(data / 'train' / 'a.tfrecord', _image_examples([0, 1]))
  _tfrecords(data / 'eval' / 'a.tfrecord', _image_examples([0, 1]))
  return (_image_config(folder, module, '  source: tfrecord\n  path: data\n'),
          [f'{data} cannot be read', 'Permission denied',
           'give the user that runs hubpipe read access',
           f'chmod -R a+rX {data}'])


def _image_folder_empty_class(folder, module):
  _class_folders(folder / 'images', ('cat', 'dog'))
  (folder / 'images' / 'emu').mkdir()
  return (_image_config(folder, module, '  source: image_folder\n  path: images\n'),
          [f'class folder(s) {folder / "images" / "emu"}', 'hold no .png/.jpg/.jpeg',
           'Put the images of that class in it, or remove the folder'])


def _image_folder_single_class(folder, module):
  _class_folders(folder / 'images', ('cat',))
  return (_image_config(folder, module, '  source: image_folder\n  path: images\n'),
          ['holds one class folder (cat)', 'needs two or more classes',
           'Put each class in a sub-folder of its own'])


def _image_folder_train_without_eval(folder, module):
  _class_folders(folder / 'images' / 'train')
  return (_image_config(folder, module, '  source: image_folder\n  path: images\n'),
          ['has a train/ folder but no eval/ folder',
           'give it both train/ and eval/'])


def _image_folder_without_images(folder, module):
  for name in ('cat', 'dog'):
    (folder / 'images' / name).mkdir(parents=True)
    (folder / 'images' / name / 'notes.txt').write_text('no images here')
  return (_image_config(folder, module, '  source: image_folder\n  path: images\n'),
          ['hold no .png/.jpg/.jpeg files',
           'images must lie directly inside the class folder'])


CONFIG_ROWS = [
    # name, setup, failed step
    ('unknown_config_key', _unknown_key, 'config'),
    ('wrong_type', _wrong_type, 'config'),
    ('out_of_range_value', _out_of_range, 'config'),
    ('value_not_allowed', _value_not_allowed, 'config'),
    ('config_not_yaml', _not_yaml, 'config'),
    ('no_data_path', _no_data_path, 'config'),
    ('missing_data_folder', _missing_data_folder, 'config'),
    ('schema_file_missing', _schema_file_missing, 'config'),
    ('feature_not_in_schema', _feature_not_in_schema, 'config'),
    ('module_does_not_exist', _module_does_not_exist, 'module'),
    ('module_folder_without_saved_model', _module_folder_without_model, 'module'),
    ('module_url_offline', _module_url_offline, 'module'),
    ('module_of_the_wrong_modality', _module_wrong_modality, 'module'),
    ('preprocessor_given_as_the_module', _preprocessor_as_module, 'module'),
    ('seq_length_over_the_module_limit', _seq_length_over_the_module, 'module'),
    ('empty_data_folder', _empty_data_folder, 'data'),
    ('unreadable_data_folder', _unreadable_folder, 'data'),
    ('image_folder_empty_class', _image_folder_empty_class, 'data'),
    ('image_folder_single_class', _image_folder_single_class, 'data'),
    ('image_folder_train_without_eval', _image_folder_train_without_eval, 'data'),
    ('image_folder_without_images', _image_folder_without_images, 'data'),
]


# The config rows that `load_config` refuses (the others load, and stop
# when the run checks what they name).
REFUSED_ON_LOAD = {name for name, _, step in CONFIG_ROWS if step == 'config'
                   } - {'missing_data_folder'}


def _deny_reading(monkeypatch, folder: Path):
  """Takes read permission away from `folder`. As root, permission bits do
  not stop reading, so the refusal the file system gives anyone else is
  raised for it where the data is listed (tf.io.gfile)."""
  folder.chmod(0)
  if os.geteuid() != 0:
    return
  real = tf.io.gfile.listdir

  def listdir(path):
    if os.path.realpath(str(path).rstrip('/')) == os.path.realpath(folder):
      raise tf.errors.PermissionDeniedError(
          None, None, f'{folder}; Permission denied')
    return real(path)
  monkeypatch.setattr(tf.io.gfile, 'listdir', listdir)


@pytest.mark.parametrize('name,setup,step', CONFIG_ROWS,
                         ids=[row[0] for row in CONFIG_ROWS])
def test_config_rows(name, setup, step, tmp_path, tiny_module, monkeypatch):
  monkeypatch.setenv('TFHUB_CACHE_DIR', str(tmp_path / 'tfhub_cache'))
  folder = _real(tmp_path / 'in')
  config, fragments = setup(folder, tiny_module)
  if name == 'unreadable_data_folder':
    _deny_reading(monkeypatch, folder / 'data')
  try:
    ran = _hubpipe_run(config, tmp_path / 'work')
  finally:
    if (folder / 'data').exists():
      (folder / 'data').chmod(0o755)
  if name in REFUSED_ON_LOAD:
    # `hubpipe: bad config: ...`, and the work dir holds the summary only.
    assert ran.output.startswith('hubpipe: bad config: ')
    assert sorted(p.name for p in ran.workdir.iterdir()) == [
        '.lock', 'summary.json']
  _assert_stopped(ran, step, fragments, name)
  record_bad_input(name, 'clear_error')


# ---------------------------------------------------------------- DAG rows

# Files of the image folder run: those that stop it (with the reason its
# message gives) and those it takes.
BAD_IMAGES = {
    'corrupt_image': ('a/corrupt.png', 'not a PNG or JPEG image'),
    'truncated_image': ('b/truncated.jpg', 'cannot be decoded as JPEG'),
    'huge_image': ('a/huge.png', 'too large: 12000x12000, more than the '
                                 '89,478,485 pixels an image may have'),
    'decompression_bomb': ('b/bomb.png', 'too large: 400000000 pixels'),
}
GOOD_ODD_IMAGES = {
    # name: (file, its RGB colour as decoded, how it is written)
    'grayscale_image': ('a/gray.png', (128, 128, 128),
                        lambda: _encoded(Image.fromarray(
                            np.full((8, 8), 128, np.uint8)), 'PNG')),
    'rgba_image': ('b/rgba.png', (200, 50, 10),
                   lambda: _encoded(Image.fromarray(np.dstack([
                       np.asarray(_rgb((200, 50, 10))),
                       np.full((8, 8), 90, np.uint8)]), 'RGBA'), 'PNG')),
    'cmyk_jpeg': ('a/cmyk.jpg', (200, 50, 10),
                  lambda: _encoded(_rgb((200, 50, 10)).convert('CMYK'),
                                   'JPEG', quality=100)),
    'png_16_bit': ('b/deep.png', (156, 156, 156),
                   lambda: _encoded(Image.fromarray(
                       np.full((8, 8), 40000, np.uint16)), 'PNG')),
}


@pytest.fixture(scope='module')
def image_folder_run(tmp_path_factory, tiny_module):
  folder = _real(tmp_path_factory.mktemp('image_folder'))
  images = folder / 'images'
  _class_folders(images)
  (images / BAD_IMAGES['corrupt_image'][0]).write_bytes(
      b'\x89PNG\r\n\x1a\n not really a PNG')
  jpeg = _encoded(Image.fromarray(np.random.default_rng(0).integers(
      0, 256, (64, 64, 3), dtype=np.uint8)), 'JPEG')
  (images / BAD_IMAGES['truncated_image'][0]).write_bytes(jpeg[:len(jpeg) // 2])
  (images / BAD_IMAGES['huge_image'][0]).write_bytes(_bilevel_png(12000, 12000))
  (images / BAD_IMAGES['decompression_bomb'][0]).write_bytes(
      _bilevel_png(20000, 20000))
  for path, _, write in GOOD_ODD_IMAGES.values():
    (images / path).write_bytes(write())
  config = _image_config(folder, tiny_module,
                         '  source: image_folder\n  path: images\n',
                         name='bad-images')
  return images, _hubpipe_run(config, folder / 'work')


@pytest.mark.parametrize('name', sorted(BAD_IMAGES))
def test_bad_images_stop_the_example_gen(name, image_folder_run):
  images, ran = image_folder_run
  path, reason = BAD_IMAGES[name]
  _assert_stopped(ran, 'SnapshotExampleGen', [
      f'{len(BAD_IMAGES)} corrupt or unreadable image file(s) under {images}',
      f'{images / path}: {reason}',
      'remove or repair these files, or set data.on_corrupt: skip'], name)
  record_bad_input(name, 'clear_error')


@pytest.fixture(scope='module')
def tfrecord_run(tmp_path_factory, tiny_module):
  """Image TFRecords with a label of -1, checked against a schema of the
  user's that wants a feature the data does not have."""
  folder = _real(tmp_path_factory.mktemp('tfrecord'))
  labels = [0, 1] * 6 + [-1]
  _tfrecords(folder / 'data' / 'train' / 'a.tfrecord', _image_examples(labels))
  _tfrecords(folder / 'data' / 'eval' / 'a.tfrecord', _image_examples(labels))
  schema = (REPO_ROOT / 'schemas' / 'image_classification' /
            'schema.pbtxt').read_text()
  (folder / 'schema.pbtxt').write_text(schema + (
      'feature {\n  name: "camera"\n  type: BYTES\n'
      '  presence { min_fraction: 1.0 min_count: 1 }\n}\n'))
  config = _image_config(folder, tiny_module,
                         '  source: tfrecord\n  path: data\n'
                         '  schema: schema.pbtxt\n', name='bad-records')
  return folder, _hubpipe_run(config, folder / 'work')


def test_labels_outside_0_to_k_stop_at_the_schema_check(tfrecord_run):
  folder, ran = tfrecord_run
  _assert_stopped(ran, 'AnomalyGate', [
      f'the examples do not match the schema ({folder / "schema.pbtxt"})',
      '[train] feature "label": Unexpectedly small value: -1.',
      '[eval] feature "label": Unexpectedly small value: -1.',
      'Fix the data, or if the data is right and the schema is out of date, '
      'update the schema (data.schema in the config)'], 'labels')
  record_bad_input('labels_outside_0_to_k', 'clear_error')


def test_a_schema_the_data_violates_stops_before_transform(tfrecord_run):
  _, ran = tfrecord_run
  _assert_stopped(ran, 'AnomalyGate', [
      '[train] feature "camera": Column is completely missing',
      '[eval] feature "camera": Column is completely missing',
      'Some examples hold no value of camera', 'fill them in, or leave '
      'those examples out', 'update the schema (data.schema'], 'schema')
  ran_steps = {c['name'] for c in ran.summary['components']}
  assert 'Transform' not in ran_steps and 'Trainer' not in ran_steps
  record_bad_input('schema_violated_by_the_data', 'clear_error')


def _csv(path: Path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'text,label\n' + b''.join(r + b'\n' for r in rows))


@pytest.fixture(scope='module')
def csv_run(tmp_path_factory):
  """Review CSVs with empty text cells, and class names where the (integer
  label) schema wants class ids."""
  folder = _real(tmp_path_factory.mktemp('csv'))
  texts = [b'a fine film', b'a dull film'] * 5
  _csv(folder / 'data' / 'train' / 'a.csv',
       [t + b',' + str(i % 2).encode() for i, t in enumerate(texts)] +
       [b',0', b',1'])
  _csv(folder / 'data' / 'eval' / 'a.csv',
       [t + b',' + (b'pos' if i % 2 else b'neg') for i, t in enumerate(texts)]
       + [b',neg'])
  config = _config(folder, (
      'name: bad-csv\nmodality: text\n'
      'data:\n  source: csv\n  path: data\n'
      'module:\n  handle: glove_6b_50d\n'
      'beam:\n  direct_running_mode: in_memory\n'))
  return folder, _hubpipe_run(config, folder / 'work')


def test_empty_text_cells_stop_at_the_schema_check(csv_run):
  _, ran = csv_run
  _assert_stopped(ran, 'AnomalyGate', [
      '[eval] feature "text": The feature has a shape, but it\'s not always '
      'present', 'Some examples hold no value of text (an empty CSV cell '
      'gives none', 'fill them in, or leave those examples out'], 'empty text')
  record_bad_input('text_empty_csv_cells', 'clear_error')


def test_class_names_in_an_integer_label_stop_at_the_schema_check(csv_run):
  _, ran = csv_run
  _assert_stopped(ran, 'AnomalyGate', [
      '[eval] feature "label": Expected data of type: INT but got',
      'The labels ("label") are text', 'set data.label_type: string'],
                  'class names')
  record_bad_input('class_names_where_ids_are_expected', 'clear_error')


def test_csv_that_is_not_utf8_stops_the_example_gen(tmp_path):
  tmp_path = _real(tmp_path)
  texts = [b'a fine film', b'a dull film'] * 4
  data = tmp_path / 'data'
  _csv(data / 'train' / 'a.csv',
       [t + b',' + str(i % 2).encode() for i, t in enumerate(texts)] +
       ['un café réussi,1'.encode('latin-1')])
  _csv(data / 'eval' / 'a.csv',
       [t + b',' + str(i % 2).encode() for i, t in enumerate(texts)])
  config = _config(tmp_path, (
      'name: bad-utf8\nmodality: text\n'
      'data:\n  source: csv\n  path: data\n'
      'module:\n  handle: glove_6b_50d\n'
      'beam:\n  direct_running_mode: in_memory\n'))
  ran = _hubpipe_run(config, tmp_path / 'work')
  _assert_stopped(ran, 'SnapshotExampleGen', [
      f'{data / "train" / "a.csv"} is not UTF-8 text: line 10 '
      "(b'un caf\\xe9 r\\xe9ussi,1\\n')", 'Save the CSV files as UTF-8',
      'iconv -f latin1 -t utf-8'], 'utf8')
  record_bad_input('text_invalid_utf8_csv', 'clear_error')


def test_csv_with_a_split_column_that_is_not_utf8_names_the_line(tmp_path):
  """CSV files at the data root with a split column are counted by split
  before the ExampleGen's Beam graph is built: the same message."""
  from hubpipe.components.snapshot_example_gen import executor  # pylint: disable=g-import-not-at-top
  good, bad = tmp_path / 'good.csv', tmp_path / 'bad.csv'
  good.write_bytes(b'text,label,split\nfine,1,train\nok,0,eval\n')
  bad.write_bytes(b'text,label,split\nfine,1,train\n' +
                  'très bien,1,eval\n'.encode('latin-1'))
  assert executor.split_column_values([str(good)], 'split') == {
      'train': 1, 'eval': 1}
  with pytest.raises(executor.NotUtf8Error) as err:
    executor.split_column_values([str(good), str(bad)], 'split')
  message = str(err.value)
  assert f"{bad} is not UTF-8 text: line 3 (b'tr\\xe8s bien,1,eval\\n')" in message
  assert 'Save the CSV files as UTF-8' in message
  record_bad_input('text_invalid_utf8_csv_split_column', 'clear_error')


# ---------------------------------------------------------------- handled rows


@pytest.mark.parametrize('name', sorted(GOOD_ODD_IMAGES))
def test_odd_images_are_taken_and_decoded_to_rgb(name, image_folder_run):
  """The image folder run refused only the bad files: these it took; read by
  its DoFn they become examples, and the Transform's decoding gives RGB."""
  from hubpipe.components.image_folder_example_gen import executor  # pylint: disable=g-import-not-at-top
  from hubpipe.components.transform import image as transform_image  # pylint: disable=g-import-not-at-top
  images, ran = image_folder_run
  path, colour, _ = GOOD_ODD_IMAGES[name]
  assert str(images / path) not in ran.summary['error']
  read = list(executor._ReadImage('image', 'label').process(  # pylint: disable=protected-access
      (str(images / path), 1)))
  assert len(read) == 1 and isinstance(read[0], tf.train.Example), read
  encoded = read[0].features.feature['image'].bytes_list.value[0]
  assert encoded == (images / path).read_bytes()
  decoded = transform_image.decode_and_resize(tf.constant([encoded]), 4, 4)
  assert decoded.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(decoded.numpy()[0, 0, 0], np.array(colour) / 255,
                             atol=2 / 255)
  record_bad_input(name, 'handled')


@pytest.fixture(scope='module')
def text_modules():
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  from hubpipe.components.hub_modules import inspect as inspect_lib  # pylint: disable=g-import-not-at-top
  from hubpipe.components.hub_modules import resolve  # pylint: disable=g-import-not-at-top
  return (hub.load(resolve.resolve('glove_6b_50d')),
          inspect_lib.load(resolve.resolve('minilm_l6_v2_preprocess')))


TEXTS = {
    # name: (text in a TFRecord, how many word pieces MiniLM makes of it)
    'text_invalid_utf8_tfrecord': (b'\xff\xfe good film', 3),
    'text_empty_string_tfrecord': (b'', 0),
    'text_blank_string_tfrecord': (b'  \t ', 0),
}


@pytest.mark.parametrize('name', sorted(TEXTS))
def test_odd_text_in_tfrecords_is_embedded(name, text_modules):
  """Text in TFRecords reaches the module as bytes (the Transform strips
  it): invalid UTF-8 and empty text embed to finite vectors."""
  glove, minilm_preprocess = text_modules
  text, pieces = TEXTS[name]
  stripped = tf.strings.strip(tf.constant([text, b'a good film']))
  vectors = glove(stripped).numpy()
  assert np.isfinite(vectors).all()
  # The valid words still count; nothing at all embeds to zeros.
  assert (np.abs(vectors[0]).sum() > 0) == bool(pieces)
  tokens = minilm_preprocess.tokenize(stripped)
  assert int(tokens[0].flat_values.shape[0]) == pieces
  record_bad_input(name, 'handled')


# ---------------------------------------------------------------- unit rows


class _TransformOutput:
  """What the Trainer reads of the Transform's output: its vocabularies."""

  def __init__(self, names=None, ids=None):
    self._names, self._ids = names, ids

  def vocabulary_file_by_name(self, name):
    from hubpipe.components.modeling import LABEL_NAMES  # pylint: disable=g-import-not-at-top
    return 'names.txt' if name == LABEL_NAMES and self._names else None

  def vocabulary_by_name(self, name):
    from hubpipe.components.modeling import LABEL_NAMES  # pylint: disable=g-import-not-at-top
    return [str(v).encode() for v in (
        self._names if name == LABEL_NAMES else self._ids)]


@pytest.mark.parametrize('name,output,label', [
    ('single_class_of_ids', _TransformOutput(ids=[3]), '3'),
    ('single_class_of_names', _TransformOutput(names=['cat']), 'cat')])
def test_a_single_class_stops_the_trainer(name, output, label):
  """A single class in TFRecords or CSVs shows once the Transform has
  counted the labels: the Trainer stops (failed step 'Trainer')."""
  from hubpipe.components.modeling import inputs  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError) as err:
    inputs.num_classes(output)
  message = str(err.value)
  assert f'holds one class only (label {label})' in message
  assert 'Add examples of the other classes' in message
  assert inputs.num_classes(_TransformOutput(ids=[0, 1])) == 2
  record_bad_input(name, 'clear_error')
