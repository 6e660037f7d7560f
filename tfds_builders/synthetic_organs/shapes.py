"""Signed-distance shapes in mm: deformed ellipsoids, elliptic cylinders, tubes, curves.

Structures are randomly deformed ellipsoids (`blob`: low-order
"spherical-harmonic" radius modulation `Shape` and smooth sinusoidal warps
`Warp`) and tubes of varying radius along smooth random curves (`tube`,
`curve`, `spline`), placed by the scenes with an anatomical location prior plus
per-case jitter in position, size and orientation.

Distances are returned in voxel units ("index space"), which is what a
one-voxel partial-volume ramp needs on anisotropic grids.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from tfds_builders.synthetic_organs.canvas import Canvas, uniform


def rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
  """Random rotation (3, 3) in the (z, y, x) frame.

  Args:
    rng: random generator.
    max_deg: maximum absolute angle about the (z, y, x) axes, degrees.
  """
  a, b, c = (math.radians(uniform(rng, -m, m)) for m in max_deg)
  rz = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)],
                 [0, math.sin(a), math.cos(a)]])
  ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0],
                 [-math.sin(b), 0, math.cos(b)]])
  rx = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0],
                 [0, 0, 1]])
  return rz @ ry @ rx


def in_plane_rotation(deg: float) -> np.ndarray:
  """Rotation (3, 3) about the z axis by `deg` degrees (mixes y and x)."""
  a = math.radians(deg)
  return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)],
                   [0, math.sin(a), math.cos(a)]])


@dataclasses.dataclass
class Shape:
  """Radius modulation r(n) = 1 + lin·n + nᵀ quad n + Σ amp (n·v)³ (|n| = 1)."""
  lin: tuple[float, float, float] = (0.0, 0.0, 0.0)
  quad: np.ndarray | None = None
  lobes: tuple[tuple[tuple[float, float, float], float], ...] = ()

  @staticmethod
  def random(rng: np.random.Generator, amp: float, lobes: int = 2) -> "Shape":
    """Random low-order modulation with terms of size ~`amp`."""
    lin = tuple(uniform(rng, -amp, amp) for _ in range(3))
    q = rng.uniform(-amp, amp, (3, 3))
    q = 0.5 * (q + q.T)
    q -= np.eye(3) * np.trace(q) / 3.0  # traceless: keeps the mean radius
    lb = []
    for _ in range(lobes):
      v = rng.standard_normal(3)
      v /= np.linalg.norm(v)
      lb.append((tuple(float(t) for t in v), uniform(rng, -amp, amp)))
    return Shape(lin, q, tuple(lb))

  def bound(self) -> float:
    """Upper bound of |r(n) - 1|."""
    b = sum(abs(t) for t in self.lin) + sum(abs(a) for _, a in self.lobes)
    if self.quad is not None:
      b += float(np.abs(self.quad).sum())
    return b

  def __call__(self, n):
    """r(n) for the unit-vector components n = (nz, ny, nx) (broadcastable arrays)."""
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
class Warp:
  """Smooth displacement p -> p + Σ_w amp_w sin(k_w·p + phase_w), mm."""
  waves: tuple[tuple[np.ndarray, np.ndarray, float], ...]

  @staticmethod
  def random(rng: np.random.Generator, amp_mm: float, wavelength_mm: float,
             n: int = 2) -> "Warp":
    """`n` random waves of amplitude `amp_mm` and wavelength `wavelength_mm`."""
    waves = []
    for _ in range(n):
      k = rng.standard_normal(3)
      k *= 2 * math.pi / wavelength_mm / np.linalg.norm(k)
      a = rng.standard_normal(3)
      a *= amp_mm / np.linalg.norm(a)
      waves.append((k, a, uniform(rng, 0, 2 * math.pi)))
    return Warp(tuple(waves))

  def bound(self) -> float:
    """Upper bound of the displacement length, mm."""
    return sum(float(np.linalg.norm(a)) for _, a, _ in self.waves)

  def __call__(self, p):
    """Displaced coordinates: p = [z, y, x] mm (broadcastable arrays) -> same."""
    out = list(p)
    for k, a, ph in self.waves:
      s = np.sin(float(k[0]) * p[0] + float(k[1]) * p[1] + float(k[2]) * p[2] + ph)
      for i in range(3):
        out[i] = out[i] + float(a[i]) * s
    return out


def blob(cv: Canvas, center, semi, rot=None, shape: Shape | None = None,
         warp: Warp | None = None, pad_mm: float = 0.0):
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


def ellipse_z(cv: Canvas, cy, cx, ay, ax, ay_post=None):
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


def tube(cv: Canvas, pts, radii, with_param: bool = False):
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


def curve(p0, p1, rng, wiggle_mm: float, n: int = 12, harmonics: int = 2):
  """Smooth random curve from p0 to p1: (n, 3) mm points."""
  p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
  t = np.linspace(0.0, 1.0, n)[:, None]
  pts = p0 + (p1 - p0) * t
  for h in range(1, harmonics + 1):
    pts = pts + rng.normal(0, wiggle_mm / h, 3) * np.sin(math.pi * h * t)
  return pts


def spline(ctrl, n_per: int = 4):
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


def sub_slices(sl_big, sl_small):
  """Slices of region `sl_small` inside the array of region `sl_big`."""
  return tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sl_small, sl_big))


def clip_to(sl, d, other_d_full, inset_vox: float = 0.0):
  """Intersects d (region sl) with {other_d_full + inset_vox < 0}.

  other_d_full: a z-invariant full-volume distance, (1, H, W).
  """
  return np.maximum(d, other_d_full[(slice(None),) + sl[1:]] + inset_vox)
