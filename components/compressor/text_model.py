"""TFLite for text models: raw strings in, class probabilities out, with the
tokenizer inside the flatbuffer; and the distillation student for text.

The Trainer's text core takes [N] strings (the Transform only strips them)
and returns logits. What TFLite gets depends on how the model tokenizes:

* A BERT-style model (a module with a preprocessing companion: MiniLM) is
  trained with `tensorflow_text.BertTokenizer`, whose ops
  (RegexSplitWithOffsets, WordpieceTokenizeWithOffsets over a lookup table)
  have no TFLite kernels. Its TFLite graph tokenizes with
  `tensorflow_text.FastBertTokenizer` over the same vocabulary instead (the
  same uncased BERT rules: NFD, accents stripped, lower-cased, split on
  whitespace and punctuation, greedy longest-match WordPiece), then packs
  `[CLS] pieces [SEP]` and padding to the trained sequence length with
  builtin ops, and runs the trained encoder and head. `check_same_tokens`
  checks, on the data, that the two tokenizers give the same ids; the
  Compressor refuses the conversion otherwise. The flatbuffer then holds
  TFLite builtins and three TF Text custom ops (FastBertNormalize,
  FastWordpieceTokenizeWithOffsets, RaggedTensorToTensor): no Flex delegate.
* Any other text model (GloVe's string ops, the no-reuse TF-IDF layer)
  tokenizes with TF string ops over a lookup table. Select TF ops (Flex)
  run the string ops, but in the graph hubpipe converts (a concrete
  function) the hash table is never initialised (HASHTABLE_FIND fails), so
  such a model gets no TFLite variant (`NOT_BERT`) and the SavedModel is
  pushed as it is.

How to build the interpreter (`modeling.measure.tflite_interpreter` does
exactly this):

    import tensorflow_text
    from tensorflow.lite.python.interpreter import InterpreterWithCustomOps
    interpreter = InterpreterWithCustomOps(
        model_content=open('model.tflite', 'rb').read(),
        custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS)

In C++ the same is a `BuiltinOpResolver` plus TF Text's registrars
(`tensorflow::text::AddFastBertNormalize`, `AddFastWordpieceTokenize`,
`AddRaggedTensorToTensor`, from tensorflow_text/core/kernels); `ops_of`
lists the ops a flatbuffer needs (no Flex ops: no Flex delegate).
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from typing import Callable, Dict, List, Optional  # pylint: disable=g-import-not-at-top

import numpy as np
import tensorflow as tf
import tf_keras

from hubpipe.components.modeling import measure

# The layers of a BERT-style text core (modeling.model.feature_extractor).
PREPROCESSING, MODULE = 'bert_preprocessing', 'hub_module'
# bert_student's tokenizer layer (FastBertTokenizer: TFLite kernels).
STUDENT_TOKENS = 'student_tokens'
SPECIAL = {'cls': '[CLS]', 'sep': '[SEP]', 'pad': '[PAD]', 'unk': '[UNK]'}
# The report's word on how to run the text .tflite files.
INTERPRETER = (
    'tensorflow.lite.python.interpreter.InterpreterWithCustomOps('
    'model_content=..., custom_op_registerers=tensorflow_text.'
    'tflite_registrar.SELECT_TFTEXT_OPS)')


NOT_BERT = (
    'hubpipe converts BERT-style text models to TFLite (a module with a '
    'preprocessing companion, e.g. minilm_l6_v2, whose WordPiece tokenizer '
    'has TFLite kernels in TF Text); this model tokenizes with TF string '
    'ops over a lookup table (GloVe, the TF-IDF bag of words), and hubpipe '
    'does not convert those (the table is not initialised in the graph it '
    'converts).')


class TextConversionError(ValueError):
  """The text model cannot be converted faithfully."""


def _text_ops():
  import tensorflow_text  # pylint: disable=g-import-not-at-top
  return tensorflow_text


def is_text(model) -> bool:
  """Whether the model takes strings."""
  return model.inputs[0].dtype == tf.string


def ops_of(tflite_bytes: bytes) -> Dict[str, List[str]]:
  """The flatbuffer's op kinds: {'builtin': [...], 'custom': [...], 'flex':
  [...]}: what an interpreter must be built with to run it."""
  ops = sorted({op['op_name'] for op in
                measure.tflite_interpreter(tflite_bytes, 1)._get_ops_details()})  # pylint: disable=protected-access
  flex = [o for o in ops if o.startswith('Flex')]
  custom = [o for o in ops if o not in flex and not o.isupper()
            and o != 'DELEGATE']
  builtin = [o for o in ops if o.isupper() and o != 'DELEGATE']
  return {'builtin': builtin, 'custom': custom, 'flex': flex}


# ---------------------------------------------------------------------------
# BERT-style models


def _layer(model, name):
  try:
    return model.get_layer(name)
  except ValueError:
    return None


def _read_vocab(path: str) -> List[str]:
  with tf.io.gfile.GFile(path) as f:
    vocab = f.read().split('\n')
  if vocab and vocab[-1] == '':
    vocab.pop()
  return vocab


def bert_parts(core: tf_keras.Model) -> Optional[Dict]:
  """The parts of a BERT-style text core, or None for another model:
  {'preprocessing': its BertPreprocessing layer, 'encoder': the module
  layer (trained weights), 'head': the head model, 'seq_length': the
  packing length it was trained with, 'vocab': the WordPiece vocabulary
  (list, id order)}. The TFLite graph is wired from these parts, so a core
  that is anything but text -> preprocessing -> module -> head is refused."""
  preprocessing, encoder = _layer(core, PREPROCESSING), _layer(core, MODULE)
  if preprocessing is None or encoder is None:
    return None
  layers = [layer.name for layer in core.layers]
  if layers[1:3] != [PREPROCESSING, MODULE] or len(layers) != 4:
    raise TextConversionError(
        f'the text model\'s layers are {layers}, not text -> '
        f'{PREPROCESSING} -> {MODULE} -> head: its TFLite graph cannot be '
        'wired from its parts.')
  vocab = _read_vocab(preprocessing.vocab_file)
  missing = [t for t in SPECIAL.values() if t not in vocab]
  if missing:
    raise TextConversionError(
        f'the vocabulary {preprocessing.vocab_file} lacks {missing}: the '
        'tokenizer cannot be rebuilt for TFLite.')
  return {'preprocessing': preprocessing, 'encoder': encoder,
          'head': core.layers[-1], 'seq_length': preprocessing.seq_length,
          'vocab': vocab}


def unconvertible(core: tf_keras.Model, export_dir: str) -> Optional[str]:
  """Why the text core of the SavedModel in `export_dir` gets no TFLite
  variant, or None: not BERT-style (NOT_BERT), parts that cannot be read,
  or a preprocessor (resolved again where this runs) whose vocabulary is
  not the one the export serves with."""
  try:
    parts = bert_parts(core)
  except (TextConversionError, tf.errors.OpError, OSError) as err:
    return f'{type(err).__name__}: {err}'
  if parts is None:
    return NOT_BERT
  exported = os.path.join(export_dir, 'assets', 'vocab.txt')
  if tf.io.gfile.exists(exported) and _read_vocab(exported) != parts['vocab']:
    return (f'the export serves with the vocabulary {exported}, and the '
            f'preprocessor resolved here has another '
            f'({parts["preprocessing"].vocab_file}): the .tflite would not '
            'tokenize as the SavedModel does.')
  return None


def fast_tokenizer(vocab: List[str]):
  """FastBertTokenizer with BertTokenizer(lower_case=True)'s rules."""
  return _text_ops().FastBertTokenizer(
      vocab, token_out_type=tf.int32, unknown_token=SPECIAL['unk'],
      lower_case_nfd_strip_accents=True)


def pack(pieces: tf.RaggedTensor, seq_length: int, vocab: List[str]):
  """[CLS] pieces [SEP] then [PAD]s, truncated to `seq_length` (TF Text's
  RaggedTensorToTensor, then builtin ops): {'input_word_ids', 'input_mask',
  'input_type_ids'} int32 [N, L], as a single-segment bert_pack_inputs."""
  cls, sep, pad = (vocab.index(SPECIAL[k]) for k in ('cls', 'sep', 'pad'))
  if pieces.ragged_rank > 1:
    pieces = pieces.merge_dims(-2, -1)
  room = seq_length - 2
  dense = pieces.to_tensor(default_value=pad, shape=[None, room])
  lengths = tf.minimum(tf.cast(pieces.row_lengths(), tf.int32), room)
  n = tf.shape(dense)[0]
  word_ids = tf.concat([tf.fill([n, 1], cls), dense, tf.fill([n, 1], pad)], 1)
  positions = tf.range(seq_length)[tf.newaxis, :]
  word_ids = tf.where(positions == lengths[:, tf.newaxis] + 1, sep, word_ids)
  mask = tf.cast(positions < lengths[:, tf.newaxis] + 2, tf.int32)
  return {'input_word_ids': word_ids, 'input_mask': mask,
          'input_type_ids': tf.zeros_like(word_ids)}


def check_same_tokens(core: tf_keras.Model, texts: np.ndarray,
                      parts: Optional[Dict] = None) -> None:
  """Raises TextConversionError unless the TFLite graph's tokenizer packs
  `texts` into the same ids, mask and types as the trained model's."""
  parts = parts or bert_parts(core)
  fast = fast_tokenizer(parts['vocab'])
  for start in range(0, len(texts), 256):
    batch = tf.constant(np.asarray(texts[start:start + 256]))
    trained = parts['preprocessing'](batch)
    rebuilt = pack(fast.tokenize(batch), parts['seq_length'], parts['vocab'])
    for key, value in rebuilt.items():
      differ = np.flatnonzero(np.any(
          value.numpy() != tf.cast(trained[key], tf.int32).numpy(), axis=1))
      if len(differ):
        example = texts[start + differ[0]]
        raise TextConversionError(
            f'the TFLite tokenizer (FastBertTokenizer) gives other '
            f'{key} than the trained model\'s on {len(differ)} of '
            f'{len(value)} texts, e.g. {example[:200]!r}: the .tflite would '
            'not serve the trained model (FastBertTokenizer is built with '
            'uncased BERT rules; a cased tokenizer is not converted).')


# ---------------------------------------------------------------------------
# Serving functions and converters


def serving_function(model: tf_keras.Model, parts: Optional[Dict] = None):
  """The graph TFLite converts for a text model, a tf.function [N] strings ->
  [N, K] probabilities: for a BERT-style model (`parts`, see `bert_parts`)
  the fast tokenizer, packing, the trained encoder and head; for a model
  that tokenizes with TFLite kernels already (`bert_student`) the model."""
  spec = tf.TensorSpec([None], tf.string, name='text')
  parts = parts if parts is not None else bert_parts(model)
  if parts is None:
    @tf.function(input_signature=[spec], autograph=False)
    def serve(text):
      return tf.nn.softmax(model(text, training=False), axis=-1)
    return serve
  tokenizer = fast_tokenizer(parts['vocab'])
  encoder, head = parts['encoder'], parts['head']
  seq_length, vocab = parts['seq_length'], parts['vocab']

  @tf.function(input_signature=[spec], autograph=False)
  def serve_bert(text):
    inputs = pack(tokenizer.tokenize(text), seq_length, vocab)
    features = encoder(inputs, training=False)
    if isinstance(features, dict):
      features = features['pooled_output']
    return tf.nn.softmax(head(features, training=False), axis=-1)
  return serve_bert


def to_tflite(model: tf_keras.Model, configure: Callable) -> bytes:
  """The BERT-style text model (or its `bert_student`) as a TFLite
  flatbuffer, tokenizer inside;
  `configure(converter)` sets the mode (quantization). Builtins and TF
  Text's custom ops only; the result is run once to prove every op has a
  kernel in `measure.tflite_interpreter`."""
  parts = bert_parts(model)
  if parts is None and _layer(model, STUDENT_TOKENS) is None:
    raise TextConversionError(NOT_BERT)
  serve = serving_function(model, parts)
  result = tf.lite.TFLiteConverter.from_concrete_functions(
      [serve.get_concrete_function()], model)
  result.allow_custom_ops = True  # TF Text's ops, with kernels in TF Text
  result.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  # int8 calibration runs the model in an interpreter: it needs the kernels.
  result.target_spec._experimental_custom_op_registerers = (  # pylint: disable=protected-access
      list(_text_ops().tflite_registrar.SELECT_TFTEXT_OPS))
  configure(result)
  data = result.convert()
  measure.tflite_predict(data, np.array([b'a kernel for every op'], object),
                         threads=1)
  return data


# ---------------------------------------------------------------------------
# Distillation student


class _MaskedPooling(tf_keras.layers.Layer):
  """[embeddings, valid]: mean and max of the embeddings over the real
  (valid 1) positions."""

  def call(self, inputs):
    embeddings, valid = inputs
    valid = tf.cast(valid, embeddings.dtype)[:, :, tf.newaxis]
    count = tf.maximum(tf.reduce_sum(valid, 1), 1.0)
    mean = tf.reduce_sum(embeddings * valid, 1) / count
    largest = tf.reduce_max(embeddings * valid - 1e4 * (1.0 - valid), 1)
    return tf.concat([mean, largest], -1)


def _pca(matrix: np.ndarray, dims: int) -> np.ndarray:
  """The rows of `matrix` projected on its top `dims` principal axes, scaled
  to the matrix's own spread."""
  centred = matrix - matrix.mean(0, keepdims=True)
  _, _, axes = np.linalg.svd(centred[::max(1, len(centred) // 8000)],
                             full_matrices=False)
  projected = centred @ axes[:dims].T
  return (projected * (centred.std() / max(projected.std(), 1e-8))
          ).astype(np.float32)


def _word_embeddings(encoder, vocab_size: int) -> Optional[np.ndarray]:
  for variable in encoder.weights:
    if len(variable.shape) == 2 and int(variable.shape[0]) == vocab_size:
      return variable.numpy()
  return None


def bert_student(teacher: tf_keras.Model, num_classes: int, dims: int = 64,
                 filters: int = 128, dropout: float = 0.2, seed: int = 0
                 ) -> tf_keras.Model:
  """A small student for a BERT-style teacher: the teacher's own tokenizer
  (FastBertTokenizer, the same ids), a `dims`-wide token embedding
  initialised with the principal components of the teacher's word
  embeddings, a width-3 convolution (word order: "not good"), masked mean
  and max pooling, and a linear layer to logits. Strings in, logits out;
  about vocab x dims weights (MiniLM: 30522 x 64 + 25k = 1.98M against its
  22.7M)."""
  parts = bert_parts(teacher)
  if parts is None:
    raise TextConversionError('bert_student needs a BERT-style teacher.')
  vocab, seq_length = parts['vocab'], parts['seq_length']
  table = _word_embeddings(parts['encoder'], len(vocab))
  tf_keras.utils.set_random_seed(seed)
  initializer = (tf_keras.initializers.Constant(_pca(table, dims))
                 if table is not None else 'uniform')
  tokenizer = fast_tokenizer(vocab)

  class Tokens(tf_keras.layers.Layer):
    def call(self, text):
      packed = pack(tokenizer.tokenize(text), seq_length, vocab)
      return packed['input_word_ids'], packed['input_mask']

  text = tf_keras.Input(shape=(), dtype=tf.string, name='text')
  ids, valid = Tokens(name=STUDENT_TOKENS)(text)
  embedded = tf_keras.layers.Embedding(
      len(vocab), dims, embeddings_initializer=initializer,
      name='embedding')(ids)
  features = tf_keras.layers.Conv1D(filters, 3, padding='same',
                                    activation='relu', name='conv')(embedded)
  pooled = _MaskedPooling(name='pool')([features, valid])
  pooled = tf_keras.layers.Dropout(dropout, seed=seed)(pooled)
  logits = tf_keras.layers.Dense(num_classes, name='logits')(pooled)
  return tf_keras.Model(text, logits, name='bert_student')
