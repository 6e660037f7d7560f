"""Patch extraction with spatial and intensity augmentation (NumPy/SciPy, host side).

A patch is sampled around a centre voxel of a volume. Spatial augmentation
(rotation, scaling, optional elastic deformation) is applied by mapping the
patch's voxel grid into the volume and interpolating once (image: linear,
label: nearest), so it costs one interpolation of patch size whatever the
volume size. Everything is a pure function of the NumPy `Generator` passed in.

Shapes: image (D, H, W, C) float32, label (D, H, W) uint8, patch (P0, P1, P2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Each transform is applied with its probability (nnU-Net-like defaults)."""
  enabled: bool = True
  p_flip: float = 0.5              # per axis
  p_rotate: float = 0.2
  max_angle_deg: float = 15.0      # about each axis
  p_scale: float = 0.2
  scale_range: tuple[float, float] = (0.85, 1.25)
  p_elastic: float = 0.0           # off by default (slow, marginal on CPU)
  elastic_sigma: float = 4.0       # voxels
  elastic_magnitude: float = 2.0   # voxels
  p_gamma: float = 0.3
  gamma_range: tuple[float, float] = (0.7, 1.5)
  p_brightness: float = 0.15
  brightness_range: tuple[float, float] = (0.75, 1.25)
  p_contrast: float = 0.15
  contrast_range: tuple[float, float] = (0.75, 1.25)
  p_noise: float = 0.1
  noise_std: float = 0.1

  @classmethod
  def from_config(cls, cfg) -> "AugmentConfig":
    if cfg is None:
      return cls()
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    for k in ("scale_range", "gamma_range", "brightness_range", "contrast_range"):
      if k in d:
        d[k] = tuple(d[k])
    return cls(**d)


def _rotation(angles: np.ndarray) -> np.ndarray:
  a, b, c = angles
  rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
  ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
  rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
  return rz @ ry @ rx


def crop_patch(image: np.ndarray, label: np.ndarray, center, patch) -> tuple[np.ndarray, np.ndarray]:
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
  """Patch around `center` with random flips, rotation, scaling, elastic."""
  patch = tuple(int(p) for p in patch)
  rotate = cfg.enabled and rng.random() < cfg.p_rotate
  scale = cfg.enabled and rng.random() < cfg.p_scale
  elastic = cfg.enabled and rng.random() < cfg.p_elastic
  flips = [cfg.enabled and rng.random() < cfg.p_flip for _ in range(3)]
  if not (rotate or scale or elastic):
    img, lab = crop_patch(image, label, center, patch)
  else:
    m = np.eye(3)
    if rotate:
      m = _rotation(np.deg2rad(rng.uniform(-cfg.max_angle_deg, cfg.max_angle_deg, 3))) @ m
    if scale:
      m = m * rng.uniform(*cfg.scale_range)
    grid = np.stack(np.meshgrid(*[np.arange(p, dtype=np.float32) - (p - 1) / 2 for p in patch],
                                indexing="ij"))
    coords = np.tensordot(m.astype(np.float32), grid, axes=1)
    if elastic:
      for ax in range(3):
        coords[ax] += ndimage.gaussian_filter(
            rng.standard_normal(patch).astype(np.float32), cfg.elastic_sigma) * (
                cfg.elastic_magnitude * cfg.elastic_sigma * 2)
    coords += (np.asarray(center, np.float32) - 0.5 + np.array([p % 2 for p in patch]) * 0.5
               ).reshape(3, 1, 1, 1)
    # The line above keeps the unaugmented case identical to crop_patch's
    # centring (centre voxel at index p // 2).
    img = np.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant",
                                            cval=0.0, prefilter=False)
                    for c in range(image.shape[3])], axis=-1).astype(np.float32)
    lab = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0).astype(np.uint8)
  for ax, f in enumerate(flips):
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
