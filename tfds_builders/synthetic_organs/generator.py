r"""Seeded synthetic 3D medical volumes mimicking the 3D U²-Net MSD domains.

Six domains stand in for the Medical Segmentation Decathlon tasks of the
3D U²-Net paper (heart, liver, hippocampus, prostate, pancreas) plus spleen,
held back for the new-domain experiment. Every case is a pure function of
(domain, seed, shape): pure numpy + scipy, no downloads, ~0.13 s of one CPU
core per volume (all 6 x 32 default volumes: ~25 s).

How a case is made (painter's algorithm, see `_Canvas`):
  * Structures are signed-distance shapes in mm (randomly deformed ellipsoids
    with low-order "spherical-harmonic" radius modulation and smooth sinusoidal
    warps; tubes along smooth random curves), placed with an anatomical
    location prior plus per-case jitter in position, size and orientation.
  * Each structure is painted in order over the previous ones with a soft
    occupancy (a one-voxel linear partial-volume ramp); its label is written
    where occupancy > 0.5, so label boundaries are exactly the image
    boundaries (no label noise) and occlusion is consistent.
  * Tissues get domain-specific textures (smoothed noise), then a point-spread
    blur and modality noise: CT in Hounsfield units with correlated Gaussian
    noise; MRI in arbitrary units with a smooth multiplicative bias field,
    per-case gain and Rician noise (ADC: Gaussian noise, lower resolution).
  * Every target has distractors of overlapping intensity (other organs,
    vessels, bowel, grey matter, blood pools) but differs from them in shape,
    texture, wall/rim or neighbourhood, so a global intensity threshold fails
    (`threshold_baseline_dice` < 0.6) while a small 3D CNN can learn it.

Geometry conventions:
  * Arrays are (D, H, W) = (z, y, x); images are (D, H, W, C) float32.
  * Scene frame (mm, origin at the volume centre): +z superior, +y anterior,
    +x patient right, i.e. RAS with the array axes reversed.
  * `affine` maps a voxel index (k, j, i, 1) (k along D, j along H, i along W)
    to NIfTI/nibabel RAS+ world mm: R = sx·i + oR, A = sy·j + oA,
    S = sz·k + oS; so affine[:3, :3] is the anti-diagonal permutation
    [[0, 0, sx], [0, sy, 0], [sz, 0, 0]] (axis codes ('S', 'A', 'R')), its
    column norms equal `spacing`, and the volume centre maps to world (0, 0, 0).
    `nibabel.Nifti1Image(image[..., c], affine)` therefore writes a correctly
    oriented file without transposing the array.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "DOMAINS", "SPLITS", "SyntheticDomain", "case_seed", "generate_case",
    "generate_split", "get_domain", "threshold_baseline_dice",
]

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class SyntheticDomain:
  """One synthetic segmentation domain (one TFDS builder config).

  Attributes:
    name: 'heart', 'liver', 'hippocampus', 'prostate', 'pancreas' or 'spleen'.
    modality: 'MRI' or 'CT'.
    channel_names: one name per image channel, e.g. ('T2', 'ADC').
    class_names: one name per label value, 'background' first.
    spacing: voxel size in mm, (z, y, x), at the default `shape`.
    shape: default volume shape (D, H, W), voxels.
    num_train: default number of training cases.
    num_validation: default number of validation cases.
  """
  name: str
  modality: str
  channel_names: tuple[str, ...]
  class_names: tuple[str, ...]
  spacing: tuple[float, float, float]
  shape: tuple[int, int, int]
  num_train: int = 24
  num_validation: int = 8

  @property
  def num_channels(self) -> int:
    return len(self.channel_names)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


# Spacings mimic each MSD task's anisotropy; the anatomy is a scaled phantom
# (the CT body is ~110 mm wide) so every volume fits in 48-80 voxels a side.
DOMAINS: dict[str, SyntheticDomain] = {
    d.name: d for d in (
        SyntheticDomain("heart", "MRI", ("MRI",), ("background", "left_atrium"),
                        (1.37, 1.25, 1.25), (48, 64, 64)),
        SyntheticDomain("liver", "CT", ("CT",), ("background", "liver"),
                        (2.5, 1.5, 1.5), (48, 80, 80)),
        SyntheticDomain("hippocampus", "MRI", ("MRI",),
                        ("background", "anterior", "posterior"),
                        (1.0, 1.0, 1.0), (48, 48, 48)),
        SyntheticDomain("prostate", "MRI", ("T2", "ADC"),
                        ("background", "peripheral_zone", "transition_zone"),
                        (3.6, 1.25, 1.25), (48, 64, 64)),
        SyntheticDomain("pancreas", "CT", ("CT",), ("background", "pancreas"),
                        (2.0, 1.5, 1.5), (48, 80, 80)),
        SyntheticDomain("spleen", "CT", ("CT",), ("background", "spleen"),
                        (3.0, 1.5, 1.5), (48, 80, 80)),
    )
}

# Seed layout of `case_seed`: disjoint blocks per (base_seed, domain, split).
_MAX_CASES = 500_000
_DOMAIN_BLOCK = len(SPLITS) * _MAX_CASES
_BASE_BLOCK = 100 * _DOMAIN_BLOCK


def get_domain(domain: str | SyntheticDomain) -> SyntheticDomain:
  """Returns the built-in domain called `domain` (or `domain` itself).

  Raises:
    ValueError: unknown name, or a SyntheticDomain with no scene builder.
  """
  if isinstance(domain, SyntheticDomain):
    if domain.name not in _BUILDERS:
      raise ValueError(
          f"No synthetic scene for domain name {domain.name!r}; valid names: "
          f"{list(DOMAINS)}.")
    return domain
  if domain not in DOMAINS:
    raise ValueError(
        f"Unknown synthetic domain {domain!r}; valid domains: {list(DOMAINS)}.")
  return DOMAINS[domain]


def case_seed(domain: str | SyntheticDomain, split: str, index: int,
              base_seed: int = 0) -> int:
  """The seed of case `index` of `split`: unique per (base_seed, domain, split).

  seed = base_seed·1e8 + domain_index·1e6 + split_index·5e5 + index.
  """
  d = get_domain(domain)
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {list(SPLITS)}.")
  if not 0 <= index < _MAX_CASES:
    raise ValueError(f"Case index {index} must be in [0, {_MAX_CASES}).")
  if base_seed < 0:
    raise ValueError(f"base_seed must be >= 0, got {base_seed}.")
  return (base_seed * _BASE_BLOCK + list(_BUILDERS).index(d.name) * _DOMAIN_BLOCK
          + SPLITS.index(split) * _MAX_CASES + index)


# --------------------------------------------------------------------------
# Geometry primitives. Distances are returned in voxel units ("index space"),
# which is what a one-voxel partial-volume ramp needs on anisotropic grids.


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
  # Python floats keep float32 arrays float32 (numpy scalars would upcast).
  return float(rng.uniform(lo, hi))


def _rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
  """Random rotation (3, 3) in the (z, y, x) frame.

  Args:
    rng: random generator.
    max_deg: maximum absolute angle about the (z, y, x) axes, degrees.
  """
  a, b, c = (math.radians(_u(rng, -m, m)) for m in max_deg)
  rz = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)],
                 [0, math.sin(a), math.cos(a)]])
  ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0],
                 [-math.sin(b), 0, math.cos(b)]])
  rx = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0],
                 [0, 0, 1]])
  return rz @ ry @ rx


def _in_plane_rotation(deg: float) -> np.ndarray:
  """Rotation (3, 3) about the z axis by `deg` degrees (mixes y and x)."""
  a = math.radians(deg)
  return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)],
                   [0, math.sin(a), math.cos(a)]])


@dataclasses.dataclass
class _Shape:
  """Radius modulation r(n) = 1 + lin·n + nᵀ quad n + Σ amp (n·v)³ (|n| = 1)."""
  lin: tuple[float, float, float] = (0.0, 0.0, 0.0)
  quad: np.ndarray | None = None
  lobes: tuple[tuple[tuple[float, float, float], float], ...] = ()

  @staticmethod
  def random(rng: np.random.Generator, amp: float, lobes: int = 2) -> "_Shape":
    """Random low-order modulation with terms of size ~`amp`."""
    lin = tuple(_u(rng, -amp, amp) for _ in range(3))
    q = rng.uniform(-amp, amp, (3, 3))
    q = 0.5 * (q + q.T)
    q -= np.eye(3) * np.trace(q) / 3.0  # traceless: keeps the mean radius
    lb = []
    for _ in range(lobes):
      v = rng.standard_normal(3)
      v /= np.linalg.norm(v)
      lb.append((tuple(float(t) for t in v), _u(rng, -amp, amp)))
    return _Shape(lin, q, tuple(lb))

  def bound(self) -> float:
    """Upper bound of |r(n) - 1|."""
    b = sum(abs(t) for t in self.lin) + sum(abs(a) for _, a in self.lobes)
    if self.quad is not None:
      b += float(np.abs(self.quad).sum())
    return b

  def __call__(self, n):
    r = 1.0 + self.lin[0] * n[0] + self.lin[1] * n[1] + self.lin[2] * n[2]
    if self.quad is not None:
      q = self.quad
      for i in range(3):
        for j in range(i, 3):
          c = float(q[i, j]) * (1.0 if i == j else 2.0)
          if c:
            r = r + c * n[i] * n[j]
    for v, a in self.lobes:
      r = r + a * (v[0] * n[0] + v[1] * n[1] + v[2] * n[2]) ** 3
    return r


@dataclasses.dataclass
class _Warp:
  """Smooth displacement p -> p + Σ_w amp_w sin(k_w·p + phase_w), mm."""
  waves: tuple[tuple[np.ndarray, np.ndarray, float], ...]

  @staticmethod
  def random(rng: np.random.Generator, amp_mm: float, wavelength_mm: float,
             n: int = 2) -> "_Warp":
    waves = []
    for _ in range(n):
      k = rng.standard_normal(3)
      k *= 2 * math.pi / wavelength_mm / np.linalg.norm(k)
      a = rng.standard_normal(3)
      a *= amp_mm / np.linalg.norm(a)
      waves.append((k, a, _u(rng, 0, 2 * math.pi)))
    return _Warp(tuple(waves))

  def bound(self) -> float:
    return sum(float(np.linalg.norm(a)) for _, a, _ in self.waves)

  def __call__(self, p):
    out = list(p)
    for k, a, ph in self.waves:
      s = np.sin(float(k[0]) * p[0] + float(k[1]) * p[1] + float(k[2]) * p[2] + ph)
      for i in range(3):
        out[i] = out[i] + float(a[i]) * s
    return out


class _Canvas:
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


def _blob(cv: _Canvas, center, semi, rot=None, shape: _Shape | None = None,
          warp: _Warp | None = None, pad_mm: float = 0.0):
  """Deformed ellipsoid: (slices, signed distance in voxels) or None.

  Args:
    cv: canvas.
    center: (3,) mm, (z, y, x).
    semi: (3,) semi-axes in mm, in the rotated frame.
    rot: (3, 3) rotation (columns = rotated axes), or None.
    shape: radius modulation, or None for an ellipsoid.
    warp: smooth displacement applied before evaluation, or None.
    pad_mm: extra bounding-box margin (for halos drawn from the same d).
  """
  grow = 1.0 + (shape.bound() if shape is not None else 0.0)
  ext = np.asarray(semi, np.float64) * grow
  if rot is not None:
    ext = np.full(3, ext.max())
  ext = ext + (warp.bound() if warp is not None else 0.0) + pad_mm
  ext = ext + 2 * cv.spacing
  c = np.asarray(center, np.float64)
  sl = cv.region(c - ext, c + ext)
  if sl is None:
    return None
  g = cv.grid(sl)
  p = [g[i] - float(c[i]) for i in range(3)]
  if warp is not None:
    p = warp(p)
  if rot is None:
    q = p
  else:
    r_ = [[float(t) for t in row] for row in rot]
    q = [r_[0][i] * p[0] + r_[1][i] * p[1] + r_[2][i] * p[2] for i in range(3)]
  a = [float(t) for t in semi]
  u = [q[i] * (1.0 / a[i]) for i in range(3)]
  r = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]) + 1e-4
  inv_r = 1.0 / r
  rad = shape([u[i] * inv_r for i in range(3)]) if shape is not None else 1.0
  # Gradient of r: in the rotated frame u_i / (a_i r), back-rotated, then
  # scaled by the spacing so the distance comes out in voxels.
  gq = [u[i] * inv_r * (1.0 / a[i]) for i in range(3)]
  if rot is None:
    gp = gq
  else:
    gp = [r_[j][0] * gq[0] + r_[j][1] * gq[1] + r_[j][2] * gq[2] for j in range(3)]
  s = cv.sp
  norm = np.sqrt((s[0] * gp[0]) ** 2 + (s[1] * gp[1]) ** 2 + (s[2] * gp[2]) ** 2)
  d = (r - rad) / (norm + 1e-6)
  return sl, d.astype(np.float32, copy=False)


def _ellipse_z(cv: _Canvas, cy, cx, ay, ax, ay_post=None):
  """Elliptic cylinder along z: signed distance in voxels, (1, H, W).

  ay_post: semi-axis used posterior to the centre (flatter back), or None.
  """
  sl = cv.full()
  _, y, x = cv.grid(sl)
  ay_arr = ay if ay_post is None else np.where(y < cy, ay_post, ay).astype(np.float32)
  uy = (y - cy) / ay_arr
  ux = (x - cx) * (1.0 / ax)
  r = np.sqrt(uy * uy + ux * ux) + 1e-4
  gy = uy / (ay_arr * r)
  gx = ux / (ax * r)
  norm = np.sqrt((cv.sp[1] * gy) ** 2 + (cv.sp[2] * gx) ** 2)
  return ((r - 1.0) / (norm + 1e-6)).astype(np.float32)


def _tube(cv: _Canvas, pts, radii, with_param: bool = False):
  """Tube of varying radius along a polyline (chain of round cones).

  Args:
    cv: canvas.
    pts: (N, 3) centreline points, mm (z, y, x).
    radii: (N,) radius at each point, mm.
    with_param: also return the normalized arc-length (0..1) of the nearest
      centreline point per voxel.

  Returns:
    (slices, signed distance in voxels[, param]) or None if outside.
  """
  pts = np.asarray(pts, np.float64)
  radii = np.broadcast_to(np.asarray(radii, np.float64), (len(pts),))
  margin = float(radii.max()) + 2 * cv.spacing
  sl = cv.region(pts.min(0) - margin, pts.max(0) + margin)
  if sl is None:
    return None
  off = [s.start for s in sl]
  z, y, x = cv.grid(sl)
  d = np.full(cv.region_shape(sl), 1e3, np.float32)
  prm = np.zeros_like(d) if with_param else None
  seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
  cum = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-6)
  s0, s1, s2 = cv.sp
  for k in range(len(pts) - 1):
    a, b = pts[k], pts[k + 1]
    ra, rb = float(radii[k]), float(radii[k + 1])
    m = max(ra, rb) + 2 * cv.spacing
    gsl = cv.region(np.minimum(a, b) - m, np.maximum(a, b) + m)
    if gsl is None:
      continue
    lsl = tuple(slice(g.start - o, g.stop - o) for g, o in zip(gsl, off))
    zz, yy, xx = z[lsl[0]], y[:, lsl[1]], x[:, :, lsl[2]]
    ab = [float(t) for t in b - a]
    l2 = max(ab[0] ** 2 + ab[1] ** 2 + ab[2] ** 2, 1e-9)
    pz, py, px = zz - float(a[0]), yy - float(a[1]), xx - float(a[2])
    t = np.clip((pz * ab[0] + py * ab[1] + px * ab[2]) * (1.0 / l2), 0.0, 1.0)
    dz, dy, dx = pz - t * ab[0], py - t * ab[1], px - t * ab[2]
    dist = np.sqrt(dz * dz + dy * dy + dx * dx) + 1e-3
    svox = np.sqrt((s0 * dz) ** 2 + (s1 * dy) ** 2 + (s2 * dx) ** 2)
    dv = (dist - (ra + (rb - ra) * t)) * dist / (svox + 1e-6)
    cur = d[lsl]
    better = dv < cur
    cur[better] = dv[better]
    if with_param:
      tt = np.broadcast_to(cum[k] + (cum[k + 1] - cum[k]) * t, dv.shape)
      sub = prm[lsl]
      sub[better] = tt[better]
  if with_param:
    return sl, d, prm
  return sl, d


def _curve(p0, p1, rng, wiggle_mm: float, n: int = 12, harmonics: int = 2):
  """Smooth random curve from p0 to p1: (n, 3) mm points."""
  p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
  t = np.linspace(0.0, 1.0, n)[:, None]
  pts = p0 + (p1 - p0) * t
  for h in range(1, harmonics + 1):
    pts = pts + rng.normal(0, wiggle_mm / h, 3) * np.sin(math.pi * h * t)
  return pts


def _spline(ctrl, n_per: int = 4):
  """Catmull-Rom interpolation through control points: (M, 3) mm points."""
  c = np.asarray(ctrl, np.float64)
  c = np.concatenate([2 * c[:1] - c[1:2], c, 2 * c[-1:] - c[-2:-1]])
  out = []
  for i in range(1, len(c) - 2):
    p0, p1, p2, p3 = c[i - 1], c[i], c[i + 1], c[i + 2]
    for t in np.linspace(0, 1, n_per, endpoint=False):
      t2, t3 = t * t, t * t * t
      out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                        + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
  out.append(c[-2])
  return np.asarray(out)


def _sub(sl_big, sl_small):
  """Slices of region `sl_small` inside the array of region `sl_big`."""
  return tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sl_small, sl_big))


def _clip_to(sl, d, other_d_full, inset_vox: float = 0.0):
  """Intersects d (region sl) with {other_d_full + inset_vox < 0}.

  other_d_full: a z-invariant full-volume distance, (1, H, W).
  """
  return np.maximum(d, other_d_full[(slice(None),) + sl[1:]] + inset_vox)


# --------------------------------------------------------------------------
# Finishing: blur, bias, noise.


def _psf(img: np.ndarray, sigma_vox) -> np.ndarray:
  return ndimage.gaussian_filter(img, sigma_vox, mode="nearest", truncate=2.5)


def _bias_field(cv: _Canvas, amp: float) -> np.ndarray:
  """Smooth multiplicative MRI bias: exp of a random quadratic, (D, H, W)."""
  rng = cv.rng
  z, y, x = cv.grid(cv.full())
  n = [z / (float(np.abs(z).max()) + 1e-6), y / (float(np.abs(y).max()) + 1e-6),
       x / (float(np.abs(x).max()) + 1e-6)]
  e = 0.0
  for i in range(3):
    e = e + _u(rng, -1, 1) * n[i] + _u(rng, -0.5, 0.5) * n[i] * n[i]
  e = e + _u(rng, -0.5, 0.5) * n[1] * n[2] + _u(rng, -0.5, 0.5) * n[0] * n[2]
  e = e + _u(rng, -0.5, 0.5) * n[0] * n[1]
  # Normalize the log-field so its spread is ~`amp` regardless of the draw.
  e = e - float(np.mean(e))
  return np.exp(e * (amp / (float(np.std(e)) + 1e-6))).astype(np.float32)


def _rician(cv: _Canvas, img: np.ndarray, sigma: float) -> np.ndarray:
  """Magnitude of the complex signal plus Gaussian noise in both parts."""
  rng = cv.rng
  re = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
  im = sigma * rng.standard_normal(img.shape, dtype=np.float32)
  return np.sqrt(re * re + im * im)


# --------------------------------------------------------------------------
# CT abdomen (liver, pancreas, spleen domains share one phantom).

# Phantom z of each target's centre; each domain's scan range is centred on it.
_ABDOMEN_Z = {"liver": 0.0, "pancreas": -22.0, "spleen": -4.0}


def _build_abdomen(cv: _Canvas, target: str) -> None:
  """Upper-abdomen CT (HU) with liver, spleen, pancreas, kidneys, bowel, spine.

  The organ named `target` is label 1, every other structure is background.
  """
  rng = cv.rng
  sp = cv.sp
  lab = {k: (1 if k == target else 0) for k in ("liver", "pancreas", "spleen")}
  zs = -_ABDOMEN_Z[target] + _u(rng, -5, 5)   # phantom z -> scene z
  zfov = cv.shape[0] * sp[0] / 2

  # Portal-venous phase. A shared contrast-timing shift moves every enhancing
  # tissue together (so relative contrast is stable) on top of small per-organ
  # jitter. Soft tissues sit ~20-30 HU apart (2-4 noise SDs), each band
  # shared with a distractor of another shape: muscle ~ bowel wall ~ pancreas
  # < liver ~ IVC < spleen ~ gastric wall < vessels ~ kidney cortex.
  enh = _u(rng, -12, 12)
  hu_fat = _u(rng, -115, -85)
  hu_liver = 100.0 + enh + _u(rng, -4, 4)
  hu_muscle = _u(rng, 45, 60)
  hu_spleen = hu_liver + _u(rng, 25, 35)
  hu_panc = hu_liver - _u(rng, 22, 30)
  hu_vessel = hu_liver + _u(rng, 70, 100)
  hu_bowel = hu_liver - _u(rng, 45, 60)
  hu_kidney = hu_liver + _u(rng, 60, 110)

  # Body: elliptic cylinder, flatter back, on a couch.
  y0, x0 = _u(rng, -4, 2), _u(rng, -3, 3)
  ay, ax = _u(rng, 37, 42), _u(rng, 50, 56)
  full = cv.full()
  couch_y = y0 - 0.9 * ay - 2.5
  _, yy, _ = cv.grid(full)
  couch = (np.abs(yy - (couch_y - 3.0)) - 2.0) / sp[1]
  cv.paint(full, couch, [-250.0])
  d_body = _ellipse_z(cv, y0, x0, ay, ax, ay_post=0.9 * ay)
  tex = cv.noise(full, 1.6)   # shared background texture field
  cv.paint(full, d_body, [hu_fat + 8.0 * tex])
  t_fat, t_mus = _u(rng, 4, 8), _u(rng, 2.5, 4)
  cv.paint(full, d_body + t_fat / sp[1], [hu_muscle + 6.0 * tex])
  d_cav = d_body + (t_fat + t_mus) / sp[1]
  cv.paint(full, d_cav, [hu_fat + 10 + 14.0 * tex])

  # Spine: vertebral body (cortex + cancellous bone + discs), canal, arch.
  r_vb = _u(rng, 6.5, 8)
  vb_y = y0 - 0.9 * ay + r_vb + _u(rng, 14, 17)
  lord = _u(rng, -0.08, 0.08)
  zline = np.array([-zfov - 10, zfov + 10])
  def along_z(yc, xc):
    return np.stack([zline, yc + lord * zline, np.full(2, xc)], axis=1)
  can_y = vb_y - r_vb - 3.8
  for side in (-1, 1):
    res = _blob(cv, (0.0, can_y - 2.0, x0 + side * _u(rng, 10, 12)),
                (200.0, _u(rng, 6, 8), _u(rng, 7, 9)))
    if res:
      cv.paint(res[0], res[1], [hu_muscle + 6.0 * cv.noise(res[0], 2.0)])
  res = _tube(cv, along_z(can_y, x0), 6.0)
  cv.paint(*res, [_u(rng, 500, 800)])
  res = _tube(cv, along_z(can_y - 7.0, x0), 2.5)
  cv.paint(*res, [_u(rng, 500, 800)])
  res = _tube(cv, along_z(can_y, x0), 3.3)
  cv.paint(*res, [20.0])
  sl, d = _tube(cv, along_z(vb_y, x0), r_vb)
  cv.paint(sl, d, [_u(rng, 700, 1000)])
  z = cv.grid(sl)[0]
  disc_period, disc_phase = _u(rng, 13, 16), _u(rng, 0, 16)
  disc = np.abs(((z + disc_phase) % disc_period) - disc_period / 2) < 2.0
  cancellous = np.where(disc, 90.0, _u(rng, 180, 300)) + 35.0 * cv.noise(sl, 1.0)
  cv.paint(sl, d + 1.5 / sp[1], [cancellous])

  # Ribs: arcs just inside the muscle wall on both sides (upper levels).
  for k in range(4):
    zr = zs + _u(rng, -5, 45) - 14 * k
    if abs(zr) > zfov + 5:
      continue
    for side in (-1, 1):
      th = np.linspace(math.radians(_u(rng, -115, -95)), math.radians(_u(rng, 5, 35)), 9)
      ry, rx = ay - t_fat - 1.5, ax - t_fat - 1.5
      # Ribs run obliquely: lower anteriorly, so a slice cuts short pieces.
      pts = np.stack([zr - 20.0 * (th - th[0]), y0 + ry * np.sin(th),
                      x0 + side * rx * np.cos(th)], axis=1)
      res = _tube(cv, pts, _u(rng, 1.8, 2.6))
      if res:
        cv.paint(*res, [_u(rng, 450, 800)])

  # Bowel: small-bowel loops and colon; lumen fluid, gas, positive contrast,
  # or collapsed (solid, organ-like HU) with an enhancing mucosal ring.
  for k in range(int(rng.integers(8, 12))):
    cz = zs + _u(rng, -50, 10)
    cy_ = y0 + _u(rng, -5, 0.7 * ay)
    cx_ = x0 + _u(rng, -0.7, 0.7) * ax
    p0 = np.array([cz, cy_, cx_])
    p1 = p0 + rng.normal(0, 22, 3) * np.array([0.8, 0.6, 1.0])
    pts = _curve(p0, p1, rng, 10.0, n=8)
    r = _u(rng, 4.5, 7.5)
    res = _tube(cv, pts, r)
    if res is None:
      continue
    sl, d = res
    d = _clip_to(sl, d, d_cav, 0.5)
    kind = rng.choice(4, p=[0.3, 0.2, 0.15, 0.35])
    cv.paint(sl, d, [hu_bowel + _u(rng, -10, 10) + 6.0 * cv.noise(sl, 1.5)])
    wall = 2.0 / sp[1]
    if kind == 0:
      cv.paint(sl, d + wall, [_u(rng, 0, 25)])
    elif kind == 1:
      cv.paint(sl, d + wall, [_u(rng, -950, -800)])
    elif kind == 2:
      cv.paint(sl, d + wall, [_u(rng, 200, 350)])
    else:
      # Collapsed loop: target sign, bright mucosa inside darker submucosa.
      cv.paint(sl, d + 0.9 * wall, [hu_bowel - 25.0])
      cv.paint(sl, d + 1.6 * wall, [hu_bowel + 25.0])

  # Stomach (left upper): enhancing wall, fluid with an air-fluid level.
  sc = np.array([zs + _u(rng, 0, 10), y0 + _u(rng, 8, 16), x0 - _u(rng, 12, 20)])
  res = _blob(cv, sc, (_u(rng, 14, 20), _u(rng, 10, 13), _u(rng, 12, 16)),
              _rotation(rng, (25, 10, 10)), _Shape.random(rng, 0.08))
  if res:
    sl, d = res
    d = _clip_to(sl, d, d_cav, 0.5)
    # Enhancing gastric mucosa: as bright as the spleen, but a thin shell.
    cv.paint(sl, d, [hu_spleen + _u(rng, -5, 5) + 4.0 * cv.noise(sl, 1.5)])
    y = cv.grid(sl)[1]
    lumen = np.where(y > sc[1] + _u(rng, 0, 8), -900.0, _u(rng, 0, 30)).astype(np.float32)
    cv.paint(sl, d + 2.5 / sp[1], [lumen + 4.0 * cv.noise(sl, 2.0)])

  # Kidneys: cortex, medulla, sinus fat at the hilum.
  kz = zs - 40.0 + _u(rng, -5, 5)
  for side in (-1, 1):
    c = np.array([kz + _u(rng, -3, 3), vb_y + _u(rng, -2, 3), x0 + side * _u(rng, 25, 29)])
    semi = np.array([_u(rng, 16, 20), _u(rng, 10, 12), _u(rng, 7, 9)])
    rot = _in_plane_rotation(side * _u(rng, 10, 30))
    res = _blob(cv, c, semi, rot, _Shape.random(rng, 0.05))
    if res is None:
      continue
    sl, d = res
    cv.paint(sl, d, [hu_kidney + 8.0 * cv.noise(sl, 1.5)])
    res = _blob(cv, c, semi * 0.68, rot)
    if res:
      cv.paint(res[0], res[1], [_u(rng, 70, 100)])
    res = _blob(cv, c + np.array([0, 2.0, -side * 5.0]), semi * np.array([0.5, 0.3, 0.35]), rot)
    if res:
      cv.paint(res[0], res[1], [hu_fat + 20])

  # Great vessels.
  ao_y, ao_x = vb_y + r_vb + _u(rng, 4, 6), x0 - _u(rng, 3, 7)
  ivc_y, ivc_x = vb_y + r_vb + _u(rng, 3, 6), x0 + _u(rng, 12, 16)
  res = _tube(cv, along_z(ao_y, ao_x), _u(rng, 5, 6.5))
  cv.paint(*res, [hu_vessel + _u(rng, 0, 40)])
  res = _blob(cv, (0.0, ivc_y, ivc_x), (400.0, _u(rng, 4.5, 5.5), _u(rng, 6, 8)))
  if res:
    cv.paint(res[0], res[1], [hu_liver + _u(rng, -10, 10)])

  # Spleen (left posterior, follows the wall, crescent-like).
  spc = np.array([zs - 4.0 + _u(rng, -4, 4), y0 + _u(rng, -16, -9), x0 - _u(rng, 27, 31)])
  sp_semi = (_u(rng, 22, 27), _u(rng, 18, 22), _u(rng, 9, 11.5))
  sp_rot = _in_plane_rotation(_u(rng, -40, -15)) @ _rotation(rng, (0, 15, 15))
  spl = _blob(cv, spc, sp_semi, sp_rot, _Shape.random(rng, 0.08),
              _Warp.random(rng, 1.5, 40.0), pad_mm=4.0)

  # Pancreas centreline: head (right, by the duodenum) -> neck (in front of
  # the aorta) -> body -> tail (towards the splenic hilum).
  zp = zs - 22.0 + _u(rng, -3, 3)
  ctrl = np.array([
      [zp - 9, vb_y + 18, x0 + 15], [zp - 3, vb_y + 22, x0 + 10],
      [zp, ao_y + 12, x0 - 1], [zp + 4, ao_y + 9, x0 - 14],
      [zp + 7, vb_y + 6, x0 - 26]]) + rng.normal(0, 1.8, (5, 3))
  p_pts = _spline(ctrl, 4)
  rr = np.array([_u(rng, 7, 8.5), _u(rng, 6.5, 8), _u(rng, 5.5, 6.5), _u(rng, 5.3, 6.3),
                 _u(rng, 5, 6)])
  p_rad = np.interp(np.linspace(0, 4, len(p_pts)), np.arange(5), rr)

  # Splenic vein behind the pancreas, SMA in front of the aorta; duodenum
  # curving around the pancreatic head.
  sv = p_pts.copy()
  sv[:, 1] -= p_rad + 2.5
  res = _tube(cv, sv[len(sv) // 3:], _u(rng, 2.5, 3.3))
  if res:
    cv.paint(*res, [hu_vessel])
  sma = np.array([[zp + 10, ao_y + 4, ao_x + 1], [zp - 10, ao_y + 9, ao_x + 2],
                  [zp - 40, ao_y + 14, ao_x + 3]])
  res = _tube(cv, sma, 3.0)
  if res:
    cv.paint(*res, [hu_vessel + 20])
  duo = _spline(np.array([[zp + 6, ctrl[1, 1] + 4, ctrl[1, 2] + 14],
                          [zp - 6, ctrl[1, 1], ctrl[1, 2] + 15],
                          [zp - 16, ctrl[0, 1] - 2, ctrl[0, 2] + 6],
                          [zp - 20, ctrl[0, 1] - 4, x0 - 5]]), 4)
  res = _tube(cv, duo, _u(rng, 5, 6.5))
  if res:
    sl, d = res
    cv.paint(sl, d, [hu_bowel])
    cv.paint(sl, d + 2.0 / sp[1], [_u(rng, -5, 30)])

  # Solid organs, each behind a one-voxel fat plane so that its outline is
  # visible where it touches tissue of the same density.
  def organ(res, values, label, clip=True):
    if res is None:
      return
    sl, d = res
    if clip:
      d = _clip_to(sl, d, d_cav, 1.5 / sp[1])
    cv.paint(sl, d - 1.2, [hu_fat + 15.0], label=0)
    cv.paint(sl, d, values(sl), label=label)
    return sl, d

  organ(spl, lambda sl: [hu_spleen + 3.0 * cv.noise(sl, 2.0)], lab["spleen"])

  lc = np.array([zs + _u(rng, -4, 4), y0 + _u(rng, 0, 8), x0 + _u(rng, 17, 23)])
  l_semi = np.array([_u(rng, 26, 33), _u(rng, 24, 29), _u(rng, 25, 30)])
  l_rot = _rotation(rng, (12, 8, 8))
  l_shape = _Shape.random(rng, 0.07)
  l_shape.lin = (l_shape.lin[0] - 0.08, l_shape.lin[1], l_shape.lin[2] + 0.12)
  lres = organ(_blob(cv, lc, l_semi, l_rot, l_shape, _Warp.random(rng, 2.0, 50.0),
                     pad_mm=4.0),
               lambda sl: [hu_liver + 7.0 * cv.noise(sl, 2.5) + 4.0 * cv.noise(sl, 1.0)],
               lab["liver"])
  if lres:
    lsl, ld = lres
    # Portal / hepatic vessel tree, part of the liver label (as in MSD).
    hilum = lc + np.array([-0.3 * l_semi[0], -0.25 * l_semi[1], -0.35 * l_semi[2]])
    v_hu = hu_liver + _u(rng, 45, 75)
    for _ in range(int(rng.integers(7, 11))):
      dirv = rng.normal(0, 1, 3) * np.array([0.8, 0.8, 1.0]) + np.array([0.3, 0.2, 0.6])
      dirv /= np.linalg.norm(dirv)
      end = hilum + dirv * _u(rng, 0.6, 1.0) * l_semi
      pts = _curve(hilum, end, rng, 4.0, n=6)
      res = _tube(cv, pts, np.linspace(_u(rng, 3.0, 4.0), 1.6, len(pts)))
      if res is None:
        continue
      sl, d = res
      # Keep the vessels inside the liver envelope.
      inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, lsl))
      if any(s.stop <= s.start for s in inter):
        continue
      dv = np.maximum(d[_sub(sl, inter)], ld[_sub(lsl, inter)] + 1.0)
      cv.paint(inter, dv, [v_hu], label=lab["liver"])
    # Gallbladder under the liver: fluid, not liver.
    gc = lc + np.array([-0.55 * l_semi[0], 0.45 * l_semi[1], -0.25 * l_semi[2]])
    res = _blob(cv, gc, (_u(rng, 8, 12), _u(rng, 5, 7), _u(rng, 5, 7)),
                _rotation(rng, (20, 20, 20)))
    if res:
      cv.paint(res[0], res[1] - 1.0, [hu_fat + 15.0], label=0)
      cv.paint(res[0], res[1], [_u(rng, 0, 20)], label=0)

  # Pancreas last: nothing may cut the thin organ into pieces.
  res = _tube(cv, p_pts, p_rad)
  if res:
    sl = res[0]
    # Lobulated parenchyma: fat clefts between lobules (dark speckles).
    lob = cv.noise(sl, 1.3)
    val = hu_panc + 5.0 * lob - np.clip(lob - 1.0, 0, None) * _u(rng, 60, 90)
    organ(res, lambda sl: [val], lab["pancreas"], clip=False)

  # Scanner: blur, correlated noise, HU range.
  img = _psf(cv.image[0], (0.4, 0.6, 0.6))
  noise = rng.standard_normal(img.shape, dtype=np.float32)
  noise = ndimage.gaussian_filter(noise, (0.0, 0.7, 0.7), truncate=2.5)
  noise *= _u(rng, 6, 12) / (float(noise.std()) + 1e-6)
  img += noise
  np.clip(img, -1024.0, 3071.0, out=img)
  cv.image[0] = img


# --------------------------------------------------------------------------
# Cardiac bSSFP MRI: left atrium among other blood pools.


def _build_heart(cv: _Canvas) -> None:
  """Cardiac bSSFP-like MRI; label 1 = left atrium body + pulmonary-vein stubs.

  All blood pools are bright with overlapping means; the left atrium differs by
  its slow-flow signal mottle, its four pulmonary-vein arms, its thin wall and
  its place (posterior, next to the descending aorta and spine).
  """
  rng = cv.rng
  sp = cv.sp
  full = cv.full()
  zfov = cv.shape[0] * sp[0] / 2
  blood = 1.0
  # Relative to blood (1.0). Fat is kept well below the atrial blood so the
  # two stay apart under the bias field.
  myo, fat, lung, muscle = _u(rng, 0.26, 0.34), _u(rng, 0.5, 0.58), 0.06, 0.28

  y0, x0 = _u(rng, -2, 2), _u(rng, -3, 3)
  ay, ax = _u(rng, 34, 38), _u(rng, 48, 54)
  d_body = _ellipse_z(cv, y0, x0, ay, ax, ay_post=0.9 * ay)
  tex = cv.noise(full, 1.5)
  cv.paint(full, d_body, [fat + 0.03 * tex])
  t_fat, t_mus = _u(rng, 3, 5), _u(rng, 3, 4)
  cv.paint(full, d_body + t_fat / sp[1], [muscle + 0.03 * tex])
  d_cav = d_body + (t_fat + t_mus) / sp[1]
  cv.paint(full, d_cav, [lung + 0.02 * tex])

  # Lung vessels: small bright dots and short branches.
  for _ in range(int(rng.integers(14, 22))):
    c = np.array([_u(rng, -zfov, zfov), y0 + _u(rng, -0.7, 0.7) * ay,
                  x0 + _u(rng, -1, 1) * ax])
    pts = _curve(c, c + rng.normal(0, 8, 3), rng, 2.0, n=4)
    res = _tube(cv, pts, _u(rng, 0.8, 1.6))
    if res:
      sl, d = res
      cv.paint(sl, _clip_to(sl, d, d_cav), [_u(rng, 0.35, 0.7)])

  # Spine: vertebral body, bright CSF canal (bSSFP), posterior arch.
  r_vb = _u(rng, 6, 7)
  vb_y = y0 - 0.9 * ay + r_vb + _u(rng, 8, 10)
  zline = np.array([-zfov - 10, zfov + 10])

  def along_z(yc, xc):
    return np.stack([zline, np.full(2, yc), np.full(2, xc)], axis=1)

  can_y = vb_y - r_vb - 3.0
  for side in (-1, 1):
    res = _blob(cv, (0.0, can_y - 1.0, x0 + side * 10.0), (200.0, 6.0, 7.0))
    if res:
      cv.paint(res[0], res[1], [muscle])
  cv.paint(*_tube(cv, along_z(can_y, x0), 5.5), [0.12])
  cv.paint(*_tube(cv, along_z(can_y, x0), 3.0), [_u(rng, 0.9, 1.0)])
  sl, d = _tube(cv, along_z(vb_y, x0), r_vb)
  cv.paint(sl, d, [0.12])
  cv.paint(sl, d + 1.2, [_u(rng, 0.45, 0.6) + 0.04 * cv.noise(sl, 1.0)])

  # Heart frame: centre, small random rotation; offsets below are (z, y, x) mm.
  hc = np.array([_u(rng, -6, 0), y0 + _u(rng, 8, 12), x0 + _u(rng, -5, -1)])
  hr = _rotation(rng, (12, 8, 8))

  def at(off):
    return hc + hr @ np.asarray(off, np.float64)

  # Pericardium / myocardium mass with an epicardial fat rim.
  res = _blob(cv, at((0, 0, 0)), (24.0, 21.0, 27.0), hr, _Shape.random(rng, 0.05),
              pad_mm=4.0)
  sl, d = res
  d = _clip_to(sl, d, d_cav, 1.0)
  cv.paint(sl, d - 2.0, [fat + 0.03 * cv.noise(sl, 1.5)])
  cv.paint(sl, d, [myo + 0.02 * cv.noise(sl, 1.5)])

  # Descending aorta, left of the spine, behind the left atrium.
  dao_y, dao_x = vb_y + r_vb + _u(rng, 3, 5), x0 - _u(rng, 8, 11)
  res = _tube(cv, along_z(dao_y, dao_x), _u(rng, 5, 6))
  cv.paint(res[0], res[1] - 1.3, [fat])
  cv.paint(*res, [blood + _u(rng, -0.04, 0.04) + 0.03 * cv.noise(res[0], 1.5)])

  def pool(res, halo, rough=0.03):
    if res is None:
      return
    sl, d = res
    cv.paint(sl, d - halo, [myo])
    cv.paint(sl, d, [blood + _u(rng, -0.04, 0.04) + rough * cv.noise(sl, 1.5)])

  # Left ventricle (thick wall), right ventricle, right atrium, outflow tracts.
  lv_rot = hr @ _in_plane_rotation(_u(rng, -45, -25))
  pool(_blob(cv, at((-5, 2, -11)), (10.0, 8.0, 12.0), lv_rot, _Shape.random(rng, 0.06),
             pad_mm=6.0), 4.0)
  rv_rot = hr @ _in_plane_rotation(_u(rng, -35, -20))
  pool(_blob(cv, at((-4, 12, 6)), (10.0, 5.5, 13.0), rv_rot, _Shape.random(rng, 0.08),
             pad_mm=3.0), 1.3)
  pool(_blob(cv, at((2, -1, 18)), (10.0, 8.0, 8.0), hr, _Shape.random(rng, 0.06),
             pad_mm=3.0), 1.3)
  aa = np.array([at((2, 4, 0)), at((14, 3, 2)), hc + np.array([40.0, 2.0, 4.0])])
  pool(_tube(cv, aa, _u(rng, 6, 7)), 1.3)
  pa = np.array([at((-2, 14, -5)), at((10, 13, -8)), at((18, 4, -15)), at((20, -2, -24))])
  pool(_tube(cv, pa, np.array([6.0, 6.0, 5.0, 4.0])), 1.3)

  # Left atrium (+ four pulmonary-vein stubs), drawn last: halos first so the
  # veins do not cut the atrium, then the blood with its slow-flow mottle.
  la_c = at((_u(rng, 6, 9), _u(rng, -12, -9), _u(rng, -3, 0)))
  la_semi = (_u(rng, 9, 11), _u(rng, 6.5, 8), _u(rng, 11.5, 14))
  la_rot = hr @ _rotation(rng, (12, 8, 8))
  parts = [_blob(cv, la_c, la_semi, la_rot, _Shape.random(rng, 0.07),
                 _Warp.random(rng, 1.0, 30.0), pad_mm=3.0)]
  for sz in (-1, 1):
    for sx in (-1, 1):
      dirv = np.array([0.45 * sz + _u(rng, -0.15, 0.15), _u(rng, -0.7, -0.4),
                       sx * _u(rng, 0.8, 1.0)])
      dirv /= np.linalg.norm(dirv)
      start = la_c + la_rot @ (dirv * np.asarray(la_semi) * 0.6)
      end = start + dirv * _u(rng, 11, 16)
      parts.append(_tube(cv, np.stack([start, (start + end) / 2, end]),
                         np.array([_u(rng, 3.3, 4), 3.2, _u(rng, 2.6, 3.0)])))
  parts = [p for p in parts if p is not None]
  for sl, d in parts:
    cv.paint(sl, d - 1.3, [myo], label=0)
  # Slow, swirling atrial flow: a little darker and mottled.
  la_mean = blood * _u(rng, 0.78, 0.83)
  la_amp = _u(rng, 0.08, 0.1)
  for sl, d in parts:
    cv.paint(sl, d, [la_mean + la_amp * cv.noise(sl, 1.6)], label=1)

  # Scanner: blur, coil bias, gain, Rician noise.
  gain = _u(rng, 300, 600)
  img = _psf(cv.image[0], (0.5, 0.6, 0.6))
  img *= _bias_field(cv, 0.15) * gain
  cv.image[0] = _rician(cv, img, gain * _u(rng, 0.02, 0.035))


# --------------------------------------------------------------------------
# Hippocampus T1 MRI: head (anterior) and body/tail (posterior).


def _build_hippocampus(cv: _Canvas) -> None:
  """T1-like crop of the medial temporal lobe; labels 1 = head, 2 = body+tail.

  Hippocampus, amygdala and cortex share grey-matter intensity; the
  hippocampus is a solid curved tube (no white-matter core, unlike gyri) with
  the dark temporal horn above it; its head is thick and bumpy, and a shallow
  dark cleft marks the head/body border.
  """
  rng = cv.rng
  full = cv.full()
  wm, gm, csf = _u(rng, 0.78, 0.84), _u(rng, 0.44, 0.48), _u(rng, 0.1, 0.16)
  cv.image[0] = wm + 0.02 * cv.noise(full, 2.0)

  rot = _rotation(rng, (10, 8, 8))
  shift = rng.uniform(-2.5, 2.5, 3)

  def tf(p):
    return (rot @ np.asarray(p, np.float64).T).T + shift

  # Hippocampal centreline (posterior tail -> anterior head) and radii.
  ctrl = np.array([[8, -19, -4], [4, -11, -1], [1, -3, 0], [-1, 5, 1], [-3, 11, 2],
                   [-4, 15, 1]], np.float64) + rng.normal(0, 1.0, (6, 3))
  ctrl = tf(ctrl)
  radii_c = np.array([_u(rng, 3.0, 3.4), _u(rng, 3.4, 3.8), _u(rng, 3.6, 4.0),
                      _u(rng, 4.8, 5.4), _u(rng, 5.8, 6.6), _u(rng, 4.4, 5.0)])
  n_per = 4
  pts = _spline(ctrl, n_per)
  radii = np.interp(np.arange(len(pts)) / n_per, np.arange(6), radii_c)
  seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
  cum = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
  t_split = float(cum[3 * n_per - 2]) + _u(rng, -0.02, 0.02)
  up = rot @ np.array([1.0, 0.0, 0.0])
  lat = rot @ np.array([0.0, 0.0, 1.0])

  # Cortex gyri (GM with a WM core) and sulcal CSF around the hippocampus.
  for k in range(int(rng.integers(5, 8))):
    side = rng.choice(3)
    if side == 0:     # inferior
      c = np.array([_u(rng, -22, -12), 0.0, _u(rng, -20, 20)])
    elif side == 1:   # lateral
      c = np.array([_u(rng, -15, 12), 0.0, _u(rng, 12, 22)])
    else:             # superior
      c = np.array([_u(rng, 14, 22), 0.0, _u(rng, -20, 20)])
    c = c + shift
    p0 = c + np.array([_u(rng, -4, 4), -30.0, _u(rng, -4, 4)])
    p1 = c + np.array([_u(rng, -4, 4), 30.0, _u(rng, -4, 4)])
    g = _curve(p0, p1, rng, 4.0, n=8)
    r = _u(rng, 3.3, 4.5)
    res = _tube(cv, g, r + 1.1)
    if res:
      cv.paint(*res, [csf + 0.1])
    res = _tube(cv, g, r)
    if res:
      cv.paint(res[0], res[1], [gm + _u(rng, -0.02, 0.02) + 0.02 * cv.noise(res[0], 1.5)])
    res = _tube(cv, g, _u(rng, 1.1, 1.6))
    if res:
      cv.paint(*res, [wm - 0.03])

  # Parahippocampal gyrus below (GM around a WM core), ambient cistern medial,
  # temporal horn above-lateral.
  ph = pts[: 3 * n_per + 1] - up * (radii[: 3 * n_per + 1, None] + _u(rng, 4.5, 5.5))
  res = _tube(cv, ph, _u(rng, 3.2, 3.8))
  if res:
    cv.paint(res[0], res[1], [gm + 0.02 * cv.noise(res[0], 1.5)])
  res = _tube(cv, ph, 1.3)
  if res:
    cv.paint(*res, [wm - 0.02])
  amb = pts - lat * (radii[:, None] + _u(rng, 2.5, 3.5))
  res = _tube(cv, amb[: 3 * n_per + 1], _u(rng, 2.0, 2.8))
  if res:
    cv.paint(*res, [csf])
  horn = pts[n_per:] + up * (0.7 * radii[n_per:, None] + 1.5) + lat * (0.7 * radii[n_per:, None])
  res = _tube(cv, horn, _u(rng, 1.6, 2.2))
  if res:
    cv.paint(*res, [csf])

  # Amygdala: GM blob antero-superior to the head.
  am_c = ctrl[-1] + up * _u(rng, 8, 10) + rot @ np.array([0.0, _u(rng, 1, 4), 0.0])
  res = _blob(cv, am_c, (_u(rng, 5.5, 6.5), _u(rng, 6, 7.5), _u(rng, 6, 7.5)), rot,
              _Shape.random(rng, 0.06))
  if res:
    # More myelinated fibres than cortex: a little brighter on T1.
    cv.paint(res[0], res[1], [gm + _u(rng, 0.18, 0.21) + 0.012 * cv.noise(res[0], 1.5)])

  # Hippocampus with its digitations; a thin WM (alveus) halo separates it.
  parts = [_tube(cv, pts, radii, with_param=True)]
  head_pts = pts[3 * n_per:]
  for _ in range(3):
    i = int(rng.integers(0, len(head_pts) - 1))
    c = head_pts[i] + up * radii[3 * n_per + i] * 0.8 + lat * _u(rng, -2, 2)
    res = _blob(cv, c, (2.3, 2.3, 2.3))
    if res:
      parts.append(res + (np.ones_like(res[1]),))
  for sl, d, _ in parts:
    cv.paint(sl, d - 1.2, [wm + 0.02], label=0)
  # Head: slightly brighter and mottled by its digitations; body/tail: smooth.
  head_gm, body_gm = gm + _u(rng, 0.11, 0.14), gm + _u(rng, 0.06, 0.08)
  for sl, d, prm in parts:
    val = np.where(prm >= t_split, head_gm + 0.03 * cv.noise(sl, 1.0),
                   body_gm + 0.012 * cv.noise(sl, 1.5))
    # Dark cleft at the head/body border, in the outer part of the tube.
    cleft = (np.abs(prm - t_split) * seg.sum() < 0.8) & (d > -2.5)
    val = np.where(cleft, val - 0.15, val)
    cv.paint(sl, d, [val])
    lab = cv.label[sl]
    inside = d < 0
    lab[inside & (prm >= t_split)] = 1
    lab[inside & (prm < t_split)] = 2

  gain = _u(rng, 200, 500)
  img = _psf(cv.image[0], 0.5)
  img *= _bias_field(cv, 0.1) * gain
  cv.image[0] = _rician(cv, img, gain * _u(rng, 0.02, 0.03))


# --------------------------------------------------------------------------
# Prostate T2 + ADC MRI.


def _build_prostate(cv: _Canvas) -> None:
  """Pelvic MRI, channels (T2, ADC); labels 1 = peripheral, 2 = transition zone.

  T2 is in arbitrary units; ADC in 1e-6 mm²/s. The PZ is a bright-T2,
  high-ADC shell behind and beside the TZ core, which is intermediate and
  nodular; fat is bright on T2 only, urine and seminal vesicles are bright on
  both, so no single channel threshold isolates either zone.
  """
  rng = cv.rng
  sp = cv.sp
  full = cv.full()
  zfov = cv.shape[0] * sp[0] / 2
  # (T2, ADC) of each tissue.
  fat = (_u(rng, 0.7, 0.8), _u(rng, 200, 350))
  muscle = (_u(rng, 0.18, 0.26), _u(rng, 1300, 1500))
  t2_pz, adc_pz = _u(rng, 0.8, 0.92), _u(rng, 1650, 2000)
  t2_tz, adc_tz = _u(rng, 0.4, 0.5), _u(rng, 1100, 1400)
  cv.image[0] = fat[0] + 0.03 * cv.noise(full, 2.0)
  cv.image[1] = fat[1]

  zg = _u(rng, -8, 8)
  ry = _u(rng, -25, -21)
  rr = _u(rng, 10, 12.5)
  gsemi = np.array([_u(rng, 17, 22), _u(rng, 14, 17), _u(rng, 19, 23)])
  gc = np.array([zg, ry + rr + gsemi[1] + _u(rng, 2, 4), _u(rng, -3, 3)])
  zline = np.linspace(-zfov - 10, zfov + 10, 5)

  # Side walls (obturator internus), pubic bones, femoral heads.
  for side in (-1, 1):
    res = _blob(cv, (0.0, _u(rng, -5, 8), side * _u(rng, 32, 36)),
                (80.0, _u(rng, 22, 28), _u(rng, 5, 7)), _in_plane_rotation(side * _u(rng, 5, 15)))
    if res:
      cv.paint(res[0], res[1], [muscle[0] + 0.02 * cv.noise(res[0], 1.5), muscle[1]])
    c = np.array([zg - _u(rng, 0, 10), gc[1] + gsemi[1] + _u(rng, 9, 13), side * _u(rng, 6, 9)])
    res = _blob(cv, c, (_u(rng, 16, 22), _u(rng, 6, 8), _u(rng, 5, 7)),
                _rotation(rng, (10, 10, 10)))
    if res:
      cv.paint(res[0], res[1], [0.08, 350.0])
      cv.paint(res[0], res[1] + 1.3, [_u(rng, 0.5, 0.6) + 0.04 * cv.noise(res[0], 1.0), 500.0])
    res = _blob(cv, (zg + _u(rng, 25, 35), _u(rng, -5, 5), side * _u(rng, 44, 48)),
                (22.0, 22.0, 22.0))
    if res:
      cv.paint(res[0], res[1], [0.08, 350.0])
      cv.paint(res[0], res[1] + 1.5, [_u(rng, 0.5, 0.6) + 0.04 * cv.noise(res[0], 1.0), 500.0])
    # Levator ani beside the rectum below the gland.
    res = _blob(cv, (zg - gsemi[0] - _u(rng, 5, 15), ry + _u(rng, 0, 5),
                     side * (rr + _u(rng, 4, 7))),
                (_u(rng, 18, 25), _u(rng, 7, 10), _u(rng, 2.5, 4)))
    if res:
      cv.paint(res[0], res[1], [muscle[0], muscle[1]])

  # Rectum: muscular wall, lumen with gas, fluid or a coil balloon.
  rpts = np.stack([zline, ry + rng.normal(0, 2, 5), rng.normal(0, 2, 5)], axis=1)
  res = _tube(cv, rpts, rr)
  sl, d = res
  cv.paint(sl, d, [0.3 + 0.02 * cv.noise(sl, 1.5), 1300.0])
  lum = [(0.04, 700.0), (_u(rng, 0.75, 0.9), 2200.0), (0.08, 300.0)][int(rng.integers(0, 3))]
  cv.paint(sl, d + 3.5 / sp[1], [lum[0] + 0.02 * cv.noise(sl, 2.0),
                                 lum[1] + 150 * cv.noise(sl, 2.0)])

  # Bladder above the gland: thin wall, urine very bright on both channels.
  bsemi = (_u(rng, 24, 32), _u(rng, 20, 26), _u(rng, 25, 32))
  bc = np.array([zg + gsemi[0] + bsemi[0] * _u(rng, 0.6, 0.85), gc[1] + _u(rng, 2, 8),
                 _u(rng, -4, 4)])
  res = _blob(cv, bc, bsemi, _rotation(rng, (10, 10, 10)), _Shape.random(rng, 0.06))
  if res:
    cv.paint(res[0], res[1], [0.3, 1500.0])
    cv.paint(res[0], res[1] + 2.5 / sp[1], [_u(rng, 0.95, 1.05), _u(rng, 2700, 3000)])

  # Seminal vesicles: paired convoluted tubes above and behind the gland,
  # fluid (bright T2, high ADC) with dark septations.
  for side in (-1, 1):
    p0 = gc + np.array([0.5 * gsemi[0], -0.45 * gsemi[1], side * 4.0])
    p1 = p0 + np.array([_u(rng, 10, 16), _u(rng, -8, -3), side * _u(rng, 18, 24)])
    pts = _curve(p0, p1, rng, 3.0, n=8, harmonics=3)
    res = _tube(cv, pts, _u(rng, 4.5, 5.5))
    if res:
      sl, d = res
      cv.paint(sl, d, [0.4, 1400.0])
      sept = cv.noise(sl, 1.2)
      cv.paint(sl, d + 1.5 / sp[1], [np.where(sept > 0.8, 0.45, _u(rng, 0.8, 0.9)),
                                     np.where(sept > 0.8, 1500.0, _u(rng, 1800, 2100))])

  # Neurovascular bundles: flow voids postero-lateral to the gland.
  for side in (-1, 1):
    c = gc + np.array([0.0, -0.55 * gsemi[1], side * 0.85 * gsemi[2]])
    res = _tube(cv, np.stack([c - [gsemi[0], 0, 0], c + [gsemi[0], 0, 0]]), _u(rng, 1.6, 2.2))
    if res:
      cv.paint(*res, [0.15, 1500.0])

  # Gland = PZ everywhere, then the TZ core (anterior, clipped to the gland)
  # behind its dark pseudocapsule. Capsule: dark one-voxel rim.
  g_rot = _rotation(rng, (12, 10, 6))
  g_shape = _Shape.random(rng, 0.05)
  g_shape.lin = (g_shape.lin[0] + 0.08, g_shape.lin[1] + 0.06, g_shape.lin[2])  # wider base
  sl, dg = _blob(cv, gc, gsemi, g_rot, g_shape, _Warp.random(rng, 1.0, 30.0), pad_mm=5.0)
  cv.paint(sl, dg - 1.1, [0.28, 1300.0], label=0)
  pz_tex = cv.noise(sl, 1.0)
  cv.paint(sl, dg, [t2_pz + 0.04 * pz_tex, adc_pz + 80.0 * pz_tex], label=1)
  tc = gc + g_rot @ np.array([_u(rng, 0.1, 0.2) * gsemi[0], _u(rng, 0.3, 0.4) * gsemi[1], 0.0])
  tsemi = gsemi * np.array([_u(rng, 0.62, 0.72), _u(rng, 0.68, 0.78), _u(rng, 0.6, 0.68)])
  res = _blob(cv, tc, tsemi, g_rot, _Shape.random(rng, 0.05))
  tsl, dt = res
  inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, tsl))
  dt = np.maximum(dt[_sub(tsl, inter)], dg[_sub(sl, inter)] + 0.8)
  cv.paint(inter, dt - 1.0, [0.32, 1300.0], label=1)
  # Benign nodular texture: large blobs of brighter / darker signal.
  nod = cv.noise(inter, 2.5)
  fine = cv.noise(inter, 1.0)
  cv.paint(inter, dt, [t2_tz + 0.08 * nod + 0.03 * fine, adc_tz + 90.0 * nod], label=2)

  # Scanner. T2: blur, coil bias (bright near the rectum), gain, Rician noise.
  gain = _u(rng, 200, 500)
  t2 = _psf(cv.image[0], (0.3, 0.6, 0.6))
  z, y, x = cv.grid(full)
  coil = 1.0 + _u(rng, 0.2, 0.5) * np.exp(-((y - ry) ** 2 + x ** 2) / (2 * 25.0 ** 2))
  t2 *= _bias_field(cv, 0.12) * coil * gain
  cv.image[0] = _rician(cv, t2, gain * _u(rng, 0.025, 0.04))
  # ADC: computed from lower-resolution DWI, so blurrier, Gaussian noise.
  adc = _psf(cv.image[1], (0.5, 1.0, 1.0))
  adc += _u(rng, 60, 110) * rng.standard_normal(adc.shape, dtype=np.float32)
  np.clip(adc, 0.0, None, out=adc)
  cv.image[1] = adc


_BUILDERS = {
    "heart": _build_heart,
    "liver": lambda cv: _build_abdomen(cv, "liver"),
    "hippocampus": _build_hippocampus,
    "prostate": _build_prostate,
    "pancreas": lambda cv: _build_abdomen(cv, "pancreas"),
    "spleen": lambda cv: _build_abdomen(cv, "spleen"),
}
# Initial intensities (per channel) before any structure is painted.
_FILLS = {"heart": (0.0,), "liver": (-1000.0,), "hippocampus": (0.0,),
          "prostate": (0.0, 0.0), "pancreas": (-1000.0,), "spleen": (-1000.0,)}


# --------------------------------------------------------------------------
# Public API.


def _affine(shape, spacing) -> np.ndarray:
  """RAS+ affine for (z, y, x)-ordered arrays; volume centre at world 0."""
  sz, sy, sx = (float(s) for s in spacing)
  d, h, w = shape
  a = np.zeros((4, 4))
  a[0, 2], a[1, 1], a[2, 0], a[3, 3] = sx, sy, sz, 1.0
  a[:3, 3] = -a[:3, :3] @ (np.array([d, h, w], np.float64) - 1) / 2
  return a


def generate_case(domain: str | SyntheticDomain, seed: int,
                  shape: Sequence[int] | None = None) -> dict:
  """Generates one case.

  Args:
    domain: a name in DOMAINS or a SyntheticDomain with one of those names.
    seed: non-negative int; the case is a pure function of (domain, seed, shape).
    shape: (D, H, W) voxels, or None for the domain default. The field of view
      (mm) stays the same: spacing becomes domain.spacing·default/shape.

  Returns:
    {'image': float32 (D, H, W, C), 'label': uint8 (D, H, W),
     'spacing': float64 (3,) mm (z, y, x), 'affine': float64 (4, 4) RAS+
     (see module docstring), 'case_id': str '<domain>_<seed>'}.
  """
  dom = get_domain(domain)
  seed = int(seed)
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}.")
  shape = dom.shape if shape is None else tuple(int(n) for n in shape)
  if len(shape) != 3 or min(shape) < 16:
    raise ValueError(f"shape {shape} must be 3 ints, each >= 16 (D, H, W).")
  spacing = np.array([s * n0 / n for s, n0, n in zip(dom.spacing, dom.shape, shape)],
                     np.float64)
  # The domain name enters the entropy too: equal seeds of different domains
  # give unrelated cases.
  rng = np.random.default_rng([seed, zlib.crc32(dom.name.encode())])
  cv = _Canvas(shape, spacing, _FILLS[dom.name], rng)
  _BUILDERS[dom.name](cv)
  image = np.ascontiguousarray(np.moveaxis(cv.image, 0, -1), dtype=np.float32)
  return {
      "image": image,
      "label": cv.label,
      "spacing": spacing,
      "affine": _affine(shape, spacing),
      "case_id": f"{dom.name}_{seed}",
  }


def generate_split(domain: str | SyntheticDomain, split: str, base_seed: int = 0,
                   num_cases: int | None = None,
                   shape: Sequence[int] | None = None) -> Iterator[dict]:
  """Yields the cases of `split` ('train' or 'validation') in order.

  Seeds come from `case_seed`, so they are deterministic and disjoint between
  splits, domains and base seeds.

  Args:
    domain: name or SyntheticDomain.
    split: 'train' or 'validation'.
    base_seed: selects an independent copy of the benchmark.
    num_cases: default domain.num_train / domain.num_validation.
    shape: optional (D, H, W), see `generate_case`.
  """
  dom = get_domain(domain)
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {list(SPLITS)}.")
  if num_cases is None:
    num_cases = dom.num_train if split == "train" else dom.num_validation
  # Validate eagerly (before the first next()).
  seeds = [case_seed(dom, split, i, base_seed) for i in range(int(num_cases))]

  def gen():
    for s in seeds:
      yield generate_case(dom, s, shape)
  return gen()


# --------------------------------------------------------------------------
# Difficulty check: the best global intensity threshold.


def _dice_curves(values: np.ndarray, mask: np.ndarray, thr: np.ndarray):
  """Dice of (values > t) and (values < t) vs mask for every sorted t: (2, T)."""
  v = values.ravel()
  m = mask.ravel()
  n_gt = float(m.sum())
  t = len(thr)
  # v > thr[j]  <=>  j < searchsorted(thr, v, 'left')
  i_gt = np.searchsorted(thr, v, side="left")
  cnt = np.bincount(i_gt, minlength=t + 1)
  tp = np.bincount(i_gt, weights=m, minlength=t + 1)
  pred_gt = np.cumsum(cnt[::-1])[::-1][1:]
  tp_gt = np.cumsum(tp[::-1])[::-1][1:]
  # v < thr[j]  <=>  j >= searchsorted(thr, v, 'right')
  i_lt = np.searchsorted(thr, v, side="right")
  cnt = np.bincount(i_lt, minlength=t + 1)
  tp = np.bincount(i_lt, weights=m, minlength=t + 1)
  pred_lt = np.cumsum(cnt)[:t]
  tp_lt = np.cumsum(tp)[:t]
  out = []
  for pred, inter in ((pred_gt, tp_gt), (pred_lt, tp_lt)):
    den = pred + n_gt
    out.append(np.where(den > 0, 2 * inter / np.maximum(den, 1), 1.0))
  return np.stack(out)


def threshold_baseline_dice(train_cases: Iterable[dict], val_cases: Iterable[dict],
                            num_classes: int, num_thresholds: int = 64,
                            normalize: bool = False) -> float:
  """Validation Dice of the best single global intensity threshold.

  For each foreground class, every (channel, direction in {>, <}, threshold)
  is scored by its mean Dice over the training cases; the best is applied to
  the validation cases. Candidate thresholds: `num_thresholds` percentiles
  (0.5..99.5) of the pooled training intensities plus as many of the pooled
  intensities inside that class, so the search is fine where it matters.

  Args:
    train_cases: dicts with 'image' (D, H, W, C) and 'label' (D, H, W).
    val_cases: same.
    num_classes: number of classes including background.
    num_thresholds: percentiles taken from each pool.
    normalize: z-score each case's channels first (as MRI pipelines do).

  Returns:
    Mean over foreground classes of the mean validation Dice.
  """
  def prep(cases):
    out = []
    for c in cases:
      img = np.asarray(c["image"], np.float32)
      if normalize:
        mu = img.mean(axis=(0, 1, 2), keepdims=True)
        sd = img.std(axis=(0, 1, 2), keepdims=True) + 1e-6
        img = (img - mu) / sd
      out.append((img, np.asarray(c["label"])))
    return out

  train, val = prep(train_cases), prep(val_cases)
  if not train or not val:
    raise ValueError("threshold_baseline_dice needs at least one train and one val case.")
  n_ch = train[0][0].shape[-1]
  pct = np.linspace(0.5, 99.5, num_thresholds)
  scores = []
  for cls in range(1, num_classes):
    best = (-1.0, 0, 0, 0.0)
    for ch in range(n_ch):
      # Subsample for the percentiles: speed, not precision, limits here.
      pool = np.concatenate([img[..., ch].ravel()[::7] for img, _ in train])
      fg = np.concatenate([img[..., ch][lab == cls] for img, lab in train])
      thr = np.percentile(pool, pct)
      if fg.size:
        thr = np.concatenate([thr, np.percentile(fg, pct)])
      thr = np.unique(thr)
      curves = np.mean([_dice_curves(img[..., ch], lab == cls, thr)
                        for img, lab in train], axis=0)
      direction, j = np.unravel_index(int(np.argmax(curves)), curves.shape)
      if curves[direction, j] > best[0]:
        best = (float(curves[direction, j]), ch, int(direction), float(thr[j]))
    _, ch, direction, t = best
    dices = []
    for img, lab in val:
      pred = img[..., ch] > t if direction == 0 else img[..., ch] < t
      gt = lab == cls
      den = pred.sum() + gt.sum()
      dices.append(1.0 if den == 0 else 2.0 * np.logical_and(pred, gt).sum() / den)
    scores.append(float(np.mean(dices)))
  return float(np.mean(scores))
