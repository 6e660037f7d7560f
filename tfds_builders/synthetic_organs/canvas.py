"""The volume under construction (`Canvas`, painter's algorithm) and random fields.

Each structure is painted in order over the previous ones with a soft
occupancy (a one-voxel linear partial-volume ramp); its label is written where
occupancy > 0.5, so label boundaries are exactly the image boundaries (no label
noise) and occlusion is consistent. Tissue textures are smoothed Gaussian
noise (`Canvas.noise`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
  """One draw of U(lo, hi) as a Python float."""
  # Python floats keep float32 arrays float32 (numpy scalars would upcast).
  return float(rng.uniform(lo, hi))


class Canvas:
  """A volume under construction: channels-first image, label, mm grid.

  Attributes:
    image: (C, D, H, W) float32 intensities.
    label: (D, H, W) uint8.
    spacing: (3,) mm.
    rng: the case's random generator.
  """

  def __init__(self, shape, spacing, fills: Sequence[float], rng):
    self.shape = tuple(int(n) for n in shape)
    self.spacing = np.asarray(spacing, np.float64)
    self.sp = tuple(float(s) for s in self.spacing)
    self.rng = rng
    self.image = np.empty((len(fills),) + self.shape, np.float32)
    for c, v in enumerate(fills):
      self.image[c] = v
    self.label = np.zeros(self.shape, np.uint8)
    # Voxel-centre coordinates in mm, volume centre at 0.
    self.axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s)
                 for n, s in zip(self.shape, self.sp)]

  def region(self, lo, hi):
    """Slices of the voxels whose centres may lie in the mm box [lo, hi]."""
    out = []
    for n, s, a, b in zip(self.shape, self.sp, lo, hi):
      i0 = max(int(math.floor(a / s + (n - 1) / 2)), 0)
      i1 = min(int(math.ceil(b / s + (n - 1) / 2)) + 1, n)
      if i1 <= i0:
        return None
      out.append(slice(i0, i1))
    return tuple(out)

  def grid(self, sl):
    """Open (broadcastable) mm coordinates (z, y, x) of the region `sl`."""
    z, y, x = (a[s] for a, s in zip(self.axes, sl))
    return z[:, None, None], y[None, :, None], x[None, None, :]

  @staticmethod
  def region_shape(sl):
    return tuple(s.stop - s.start for s in sl)

  def paint(self, sl, d, values, label: int = 0):
    """Paints a structure over the region `sl` (painter's algorithm).

    The label is always written where the structure covers a voxel (by
    default 0): whatever hides a target in the image also hides it in the
    label, so labels can never disagree with the image.

    Args:
      sl: region slices.
      d: signed distance in voxels (< 0 inside), broadcastable to the region.
      values: one intensity per channel, scalar or region-shaped array.
      label: label value written where d < 0 (occupancy > 0.5).
    """
    occ = np.clip(0.5 - d, 0.0, 1.0).astype(np.float32, copy=False)
    for c, v in enumerate(values):
      reg = self.image[c][sl]
      reg += occ * (v - reg)
    lab = self.label[sl]
    lab[np.broadcast_to(d < 0, lab.shape)] = label

  def noise(self, sl, sigma_mm) -> np.ndarray:
    """Unit-variance smoothed Gaussian noise over region `sl`, (d, h, w)."""
    return _smooth_noise(self.rng, self.region_shape(sl),
                         [sigma_mm / s for s in self.sp])

  def full(self):
    return tuple(slice(0, n) for n in self.shape)


def _smooth_noise(rng, shape, sigma_vox) -> np.ndarray:
  """Unit-variance Gaussian-filtered white noise, float32 `shape`.

  Wide kernels are applied on a coarser grid and linearly upsampled: the
  result is the same kind of low-frequency field at a fraction of the cost.
  """
  f = [max(1, int(s // 1.5)) for s in sigma_vox]
  low = [n // fi + 2 if fi > 1 else n for n, fi in zip(shape, f)]
  g = rng.standard_normal(low, dtype=np.float32)
  g = ndimage.gaussian_filter(g, [s / fi for s, fi in zip(sigma_vox, f)],
                              mode="wrap", truncate=3.0)
  if any(fi > 1 for fi in f):
    g = ndimage.zoom(g, f, order=1, mode="nearest", prefilter=False)
    g = g[:shape[0], :shape[1], :shape[2]]
  g -= g.mean()
  g *= 1.0 / (g.std() + 1e-6)
  return g
