"""Task-size patches resized to the model's patch: the official `unifyPatch='resize'`.

The official universal model (huangmozhilv/u2net_torch, config.py L22
`unifyPatch='resize'`, L65 `patch_sizes`) cuts each task's patch at its own
size — the *source patch*, e.g. heart 80×192×128, hippocampus 40×56×40 — at the
task's target spacing, augments it, and only then resizes it to the model's
128³ (data_utils.py `augment_patch` L127–138: `skimage.transform.resize`,
image order 3, label order 0, mode='constant'). Evaluation does the same to the
whole volume (evaluate.py `batch_segmentation` L56–245): zero-pad to ≥ the
source patch (tinies.pad2gePatch), resize by patch/source per axis, windows of
the model's patch, arg-max, the label map resized back (order 0) to the padded
grid and un-padded. So each domain is seen at its own zoom (prostate z ×6.4,
xy ×⅔), and predictions land on the preprocessed grid as without resizing.

`data.source_patch` ('heart:80x192x128,...') gives the source patch per domain
(`parse_source_patch`); a domain not listed, or listed with `data.patch_size`,
is not resized. `PatchSampler` (training) and `infer.volume.predict_labels`
(evaluation, predict, exports) are the two users; `config_utils.source_patch_for`
reads a config's.

Resizing is `skimage.transform.resize(x, shape, order, mode='constant',
anti_aliasing=False)` as scikit-image ≥ 0.19 computes it (tested equal):
input coordinate (i + 0.5)·n_in/n_out − 0.5 (pixel centres aligned), cubic
B-spline with zeros beyond the edge (SciPy's 'grid-constant'), output clipped
to the input's range; labels nearest. It runs axis by axis with small
interpolation matrices (the tensor-product spline is separable), ~10× faster
than `ndimage.zoom` at 128³. Version note: the pinned scikit-image 0.14 did
the same where the last axis changes size (hippocampus, prostate) except that
the outer half voxel of an enlarged axis became 0 (SciPy 'constant'), image and
label; where it does not (heart, liver, pancreas, spleen: W 128 → 128) it took
its 2-D path, slice by slice with a bicubic convolution kernel instead of the
B-spline. Neither quirk is reproduced.

Shapes: image (D, H, W, C) float32, label (D, H, W) integer, channels-last.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from u2net_jax.errors import ConfigError, InputError

Shape = tuple[int, int, int]


# ----------------------------------------------------------------------------
# Config.

def parse_source_patch(text) -> dict[str, Shape]:
  """'heart:80x192x128,liver:128x128x128' -> {'heart': (80, 192, 128), ...} ('' -> {}).

  ConfigError names the bad item: not 'domain:DxHxW', not 3 positive ints, or
  a domain given twice.
  """
  out = {}
  for item in filter(None, (t.strip() for t in str(text or "").split(","))):
    name, sep, size = (s.strip() for s in item.partition(":"))
    try:
      dims = tuple(int(s) for s in size.lower().split("x"))
      if not (sep and name) or len(dims) != 3 or min(dims) <= 0:
        raise ValueError
    except ValueError:
      raise ConfigError(f"data.source_patch item {item!r} in {text!r} is not "
                        "'domain:DxHxW' with 3 positive ints (e.g. 'heart:80x192x128').") from None
    if name in out:
      raise ConfigError(f"data.source_patch names {name!r} twice ({text!r}).")
    out[name] = dims
  return out


def source_patches(config) -> dict[str, Shape]:
  """`config.data.source_patch` parsed (entries of domains not trained are ignored by users)."""
  return parse_source_patch(config.data.source_patch)


def source_patch_of(table: dict, name: str, patch) -> Shape | None:
  """The domain's source patch, or None when it is cut at `patch` directly (no resize)."""
  src = table.get(name)
  if src is None or tuple(src) == tuple(int(p) for p in patch):
    return None
  return tuple(int(s) for s in src)


# ----------------------------------------------------------------------------
# Resizing.

@functools.lru_cache(maxsize=256)
def _axis_matrix(n_in: int, n_out: int, order: int, mode: str) -> np.ndarray:
  """(n_out, n_in) float32: 1-D resize of the unit vectors, i.e. the linear map itself."""
  m = np.empty((n_out, n_in), np.float64)
  for j in range(n_in):
    e = np.zeros(n_in)
    e[j] = 1.0
    m[:, j] = ndimage.zoom(e, n_out / n_in, order=order, mode=mode, grid_mode=True)
  return m.astype(np.float32)


def _resize_volume(vol: np.ndarray, shape: Shape, order: int, mode: str) -> np.ndarray:
  """(D, H, W) -> shape, float32, one axis at a time (unchanged axes untouched)."""
  out = np.asarray(vol, np.float32)
  for axis, n in enumerate(shape):
    if out.shape[axis] == n:
      continue
    m = _axis_matrix(out.shape[axis], int(n), order, mode)
    out = np.moveaxis(np.tensordot(m, out, axes=(1, axis)), 0, axis)
  return np.ascontiguousarray(out)


def source_indices(n_in: int, n_out: int) -> np.ndarray:
  """Nearest input index of each output index: round((i + 0.5)·n_in/n_out − 0.5), clamped.

  In float64 as skimage and SciPy compute it (an exact half, e.g. 14.5 for
  33 → 18, may fall either way; theirs is kept).
  """
  c = (n_in / n_out) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
  return np.clip(np.floor(c + 0.5), 0, n_in - 1).astype(np.int64)


def _shape(shape) -> Shape:
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3 or min(shape) <= 0:
    raise InputError(f"resize target {shape} is not 3 positive sizes (D, H, W).")
  return shape


def resize_image(image: np.ndarray, shape) -> np.ndarray:
  """(D, H, W[, C]) -> shape (+ C) float32: cubic B-spline, zeros outside, clipped.

  Each channel is clipped to its own [min, max] (skimage's clip=True; were 0
  outside that range, outputs exactly 0 would stay 0, as there).
  """
  shape = _shape(shape)
  image = np.asarray(image, np.float32)
  if image.ndim == 3:
    return resize_image(image[..., None], shape)[..., 0]
  if image.ndim != 4:
    raise InputError(f"resize_image expects (D, H, W[, C]), got shape {image.shape}.")
  out = np.empty(shape + image.shape[3:], np.float32)
  for c in range(image.shape[-1]):
    x = image[..., c]
    r = _resize_volume(x, shape, 3, "grid-constant")
    lo, hi = float(x.min()), float(x.max())
    zero = r == 0 if not lo <= 0 <= hi else None
    np.clip(r, lo, hi, out=r)
    if zero is not None:
      r[zero] = 0
    out[..., c] = r
  return out


def resize_label(label: np.ndarray, shape) -> np.ndarray:
  """(D, H, W) -> shape, same dtype: nearest neighbour (order 0)."""
  shape = _shape(shape)
  label = np.asarray(label)
  if label.ndim != 3:
    raise InputError(f"resize_label expects (D, H, W), got shape {label.shape}.")
  idx = [source_indices(n, m) for n, m in zip(label.shape, shape)]
  return np.ascontiguousarray(label[np.ix_(*idx)])


def resize_probabilities(probs: np.ndarray, shape) -> np.ndarray:
  """(D, H, W, K) -> shape + (K,) float32: linear, edges extended (sums stay 1)."""
  shape = _shape(shape)
  out = np.empty(shape + probs.shape[3:], np.float32)
  for c in range(probs.shape[-1]):
    out[..., c] = _resize_volume(probs[..., c], shape, 1, "nearest")
  return out


# ----------------------------------------------------------------------------
# Whole volumes.

def pad_to_patch(image: np.ndarray, patch) -> tuple[np.ndarray, Shape]:
  """(padded image, zeros added before each axis): tinies.pad2gePatch.

  An axis shorter than the patch gets ceil((p - n) / 2) zeros on both sides
  (so it may end one longer than p); longer axes are kept.
  """
  before = tuple(max(-(-(int(p) - n) // 2), 0) for n, p in zip(image.shape[:3], patch))
  if not any(before):
    return image, before
  widths = [(b, b) for b in before] + [(0, 0)] * (image.ndim - 3)
  return np.pad(image, widths), before


def scaled_shape(shape, source_patch, patch) -> Shape:
  """The official whole-volume size int(n · p / s) per axis, in integers.

  (The official float product can fall one short, e.g. 56·(128/56); integer
  floor keeps a padded volume at ≥ the model's patch.)
  """
  return tuple(int(n) * int(p) // int(s) for n, s, p in zip(shape, source_patch, patch))
