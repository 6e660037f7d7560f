"""Sliding-window inference in bounded memory: windows streamed, slabs flushed.

Same windows, weights (`blend`), batching and mirroring as
`inference.sliding_window` (and the same result, tested), but the weighted
sums live in a buffer one window deep along axis 0: windows are visited in
order of their first row, so once a window starting at row z has been added,
every row < z is final and leaves the buffer as a slab of probabilities. The
accumulation buffer therefore holds P0·H·W·(K+1) float32 whatever the depth D
of the volume, and the input is never copied (windows crossing the border of
a volume smaller than the patch are zero-padded one by one).

Shapes: image (D, H, W, C) float32; slabs (rows, H, W, K) float32.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

import numpy as np

from u2net_jax import inference
from u2net_jax.errors import InputError

PredictFn = inference.PredictFn  # (B, P0, P1, P2, C) -> (B, P0, P1, P2, >=K)


def _window_origins(shape, patch, overlap, blend="gaussian") -> list[tuple[int, int, int]]:
  padded = tuple(max(s, p) for s, p in zip(shape, patch))
  starts = [inference.window_starts(s, p, overlap, blend) for s, p in zip(padded, patch)]
  return list(itertools.product(*starts))  # axis 0 outermost: sorted by row.


def num_windows(shape, patch, overlap: float = 0.5, blend: str = "gaussian") -> int:
  """How many windows cover a volume of (D, H, W) `shape`."""
  return len(_window_origins(tuple(shape)[:3], patch, overlap, blend))


def _read_window(image, origin, patch, channels) -> np.ndarray:
  """(P0, P1, P2, channels) float32: the window at `origin`, zeros outside."""
  out = np.zeros(tuple(patch) + (channels,), np.float32)
  src = tuple(slice(o, min(o + p, s)) for o, p, s in zip(origin, patch, image.shape[:3]))
  dst = tuple(slice(0, s.stop - s.start) for s in src)
  out[dst + (slice(0, image.shape[-1]),)] = image[src]
  return out


class SlabAccumulator:
  """Gaussian-weighted sums of window predictions, one window deep along axis 0.

  Attributes:
    buffer_bytes: bytes held by the accumulation buffers (independent of D).
  """

  def __init__(self, shape, patch, num_classes: int, weights: np.ndarray,
               blend: str = "gaussian"):
    self.shape = tuple(int(s) for s in shape)  # true (D, H, W)
    self.patch = tuple(int(p) for p in patch)
    self.plane = tuple(max(s, p) for s, p in zip(self.shape[1:], self.patch[1:]))
    self.weights = weights
    self.blend = blend
    self.acc = np.zeros((self.patch[0],) + self.plane + (num_classes,), np.float32)
    self.norm = np.zeros((self.patch[0],) + self.plane, np.float32)
    self.base = 0  # the buffer's row 0 is volume row `base`

  @property
  def buffer_bytes(self) -> int:
    return self.acc.nbytes + self.norm.nbytes

  def _emit(self, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields the first `rows` buffer rows (clipped to the volume) and shifts them out."""
    stop = min(self.base + rows, self.shape[0])
    if stop > self.base:
      n = stop - self.base
      h, w = self.shape[1:]
      yield self.base, stop, inference.from_blended(
          self.acc[:n, :h, :w] / self.norm[:n, :h, :w, None], self.blend)
    keep = self.patch[0] - rows
    if keep > 0:
      self.acc[:keep] = self.acc[rows:]
      self.norm[:keep] = self.norm[rows:]
    self.acc[max(keep, 0):] = 0
    self.norm[max(keep, 0):] = 0
    self.base += rows

  def advance(self, row: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Flushes every row < `row` (no window added later may start before it)."""
    if row > self.base:
      yield from self._emit(row - self.base)

  def add(self, origin, probs: np.ndarray) -> None:
    """Adds one window's (P0, P1, P2, K) probabilities; origin[0] must be `base`."""
    z, y, x = origin
    if z != self.base:
      raise AssertionError(f"window at row {z} added with the buffer at row {self.base}")
    sl = (slice(None), slice(y, y + self.patch[1]), slice(x, x + self.patch[2]))
    self.acc[sl] += inference.to_blended(probs, self.blend) * self.weights[..., None]
    self.norm[sl] += self.weights

  def finish(self) -> Iterator[tuple[int, int, np.ndarray]]:
    yield from self._emit(self.patch[0])


def stream_slabs(image: np.ndarray, predict_fn: PredictFn, patch, num_classes: int, *,
                 overlap: float = 0.5, batch_size: int = 2, mirror: bool = False,
                 channels: int | None = None, sigma_scale: float = 1 / 8,
                 blend: str = "gaussian",
                 progress: Callable[[int, int], None] | None = None,
                 stats: dict | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
  """Softmax probabilities of a whole volume, as consecutive slabs along axis 0.

  Args:
    image: (D, H, W, C) float32, on the model's grid (preprocessed).
    predict_fn: batch of windows (batch_size, P0, P1, P2, channels) →
      probabilities; only the first `num_classes` outputs are used.
    patch: window size (P0, P1, P2).
    num_classes: K.
    overlap: fraction of a window shared with its neighbour, in [0, 1).
    batch_size: windows per predict_fn call (fixed; the last batch is padded).
    mirror: average over the 8 axis flips.
    channels: zero-pad the input's channels to this many.
    sigma_scale: Gaussian σ as a fraction of the patch.
    blend: 'gaussian' or 'official' (`inference` module docstring).
    progress: called with (windows done, windows total).
    stats: if given, receives 'buffer_bytes' and 'windows'.
  Yields:
    (start, stop, probs): rows [start, stop) of axis 0, probs float32
    (stop - start, H, W, K); together they cover [0, D) in order. A slab is a
    view into the accumulator: use it before asking for the next one.
  """
  if image.ndim != 4:
    raise InputError(f"sliding window expects (D, H, W, C), got shape {image.shape}.")
  if not 0 <= overlap < 1:
    raise InputError(f"overlap {overlap} must be in [0, 1).")
  patch = tuple(int(p) for p in patch)
  c = channels or image.shape[-1]
  if image.shape[-1] > c:
    raise InputError(f"image has {image.shape[-1]} channels, more than the model's {c}.")
  fn = inference._mirrored(predict_fn) if mirror else predict_fn  # pylint: disable=protected-access
  acc = SlabAccumulator(image.shape[:3], patch, num_classes,
                        inference.window_weights(patch, blend, sigma_scale), blend)
  origins = _window_origins(image.shape[:3], patch, overlap, blend)
  if stats is not None:
    stats.update(buffer_bytes=acc.buffer_bytes, windows=len(origins))
  batch = np.zeros((batch_size,) + patch + (c,), np.float32)
  for i in range(0, len(origins), batch_size):
    chunk = origins[i:i + batch_size]
    batch[len(chunk):] = 0
    for j, origin in enumerate(chunk):
      batch[j] = _read_window(image, origin, patch, c)
    probs = np.asarray(fn(batch))[..., :num_classes]
    for j, origin in enumerate(chunk):
      yield from acc.advance(origin[0])
      acc.add(origin, probs[j])
    if progress:
      progress(min(i + batch_size, len(origins)), len(origins))
  yield from acc.finish()


def predict_labels(image: np.ndarray, predict_fn: PredictFn, patch, num_classes: int, *,
                   keep_probabilities: bool = False, **kw) -> tuple[np.ndarray, np.ndarray | None]:
  """Arg-max labels (and optionally probabilities) of a whole volume.

  Args:
    image: (D, H, W, C) float32.
    keep_probabilities: also return the probabilities, as float16 to halve
      their memory.
    **kw: see `stream_slabs`.
  Returns:
    (labels uint8 (D, H, W), probabilities float16 (D, H, W, K) or None).
  """
  shape = image.shape[:3]
  labels = np.zeros(shape, np.uint8)
  probs = np.zeros(shape + (num_classes,), np.float16) if keep_probabilities else None
  for start, stop, slab in stream_slabs(image, predict_fn, patch, num_classes, **kw):
    labels[start:stop] = np.argmax(slab, axis=-1)
    if probs is not None:
      probs[start:stop] = slab
  return labels, probs
