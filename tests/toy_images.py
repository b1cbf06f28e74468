"""A toy image problem for tests of tiny Hub modules: the class is the
dominant colour channel, under noise (`signal` sets how dominant)."""

import numpy as np


def toy_images(n: int, seed: int, size: int = 16, classes: int = 3,
               signal: float = 0.4):
  """(x float32 [n, size, size, 3] in [0, 1], y int [n])."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  x = rng.random((n, size, size, 3), dtype=np.float32) * (1 - signal)
  x[np.arange(n), :, :, y] += signal
  return x.astype(np.float32), y
