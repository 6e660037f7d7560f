"""Invertible preprocessing shared by dataset builders and prediction.

A case goes crop -> resample -> normalize (`preprocess_case`), and a prediction
on the preprocessed grid goes back with `invert_label`. Arrays are channels-last
(D, H, W, C); spacings are mm (z, y, x).

Resampling (`resample`, `resample_label`):
  * new shape = round(shape * spacing / target_spacing), at least 1; an axis
    whose spacing is within 1e-3 mm of the target keeps its size and is not
    interpolated (a volume already at the target is returned unchanged).
  * the sampling grid is aligned on the voxel *extents* (scipy `grid_mode=True`):
    output voxel o of an axis samples input coordinate
    (o + 0.5) * n_in / n_out - 0.5, so the resampled volume covers exactly the
    same box. The true spacing is spacing * n_in / n_out (within half a voxel
    of the target over the volume).
  * images: B-spline of `order` (3 by default), edge values repeated outside.
  * labels: one-hot linear ("soft" nearest): each class's 0/1 mask is
    resampled linearly and each voxel takes the class of highest value (ties
    -> lowest id). Unlike nearest neighbour it keeps boundaries smooth and
    thin structures alive when downsampling.

Normalization (`normalize`):
  * scheme 'nnunet' (nnU-Net's), CT: clip to the foreground 0.5 / 99.5
    percentiles of the training set, then z-score with the foreground mean/std
    of the training set (`ct_stats`).
  * scheme 'nnunet', other modalities (MRI, ...): z-score per image and
    channel. If at most 75% of the voxels are non-zero (any channel; brain MRI
    after skull stripping), mean/std come from the non-zero voxels only and the
    zero voxels stay 0 — nnU-Net's rule for images whose crop removed a lot of
    background.
  * scheme 'official': the official 3D U²-Net code (`utils.preprocess` and
    `itensity_normalize_one_volume`), for every modality, per image and
    channel: floor at -1024, clip to the image's own 2 / 98 percentiles (all
    voxels), then z-score with the mean/std of the voxels > 0; voxels that are
    0 after clipping stay 0. (If no voxel is > 0 the official code divides by
    a NaN std; here the z-score uses all voxels instead.)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from u2net_jax import options
from u2net_jax.errors import InputError

SPACING_ATOL = 1e-3  # mm; spacings closer than this count as equal.
NONZERO_FRACTION = 0.75  # MRI: use the non-zero mask below this fraction.
SCHEMES = options.NORMALIZATIONS
_EPS = 1e-8


def _as_image(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 4:
    raise InputError(f"Expected an image (D, H, W, C), got shape {image.shape}.")
  return image


def _as_spacing(spacing, what: str) -> np.ndarray:
  s = np.asarray(spacing, np.float64).reshape(-1)
  if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
    raise InputError(f"{what} must be 3 positive mm values (z, y, x), got {spacing}.")
  return s


# ------------------------------------------------------------------- crop


def nonzero_box(image) -> np.ndarray:
  """(3, 2) int [start, stop) box of voxels where any channel != 0.

  The whole volume if every voxel is zero.
  """
  image = _as_image(image)
  mask = np.any(image != 0, axis=-1)
  box = np.zeros((3, 2), np.int64)
  for axis in range(3):
    other = tuple(a for a in range(3) if a != axis)
    hit = np.flatnonzero(np.any(mask, axis=other))
    if hit.size:
      box[axis] = hit[0], hit[-1] + 1
    else:
      box[axis] = 0, mask.shape[axis]
  return box


def _box_slices(box) -> tuple[slice, slice, slice]:
  return tuple(slice(int(a), int(b)) for a, b in np.asarray(box))


def crop_to_nonzero(image, label=None):
  """Crops to the bounding box of non-zero voxels (nnU-Net's rule).

  Args:
    image: (D, H, W, C).
    label: optional (D, H, W), cropped with the same box.
  Returns:
    (image, label or None, crop_box int (3, 2) [start, stop) on the input grid).
  """
  image = _as_image(image)
  box = nonzero_box(image)
  sl = _box_slices(box)
  if label is not None:
    label = np.asarray(label)
    if label.shape != image.shape[:3]:
      raise InputError(f"Label shape {label.shape} differs from image {image.shape[:3]}.")
    label = label[sl]
  return image[sl], label, box


# --------------------------------------------------------------- resample


def target_shape(shape, spacing, target_spacing) -> tuple[int, int, int]:
  """round(shape * spacing / target), >= 1; unchanged where spacing ~= target."""
  spacing = _as_spacing(spacing, "spacing")
  target = _as_spacing(target_spacing, "target_spacing")
  out = []
  for n, s, t in zip(shape, spacing, target):
    out.append(int(n) if abs(s - t) <= SPACING_ATOL else max(1, int(round(n * s / t))))
  return tuple(out)


def _resize_volume(volume: np.ndarray, out_shape, order: int) -> np.ndarray:
  """(D, H, W) -> out_shape with extent-aligned B-spline sampling, float32."""
  if tuple(volume.shape) == tuple(out_shape):
    return volume.astype(np.float32, copy=True)
  factors = [o / i for o, i in zip(out_shape, volume.shape)]
  out = ndimage.zoom(volume.astype(np.float32, copy=False), factors, order=order,
                     mode="nearest", grid_mode=True, output=np.float32)
  # zoom rounds in * factor; guard against float error changing a size.
  if out.shape != tuple(out_shape):
    raise AssertionError(f"zoom gave {out.shape}, expected {tuple(out_shape)}")
  return out


def resize(image, out_shape, order: int = 3) -> np.ndarray:
  """Resizes (D, H, W, C) to out_shape (D', H', W') per channel, float32."""
  image = _as_image(image)
  out_shape = tuple(int(s) for s in out_shape)
  if out_shape == image.shape[:3]:
    return image.astype(np.float32, copy=True)
  return np.stack([_resize_volume(image[..., c], out_shape, order)
                   for c in range(image.shape[-1])], axis=-1)


def resize_label(label, out_shape, num_classes: int, order: int = 1) -> np.ndarray:
  """Resizes (D, H, W) class ids to out_shape on the grid of `resize`.

  order 1: one-hot linear interpolation (smooth boundaries); order 0: nearest
  neighbour (the official code's label resampling, SimpleITK nearest).
  Returns uint8 (D', H', W'). Raises InputError on ids outside [0, num_classes).
  """
  label = np.asarray(label)
  if label.ndim != 3:
    raise InputError(f"Expected a label (D, H, W), got shape {label.shape}.")
  if label.size and (label.min() < 0 or label.max() >= num_classes):
    raise InputError(f"Label ids must be in [0, {num_classes}), got range "
                     f"[{label.min()}, {label.max()}].")
  if num_classes > 256:
    raise InputError(f"At most 256 classes fit uint8 labels, got {num_classes}.")
  out_shape = tuple(int(s) for s in out_shape)
  if out_shape == label.shape:
    return label.astype(np.uint8)
  if order == 0:
    near = _resize_volume(label.astype(np.float32), out_shape, order=0)
    return np.rint(near).astype(np.uint8)
  if order != 1:
    raise InputError(f"Label resize order must be 0 (nearest) or 1 (one-hot linear), got {order}.")
  # Running max over classes keeps memory at two float volumes.
  best = np.full(out_shape, -np.inf, np.float32)
  out = np.zeros(out_shape, np.uint8)
  for c in range(num_classes):
    mask = label == c
    if not mask.any():
      continue
    soft = _resize_volume(mask.astype(np.float32), out_shape, order=1)
    better = soft > best
    best[better] = soft[better]
    out[better] = c
  return out


def resample(image, spacing, target_spacing, order: int = 3) -> np.ndarray:
  """Resamples (D, H, W, C) from `spacing` to `target_spacing` (mm, z/y/x).

  Shape rule and grid alignment: see the module docstring. float32.
  """
  image = _as_image(image)
  return resize(image, target_shape(image.shape[:3], spacing, target_spacing), order)


def resample_label(label, spacing, target_spacing, num_classes: int) -> np.ndarray:
  """Resamples a (D, H, W) label map (one-hot linear, see module docstring); uint8."""
  label = np.asarray(label)
  return resize_label(label, target_shape(label.shape, spacing, target_spacing), num_classes)


# -------------------------------------------------------------- normalize


def ct_stats(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
             max_voxels_per_case: int = 100_000, seed: int = 0) -> dict:
  """Foreground intensity statistics of CT training cases (nnU-Net).

  Args:
    images: (D, H, W[, 1]) arrays (an iterable works: one case in memory at a time).
    labels: (D, H, W) arrays; foreground = label > 0.
    max_voxels_per_case: foreground voxels drawn per case (without
      replacement, by a generator seeded with `seed`), so big cases do not
      dominate and the result is deterministic.
  Returns:
    dict(p005, p995, mean, std) of floats: 0.5 / 99.5 percentiles, mean and
    std of the sampled foreground voxels.
  """
  rng = np.random.default_rng(seed)
  samples = []
  for image, label in zip(images, labels):
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim == 4:
      if image.shape[-1] != 1:
        raise InputError(f"CT statistics need single-channel images, got {image.shape}.")
      image = image[..., 0]
    if image.shape != label.shape:
      raise InputError(f"Image shape {image.shape} differs from label {label.shape}.")
    values = image[label > 0]
    if values.size > max_voxels_per_case:
      values = rng.choice(values, max_voxels_per_case, replace=False)
    samples.append(values.astype(np.float64))
  values = np.concatenate(samples) if samples else np.zeros(0)
  if not values.size:
    raise InputError("No foreground voxels (label > 0) in the cases given to ct_stats.")
  p005, p995 = np.percentile(values, [0.5, 99.5])
  return dict(p005=float(p005), p995=float(p995), mean=float(values.mean()),
              std=float(values.std()))


def _zscore(x: np.ndarray, mask=None) -> np.ndarray:
  sel = x if mask is None else x[mask]
  if not sel.size:
    return np.zeros_like(x)
  out = (x - sel.mean()) / max(float(sel.std()), _EPS)
  if mask is not None:
    out[~mask] = 0.0
  return out


OFFICIAL_FLOOR = -1024.0           # utils.preprocess: `volume[volume<-1024] = -1024`
OFFICIAL_PERCENTILES = (2.0, 98.0)  # utils.preprocess: `np.percentile(volume, (2.0, 98.0))`


def official_normalize(x: np.ndarray) -> np.ndarray:
  """One channel (D, H, W) as the official code normalizes it (module docstring)."""
  x = np.maximum(np.asarray(x, np.float32), OFFICIAL_FLOOR)
  lo, hi = np.percentile(x, OFFICIAL_PERCENTILES)
  x = np.clip(x, lo, hi)
  positive = x[x > 0]
  if not positive.size:
    return _zscore(x)
  # Every voxel is shifted and scaled (negative ones too); only exact zeros
  # are reset, as in the official `out[volume == 0] = 0`.
  out = (x - positive.mean()) / max(float(positive.std()), _EPS)
  out[x == 0] = 0.0
  return out


def normalize(image, modality, stats: Mapping | None = None, scheme: str = "nnunet",
              mask=None) -> np.ndarray:
  """Intensity normalization, float32 (D, H, W, C) (schemes: module docstring).

  Args:
    image: (D, H, W, C).
    modality: 'CT' or anything else (treated as MRI-like); a string for all
      channels or one per channel.
    stats: `ct_stats` output; required for CT channels with scheme 'nnunet'.
    scheme: 'nnunet' or 'official'.
    mask: optional bool (D, H, W) non-zero mask to use instead of `image != 0`
      (preprocess_case passes the mask from before resampling, because spline
      ringing makes exact zeros non-zero).
  """
  image = _as_image(image).astype(np.float32, copy=True)
  if scheme not in SCHEMES:
    raise InputError(f"Unknown normalization scheme {scheme!r}; known: {SCHEMES}.")
  channels = image.shape[-1]
  modalities = [modality] * channels if isinstance(modality, str) else list(modality)
  if len(modalities) != channels:
    raise InputError(f"{len(modalities)} modalities for {channels} channels.")
  if mask is None:
    mask = np.any(image != 0, axis=-1)
  mask = np.asarray(mask, bool)
  use_mask = mask.mean() <= NONZERO_FRACTION if mask.size else False
  for c, mod in enumerate(modalities):
    x = image[..., c]
    if scheme == "official":
      image[..., c] = official_normalize(x)
    elif str(mod).upper() == "CT":
      if stats is None:
        raise InputError("CT normalization (scheme 'nnunet') needs dataset stats "
                         "(ct_stats of the training cases).")
      x = np.clip(x, stats["p005"], stats["p995"])
      image[..., c] = (x - stats["mean"]) / max(float(stats["std"]), _EPS)
    else:
      image[..., c] = _zscore(x, mask if use_mask else None)
  return image


# -------------------------------------------------------------- compose


def preprocess_case(image, spacing, modality, target_spacing, stats=None, label=None,
                    num_classes: int | None = None, scheme: str = "nnunet") -> dict:
  """crop_to_nonzero -> resample -> normalize one case.

  Args:
    image: (D, H, W, C) on the source grid.
    spacing: source spacing, mm (z, y, x).
    modality: see `normalize`.
    target_spacing: mm (z, y, x) of the output grid.
    stats: `ct_stats` output (CT, scheme 'nnunet').
    label: optional (D, H, W) class ids; needs `num_classes`.
    scheme: 'nnunet' or 'official'.
  Returns:
    dict(image float32 (D', H', W', C), label uint8 (D', H', W') or None,
    crop_box int (3, 2), spacing=target (3,), original_shape (3,),
    original_spacing (3,)).
  """
  image = _as_image(image)
  spacing = _as_spacing(spacing, "spacing")
  target = _as_spacing(target_spacing, "target_spacing")
  if label is not None and num_classes is None:
    raise InputError("preprocess_case needs num_classes to resample a label.")
  original_shape = image.shape[:3]
  cropped, label, box = crop_to_nonzero(image, label)
  out_shape = target_shape(cropped.shape[:3], spacing, target)
  mask = np.any(cropped != 0, axis=-1)
  if out_shape != mask.shape:
    mask = _resize_volume(mask.astype(np.float32), out_shape, order=0) > 0.5
  resampled = resize(cropped, out_shape, order=3)
  if label is not None:
    label = resize_label(label, out_shape, num_classes)
  return dict(
      image=normalize(resampled, modality, stats, scheme, mask=mask),
      label=label,
      crop_box=box.astype(np.int32),
      spacing=target.astype(np.float32),
      original_shape=np.asarray(original_shape, np.int32),
      original_spacing=spacing.astype(np.float32))


def invert_label(pred, crop_box, original_shape, original_spacing, target_spacing,
                 num_classes: int, order: int = 1) -> np.ndarray:
  """Maps a label on the preprocessed grid back to the source grid.

  Args:
    pred: (D', H', W') class ids on the grid `preprocess_case` produced.
    crop_box: (3, 2) [start, stop) from `preprocess_case`.
    original_shape: source (D, H, W).
    original_spacing, target_spacing: mm (z, y, x), used to check that `pred`
      is on the grid they imply for the cropped box.
    num_classes: class count.
    order: 1 one-hot linear (predict/export), 0 nearest (the official
      evaluation's resampling; `eval.dice_grid=original`).
  Returns:
    uint8 (D, H, W): `pred` resized to the crop box, zeros outside it.
  """
  pred = np.asarray(pred)
  box = np.asarray(crop_box, np.int64).reshape(3, 2)
  original_shape = tuple(int(s) for s in original_shape)
  box_shape = tuple(int(b - a) for a, b in box)
  if np.any(box[:, 0] < 0) or np.any(box[:, 1] > original_shape) or min(box_shape) <= 0:
    raise InputError(f"crop_box {box.tolist()} does not fit original_shape {original_shape}.")
  expected = target_shape(box_shape, original_spacing, target_spacing)
  if pred.shape != expected:
    raise InputError(f"Prediction shape {pred.shape} is not the preprocessed grid "
                     f"{expected} of crop box {box.tolist()} at {tuple(target_spacing)} mm.")
  out = np.zeros(original_shape, np.uint8)
  out[_box_slices(box)] = resize_label(pred, box_shape, num_classes, order)
  return out
