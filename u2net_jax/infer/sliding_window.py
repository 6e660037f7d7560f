"""Sliding-window inference over whole volumes.

Windows of the training patch size tile the volume with a given overlap and
are blended (`blend`):
  'gaussian' (nnU-Net's scheme, the default): softmax outputs weighted by a
    Gaussian (σ = patch/8, so window borders count less) and averaged;
  'official' (the official 3D U²-Net code, `evaluate.batch_segmentation` with
    `tinies.calPatchWeights`): *logits* weighted by 1 - normalized Euclidean
    distance to the window centre and summed. Our windows give probabilities,
    so the log-probabilities are blended instead: log p = logit - logsumexp,
    and the logsumexp term adds the same amount to every class of a voxel,
    so the arg-max labels are the official ones; the probabilities returned
    are the softmax of the blended log-probabilities.
Windows are evaluated in fixed-size batches (the last batch is padded, so one
compiled program serves every volume). Optional test-time mirroring averages
the predictions over the 8 flips.

Two drivers over the same windows, weights, batching and mirroring (tested
equal): `sliding_window` accumulates the whole volume at once (the plain
reference); `stream_slabs` / `predict_labels`, which evaluation, predict and
export use, stream them in bounded memory: the weighted sums live in a buffer
one window deep along axis 0; windows are visited in order of their first
row, so once a window starting at row z has been added, every row < z is
final and leaves the buffer as a slab of probabilities. The buffer holds
P0·H·W·(K+1) float32 whatever the depth D of the volume, and the input is
never copied (windows crossing the border of a volume smaller than the patch
are zero-padded one by one).

Shapes: image (D, H, W, C) float32 → probabilities (D, H, W, K) float32;
slabs (rows, H, W, K) float32.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

import numpy as np

from u2net_jax import options
from u2net_jax.errors import InputError

PredictFn = Callable[[np.ndarray], np.ndarray]  # (B, P0, P1, P2, C) -> (B, P0, P1, P2, K)


def gaussian_weights(patch, sigma_scale: float = 1 / 8) -> np.ndarray:
  """(P0, P1, P2) float32 importance map, max 1, strictly positive."""
  axes = []
  for p in patch:
    x = np.arange(p, dtype=np.float64) - (p - 1) / 2
    sigma = max(p * sigma_scale, 1e-6)
    axes.append(np.exp(-0.5 * (x / sigma) ** 2))
  w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
  w = w / w.max()
  return np.maximum(w, 1e-3).astype(np.float32)  # no zero weights at the corners


def linear_weights(patch) -> np.ndarray:
  """(P0, P1, P2) float32 weights of the official code (`tinies.calPatchWeights`).

  w = 1 - (d - d_min) / (d_max - d_min) + 1e-20, d the Euclidean distance of
  voxel i to the point patch/2 (not (patch-1)/2, as there): 1 next to the
  centre, 1e-20 at the far corner.
  """
  grids = np.meshgrid(*[np.arange(p, dtype=np.float64) - p / 2 for p in patch], indexing="ij")
  d = np.sqrt(sum(g ** 2 for g in grids))
  span = max(float(d.max() - d.min()), 1e-12)
  return (1 - (d - d.min()) / span + 1e-20).astype(np.float32)


BLENDS = options.BLENDS
_LOG_FLOOR = 1e-37  # float32 probabilities that underflowed to 0


def window_weights(patch, blend: str, sigma_scale: float = 1 / 8) -> np.ndarray:
  """The (P0, P1, P2) weights of `blend`."""
  if blend not in BLENDS:
    raise InputError(f"Unknown window blend {blend!r}; known: {BLENDS}.")
  return gaussian_weights(patch, sigma_scale) if blend == "gaussian" else linear_weights(patch)


def to_blended(probs: np.ndarray, blend: str) -> np.ndarray:
  """What a window adds to the weighted sum: probabilities, or log-probabilities."""
  return probs if blend == "gaussian" else np.log(np.maximum(probs, _LOG_FLOOR))


def from_blended(mean: np.ndarray, blend: str) -> np.ndarray:
  """Probabilities from the weighted mean of `to_blended` values (last axis: classes)."""
  if blend == "gaussian":
    return mean
  e = np.exp(mean - mean.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def window_starts(size: int, patch: int, overlap: float, blend: str = "gaussian") -> list[int]:
  """Start indices covering [0, size) with windows of `patch` (size ≥ patch).

  blend 'official': the official code's positions (`evaluate.batch_segmentation`):
  centres p//2, 2·p//2, ... below size + p//2, each clamped to size - p//2 —
  50 % overlap whatever `overlap` says, and the last clamped centre repeats,
  so the last window along each axis is added twice (as there).
  """
  if blend == "official":
    half = max(patch // 2, 1)
    return [min(c, size - half) - half for c in range(half, size + half, half)]
  if size <= patch:
    return [0]
  step = max(1, int(round(patch * (1 - overlap))))
  starts = list(range(0, size - patch + 1, step))
  if starts[-1] != size - patch:
    starts.append(size - patch)
  return starts


def windows(shape, patch, overlap, blend: str = "gaussian") -> Iterator[tuple[slice, slice, slice]]:
  for z, y, x in itertools.product(*[window_starts(s, p, overlap, blend)
                                     for s, p in zip(shape, patch)]):
    yield (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))


def _mirrored(predict_fn: PredictFn) -> PredictFn:
  def fn(x):
    total = None
    for flips in itertools.product((False, True), repeat=3):
      axes = tuple(a + 1 for a, f in enumerate(flips) if f)
      xi = np.flip(x, axes) if axes else x
      p = predict_fn(np.ascontiguousarray(xi))
      p = np.flip(p, axes) if axes else p
      total = p if total is None else total + p
    return total / 8
  return fn


def sliding_window(image: np.ndarray, predict_fn: PredictFn, patch, num_classes: int, *,
                   overlap: float = 0.5, batch_size: int = 2, mirror: bool = False,
                   channels: int | None = None, sigma_scale: float = 1 / 8,
                   blend: str = "gaussian",
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
  """Softmax probabilities of a whole volume.

  Args:
    image: (D, H, W, C) float32.
    predict_fn: batch of windows → probabilities (only the first `num_classes`
      output channels are used).
    patch: window size (P0, P1, P2).
    num_classes: K.
    overlap: fraction of a window shared with its neighbour, in [0, 1).
    batch_size: windows per predict_fn call (fixed; the last batch is padded).
    mirror: average over the 8 axis flips.
    channels: zero-pad the input's channels to this many (one program for
      domains with different channel counts).
    blend: 'gaussian' or 'official' (module docstring).
    progress: called with (windows done, windows total).
  Returns:
    (D, H, W, K) float32 probabilities.
  """
  if image.ndim != 4:
    raise InputError(f"sliding_window expects (D, H, W, C), got shape {image.shape}.")
  if not 0 <= overlap < 1:
    raise InputError(f"overlap {overlap} must be in [0, 1).")
  patch = tuple(int(p) for p in patch)
  shape = image.shape[:3]
  # Pad volumes smaller than the window (zeros = mean intensity after normalization).
  padded = tuple(max(s, p) for s, p in zip(shape, patch))
  c = channels or image.shape[-1]
  vol = np.zeros(padded + (c,), np.float32)
  vol[:shape[0], :shape[1], :shape[2], :image.shape[-1]] = image
  fn = _mirrored(predict_fn) if mirror else predict_fn
  weights = window_weights(patch, blend, sigma_scale)
  acc = np.zeros(padded + (num_classes,), np.float32)
  norm = np.zeros(padded, np.float32)
  slices = list(windows(padded, patch, overlap, blend))
  for i in range(0, len(slices), batch_size):
    chunk = slices[i:i + batch_size]
    batch = np.zeros((batch_size,) + patch + (c,), np.float32)
    for j, sl in enumerate(chunk):
      batch[j] = vol[sl]
    values = to_blended(np.asarray(fn(batch))[..., :num_classes], blend)
    for j, sl in enumerate(chunk):
      acc[sl] += values[j] * weights[..., None]
      norm[sl] += weights
    if progress:
      progress(min(i + batch_size, len(slices)), len(slices))
  out = from_blended(acc / norm[..., None], blend)
  return out[:shape[0], :shape[1], :shape[2]]


# -- streaming (bounded memory) ----------------------------------------------

def _window_origins(shape, patch, overlap, blend="gaussian") -> list[tuple[int, int, int]]:
  padded = tuple(max(s, p) for s, p in zip(shape, patch))
  starts = [window_starts(s, p, overlap, blend) for s, p in zip(padded, patch)]
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
      yield self.base, stop, from_blended(
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
    self.acc[sl] += to_blended(probs, self.blend) * self.weights[..., None]
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
  fn = _mirrored(predict_fn) if mirror else predict_fn  # pylint: disable=protected-access
  acc = SlabAccumulator(image.shape[:3], patch, num_classes,
                        window_weights(patch, blend, sigma_scale), blend)
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
