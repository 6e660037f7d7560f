"""Patch extraction with spatial and intensity augmentation (NumPy/SciPy, host side).

A patch is sampled around a centre voxel of a volume. Spatial augmentation
(rotation, scaling, optional elastic deformation) is applied by mapping the
patch's voxel grid into the volume and interpolating once (image: linear,
label: nearest), so it costs one interpolation of patch size whatever the
volume size. Everything is a pure function of the NumPy `Generator` passed in.

Two settings are expressible: the defaults (nnU-Net-like: small rotations about
every axis, uniform scaling, flips of every axis, linear image interpolation,
intensity transforms) and the official 3D U²-Net code's (huangmozhilv/u2net_torch,
`data_utils.augment_patch` L110–119 with `ccToolkits/cc_augment.py`): rotation
about array axis 0 only by U(0, 2π), two-sided scale draw, W-only mirroring,
batchgenerators' elastic field, cubic-spline image interpolation, no intensity
transforms (see `AugmentConfig`).

Shapes: image (D, H, W, C) float32, label (D, H, W) uint8, patch (P0, P1, P2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from u2net_jax.errors import ConfigError

SCALE_MODES = ("uniform", "official")
ELASTIC_MODES = ("fixed", "official")
_TUPLE_FIELDS = ("scale_range", "gamma_range", "brightness_range", "contrast_range",
                 "flip_axes", "rotate_axes", "angle_range_deg", "elastic_alpha_range",
                 "elastic_sigma_range")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Each transform is applied with its probability (nnU-Net-like defaults).

  The official code's setting (config.py L80–87, data_utils.py L110–119):
  p_rotate=0.3, rotate_axes=(0,), angle_range_deg=(0, 360); p_scale=0.5,
  scale_mode='official', scale_range=(0.75, 1.25); p_flip=0.15, flip_axes=(2,);
  p_elastic=0.3, elastic_mode='official' (α ~ U(0, 750), σ ~ U(10, 13));
  image_order=3; p_gamma = p_brightness = p_contrast = p_noise = 0.
  """
  enabled: bool = True
  p_flip: float = 0.5              # per axis in flip_axes
  flip_axes: tuple[int, ...] = (0, 1, 2)  # array axes that may be mirrored
  p_rotate: float = 0.2
  max_angle_deg: float = 15.0      # about each axis: U(-max, max) unless angle_range_deg
  rotate_axes: tuple[int, ...] = (0, 1, 2)  # rotation about these array axes
  angle_range_deg: tuple[float, ...] = ()   # (lo, hi) per axis; () = ±max_angle_deg
  p_scale: float = 0.2
  scale_range: tuple[float, float] = (0.85, 1.25)
  # 'uniform': s ~ U(scale_range). 'official' (cc_augment.py L75–78): with
  # probability ½ s ~ U(lo, 1), else U(max(lo, 1), hi), so zooming in and out
  # are equally likely whatever the range's asymmetry.
  scale_mode: str = "uniform"
  p_elastic: float = 0.0           # off by default (slow, marginal on CPU)
  # 'fixed': offsets = G_σ * N(0, 1) · 2·magnitude·σ with the two numbers below.
  # 'official' (batchgenerators elastic_deform_coordinates, via cc_augment.py
  # L45–48): per sample α ~ U(elastic_alpha_range), σ ~ U(elastic_sigma_range),
  # offsets = G_σ * U(-1, 1) · α (zero-padded filter), added before rotation and
  # scaling as the official code does.
  elastic_mode: str = "fixed"
  elastic_sigma: float = 4.0       # voxels ('fixed')
  elastic_magnitude: float = 2.0   # voxels ('fixed')
  elastic_alpha_range: tuple[float, float] = (0.0, 750.0)  # ('official')
  elastic_sigma_range: tuple[float, float] = (10.0, 13.0)  # voxels ('official')
  # Spline order of the image interpolation: 1 linear, 3 cubic B-spline (the
  # official order_data=3). Labels are always nearest (order 0).
  image_order: int = 1
  p_gamma: float = 0.3
  gamma_range: tuple[float, float] = (0.7, 1.5)
  p_brightness: float = 0.15
  brightness_range: tuple[float, float] = (0.75, 1.25)
  p_contrast: float = 0.15
  contrast_range: tuple[float, float] = (0.75, 1.25)
  p_noise: float = 0.1
  noise_std: float = 0.1

  def __post_init__(self):
    for k in _TUPLE_FIELDS:
      object.__setattr__(self, k, tuple(getattr(self, k)))
    for f in dataclasses.fields(self):
      if f.name.startswith("p_") and not 0.0 <= float(getattr(self, f.name)) <= 1.0:
        raise ConfigError(f"augment.{f.name}={getattr(self, f.name)!r} must be in [0, 1].")
    for k in ("flip_axes", "rotate_axes"):
      axes = getattr(self, k)
      if not set(axes) <= {0, 1, 2} or len(set(axes)) != len(axes):
        raise ConfigError(f"augment.{k}={axes!r} must be distinct array axes out of 0, 1, 2.")
    for k in _TUPLE_FIELDS[:4] + _TUPLE_FIELDS[-2:] + (
        ("angle_range_deg",) if self.angle_range_deg else ()):
      r = getattr(self, k)
      if len(r) != 2 or not r[0] <= r[1]:
        raise ConfigError(f"augment.{k}={r!r} must be (lo, hi) with lo <= hi.")
    if self.scale_mode not in SCALE_MODES:
      raise ConfigError(f"augment.scale_mode={self.scale_mode!r}; use one of {SCALE_MODES}.")
    if self.elastic_mode not in ELASTIC_MODES:
      raise ConfigError(
          f"augment.elastic_mode={self.elastic_mode!r}; use one of {ELASTIC_MODES}.")
    if self.image_order not in range(6):
      raise ConfigError(f"augment.image_order={self.image_order!r} must be a spline order "
                        "0..5 (1 linear, 3 cubic as the official code).")

  @classmethod
  def from_config(cls, cfg) -> "AugmentConfig":
    """From a ConfigDict/dict; absent keys keep their defaults."""
    if cfg is None:
      return cls()
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ConfigError(f"Unknown augment fields {unknown}.")
    return cls(**d)


def draw_angles(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Rotation angles (radians) about array axes (0, 1, 2); 0 for axes not rotated."""
  lo, hi = cfg.angle_range_deg or (-cfg.max_angle_deg, cfg.max_angle_deg)
  angles = np.zeros(3)
  angles[list(cfg.rotate_axes)] = rng.uniform(lo, hi, len(cfg.rotate_axes))
  return np.deg2rad(angles)


def draw_scale(rng: np.random.Generator, cfg: AugmentConfig) -> float:
  """Zoom factor applied to the sampling coordinates (> 1: zoom out)."""
  lo, hi = cfg.scale_range
  if cfg.scale_mode == "official":
    # cc_augment.py L75–78, including its `scale[0] < 1` guard; a + (b-a)·U as
    # np.random.uniform, which also accepts b < a (a range below 1).
    a, b = (lo, 1.0) if rng.random() < 0.5 and lo < 1 else (max(lo, 1.0), hi)
    return float(a + (b - a) * rng.random())
  return float(rng.uniform(lo, hi))


def elastic_offsets(patch, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Per-voxel displacements (3, P0, P1, P2) float32, in voxels."""
  patch = tuple(patch)
  out = np.empty((3,) + patch, np.float32)
  if cfg.elastic_mode == "official":
    alpha = rng.uniform(*cfg.elastic_alpha_range)
    sigma = rng.uniform(*cfg.elastic_sigma_range)
    for ax in range(3):
      noise = rng.random(patch, dtype=np.float32) * 2 - 1
      out[ax] = ndimage.gaussian_filter(noise, sigma, mode="constant", cval=0.0) * alpha
    return out
  for ax in range(3):
    out[ax] = ndimage.gaussian_filter(
        rng.standard_normal(patch).astype(np.float32), cfg.elastic_sigma) * (
            cfg.elastic_magnitude * cfg.elastic_sigma * 2)
  return out


# Voxels of context kept around the sampled region when a spline of order > 1
# is prefiltered on a sub-volume: the prefilter's boundary effect decays as
# 0.268^distance (cubic), so 12 voxels leave < 1e-6 of a voxel value.
_SPLINE_MARGIN = 12


def interpolate(volume: np.ndarray, coords: np.ndarray, order: int, cval=0.0) -> np.ndarray:
  """`map_coordinates(volume, coords, order, mode='constant')` for one channel.

  volume (D, H, W); coords (3, P0, P1, P2) voxel indices. Orders > 1 prefilter
  only the sub-volume the coordinates reach (plus a margin), not the whole
  volume, which would cost a full-volume spline filter per patch.
  """
  if order <= 1:
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=cval,
                                   prefilter=False)
  lo = [max(int(np.floor(coords[a].min())) - _SPLINE_MARGIN, 0) for a in range(3)]
  hi = [min(int(np.ceil(coords[a].max())) + _SPLINE_MARGIN + 1, n)
        for a, n in enumerate(volume.shape)]
  if any(h <= l for l, h in zip(lo, hi)):  # entirely outside the volume
    return np.full(coords.shape[1:], cval, np.float64)
  sub = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
  shifted = coords - np.asarray(lo, coords.dtype).reshape(3, 1, 1, 1)
  return ndimage.map_coordinates(sub, shifted, order=order, mode="constant", cval=cval)


def _rotation(angles: np.ndarray) -> np.ndarray:
  a, b, c = angles
  rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
  ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
  rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
  return rz @ ry @ rx


def crop_patch(image: np.ndarray, label: np.ndarray, center,
               patch) -> tuple[np.ndarray, np.ndarray]:
  """Axis-aligned patch centred on `center`; outside the volume is 0 (background)."""
  patch = tuple(int(p) for p in patch)
  start = [int(c) - p // 2 for c, p in zip(center, patch)]
  img = np.zeros(patch + image.shape[3:], np.float32)
  lab = np.zeros(patch, np.uint8)
  src, dst = [], []
  for s, p, n in zip(start, patch, image.shape[:3]):
    lo, hi = max(s, 0), min(s + p, n)
    if hi <= lo:
      return img, lab
    src.append(slice(lo, hi))
    dst.append(slice(lo - s, hi - s))
  img[tuple(dst)] = image[tuple(src)]
  lab[tuple(dst)] = label[tuple(src)]
  return img, lab


def spatial_patch(image, label, center, patch, rng: np.random.Generator,
                  cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
  """Patch around `center` with random flips, rotation, scaling, elastic.

  The voxel `center` lands at patch index p // 2 per axis (as `crop_patch`).
  Rotation and scaling turn about that voxel; flips act on the finished patch.
  """
  patch = tuple(int(p) for p in patch)
  rotate = cfg.enabled and rng.random() < cfg.p_rotate
  scale = cfg.enabled and rng.random() < cfg.p_scale
  elastic = cfg.enabled and rng.random() < cfg.p_elastic
  flips = {ax: cfg.enabled and rng.random() < cfg.p_flip for ax in cfg.flip_axes}
  if not (rotate or scale or elastic):
    img, lab = crop_patch(image, label, center, patch)
  else:
    m = np.eye(3)
    if rotate:
      m = _rotation(draw_angles(rng, cfg)) @ m
    if scale:
      m = m * draw_scale(rng, cfg)
    grid = np.stack(np.meshgrid(*[np.arange(p, dtype=np.float32) - (p - 1) / 2 for p in patch],
                                indexing="ij"))
    if elastic and cfg.elastic_mode == "official":
      # batchgenerators deforms the grid first, then rotates and scales it.
      grid += elastic_offsets(patch, rng, cfg)
      elastic = False
    coords = np.tensordot(m.astype(np.float32), grid, axes=1)
    if elastic:
      coords += elastic_offsets(patch, rng, cfg)
    coords += (np.asarray(center, np.float32) - 0.5 + np.array([p % 2 for p in patch]) * 0.5
               ).reshape(3, 1, 1, 1)
    # The line above keeps the unaugmented case identical to crop_patch's
    # centring (centre voxel at index p // 2).
    img = np.stack([interpolate(image[..., c], coords, cfg.image_order)
                    for c in range(image.shape[3])], axis=-1).astype(np.float32)
    lab = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0).astype(np.uint8)
  for ax, f in flips.items():
    if f:
      img = np.flip(img, ax)
      lab = np.flip(lab, ax)
  return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def intensity(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Gamma, brightness, contrast and Gaussian noise, each with its probability."""
  if not cfg.enabled:
    return img
  img = img.astype(np.float32, copy=True)
  if rng.random() < cfg.p_gamma:
    lo, hi = img.min(), img.max()
    if hi > lo:
      g = rng.uniform(*cfg.gamma_range)
      img = ((img - lo) / (hi - lo)) ** g * (hi - lo) + lo
  if rng.random() < cfg.p_brightness:
    img = img * rng.uniform(*cfg.brightness_range)
  if rng.random() < cfg.p_contrast:
    mean = img.mean(axis=(0, 1, 2), keepdims=True)
    img = (img - mean) * rng.uniform(*cfg.contrast_range) + mean
  if rng.random() < cfg.p_noise:
    img = img + rng.normal(0.0, cfg.noise_std, img.shape).astype(np.float32)
  return img.astype(np.float32)
