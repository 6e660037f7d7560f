"""Cardiac bSSFP MRI scene: the left atrium among other blood pools.

Intensities are relative to blood (1.0) until the scanner finish applies the
gain. `build_heart` runs the steps below in a fixed order: the random draws,
hence the cases, depend on it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfds_builders.synthetic_organs.canvas import Canvas, uniform
from tfds_builders.synthetic_organs.finishing import mri_scanner
from tfds_builders.synthetic_organs.shapes import (Shape, Warp, blob, clip_to, curve, ellipse_z,
                                                   in_plane_rotation, rotation, tube)


@dataclasses.dataclass(frozen=True)
class _Tissue:
  """The case's tissue intensities, relative to blood."""
  blood: float
  myo: float
  fat: float
  lung: float
  muscle: float


@dataclasses.dataclass(frozen=True)
class _Thorax:
  """The chest.

  Attributes:
    zfov: half the scan length, mm.
    y0, x0: centre of the chest cross-section, mm.
    ay, ax: its semi-axes, mm.
    zline: (2,) mm, the z range of the lines along z.
    d_cav: (1, H, W) signed distance to the thoracic cavity, voxels.
  """
  zfov: float
  y0: float
  x0: float
  ay: float
  ax: float
  zline: np.ndarray
  d_cav: np.ndarray

  def along_z(self, yc, xc) -> np.ndarray:
    """(2, 3) mm (z, y, x) end points of a line along z through (yc, xc)."""
    return np.stack([self.zline, np.full(2, yc), np.full(2, xc)], axis=1)


@dataclasses.dataclass(frozen=True)
class _Frame:
  """The heart frame: centre hc (3,) mm and rotation hr (3, 3)."""
  hc: np.ndarray
  hr: np.ndarray

  def at(self, off) -> np.ndarray:
    """(3,) mm scene point of the (z, y, x) offset `off`, mm, in the heart frame."""
    return self.hc + self.hr @ np.asarray(off, np.float64)


def build_heart(cv: Canvas) -> None:
  """Cardiac bSSFP-like MRI; label 1 = left atrium body + pulmonary-vein stubs.

  All blood pools are bright with overlapping means; the left atrium differs by
  its slow-flow signal mottle, its four pulmonary-vein arms, its thin wall and
  its place (posterior, next to the descending aorta and spine).
  """
  rng = cv.rng
  # Relative to blood (1.0). Fat is kept well below the atrial blood so the
  # two stay apart under the bias field.
  myo, fat, lung, muscle = uniform(rng, 0.26, 0.34), uniform(rng, 0.5, 0.58), 0.06, 0.28
  tis = _Tissue(blood=1.0, myo=myo, fat=fat, lung=lung, muscle=muscle)
  th = _paint_thorax(cv, tis)
  _paint_lung_vessels(cv, th)
  vb_y, r_vb = _paint_spine(cv, tis, th)
  # Heart frame: centre, small random rotation; offsets are (z, y, x) mm.
  hc = np.array([uniform(rng, -6, 0), th.y0 + uniform(rng, 8, 12), th.x0 + uniform(rng, -5, -1)])
  fr = _Frame(hc=hc, hr=rotation(rng, (12, 8, 8)))
  _paint_heart_mass(cv, tis, th, fr)
  _paint_descending_aorta(cv, tis, th, vb_y, r_vb)
  _paint_chambers(cv, tis, fr)
  _paint_left_atrium(cv, tis, fr)
  # Scanner: blur, coil bias, gain, Rician noise.
  mri_scanner(cv, (300, 600), (0.5, 0.6, 0.6), 0.15, (0.02, 0.035))


def _paint_thorax(cv: Canvas, tis: _Tissue) -> _Thorax:
  """Chest wall (fat, muscle) around the lungs."""
  rng = cv.rng
  sp = cv.sp
  full = cv.full()
  zfov = cv.shape[0] * sp[0] / 2
  y0, x0 = uniform(rng, -2, 2), uniform(rng, -3, 3)
  ay, ax = uniform(rng, 34, 38), uniform(rng, 48, 54)
  d_body = ellipse_z(cv, y0, x0, ay, ax, ay_post=0.9 * ay)
  tex = cv.noise(full, 1.5)
  cv.paint(full, d_body, [tis.fat + 0.03 * tex])
  t_fat, t_mus = uniform(rng, 3, 5), uniform(rng, 3, 4)
  cv.paint(full, d_body + t_fat / sp[1], [tis.muscle + 0.03 * tex])
  d_cav = d_body + (t_fat + t_mus) / sp[1]
  cv.paint(full, d_cav, [tis.lung + 0.02 * tex])
  return _Thorax(zfov=zfov, y0=y0, x0=x0, ay=ay, ax=ax, zline=np.array([-zfov - 10, zfov + 10]),
                 d_cav=d_cav)


def _paint_lung_vessels(cv: Canvas, th: _Thorax) -> None:
  """Lung vessels: small bright dots and short branches."""
  rng = cv.rng
  zfov, y0, x0, ay, ax = th.zfov, th.y0, th.x0, th.ay, th.ax
  for _ in range(int(rng.integers(14, 22))):
    c = np.array([uniform(rng, -zfov, zfov), y0 + uniform(rng, -0.7, 0.7) * ay,
                  x0 + uniform(rng, -1, 1) * ax])
    pts = curve(c, c + rng.normal(0, 8, 3), rng, 2.0, n=4)
    res = tube(cv, pts, uniform(rng, 0.8, 1.6))
    if res:
      sl, d = res
      cv.paint(sl, clip_to(sl, d, th.d_cav), [uniform(rng, 0.35, 0.7)])


def _paint_spine(cv: Canvas, tis: _Tissue, th: _Thorax) -> tuple[float, float]:
  """Spine: vertebral body, bright CSF canal (bSSFP), posterior arch.

  Returns:
    (vb_y, r_vb): y of the vertebral body centre and its radius, mm.
  """
  rng = cv.rng
  y0, x0, ay, along_z = th.y0, th.x0, th.ay, th.along_z
  r_vb = uniform(rng, 6, 7)
  vb_y = y0 - 0.9 * ay + r_vb + uniform(rng, 8, 10)
  can_y = vb_y - r_vb - 3.0
  for side in (-1, 1):
    res = blob(cv, (0.0, can_y - 1.0, x0 + side * 10.0), (200.0, 6.0, 7.0))
    if res:
      cv.paint(res[0], res[1], [tis.muscle])
  cv.paint(*tube(cv, along_z(can_y, x0), 5.5), [0.12])
  cv.paint(*tube(cv, along_z(can_y, x0), 3.0), [uniform(rng, 0.9, 1.0)])
  sl, d = tube(cv, along_z(vb_y, x0), r_vb)
  cv.paint(sl, d, [0.12])
  cv.paint(sl, d + 1.2, [uniform(rng, 0.45, 0.6) + 0.04 * cv.noise(sl, 1.0)])
  return vb_y, r_vb


def _paint_heart_mass(cv: Canvas, tis: _Tissue, th: _Thorax, fr: _Frame) -> None:
  """Pericardium / myocardium mass with an epicardial fat rim."""
  rng = cv.rng
  res = blob(cv, fr.at((0, 0, 0)), (24.0, 21.0, 27.0), fr.hr, Shape.random(rng, 0.05),
             pad_mm=4.0)
  sl, d = res
  d = clip_to(sl, d, th.d_cav, 1.0)
  cv.paint(sl, d - 2.0, [tis.fat + 0.03 * cv.noise(sl, 1.5)])
  cv.paint(sl, d, [tis.myo + 0.02 * cv.noise(sl, 1.5)])


def _paint_descending_aorta(cv: Canvas, tis: _Tissue, th: _Thorax, vb_y: float,
                            r_vb: float) -> None:
  """Descending aorta, left of the spine (vb_y, r_vb: mm), behind the left atrium."""
  rng = cv.rng
  x0 = th.x0
  dao_y, dao_x = vb_y + r_vb + uniform(rng, 3, 5), x0 - uniform(rng, 8, 11)
  res = tube(cv, th.along_z(dao_y, dao_x), uniform(rng, 5, 6))
  cv.paint(res[0], res[1] - 1.3, [tis.fat])
  cv.paint(*res, [tis.blood + uniform(rng, -0.04, 0.04) + 0.03 * cv.noise(res[0], 1.5)])


def _paint_pool(cv: Canvas, tis: _Tissue, res, halo: float, rough: float = 0.03) -> None:
  """A blood pool inside a myocardial wall `halo` voxels thick.

  Args:
    res: (slices, signed distance in voxels) or None (then nothing is painted).
  """
  if res is None:
    return
  rng = cv.rng
  sl, d = res
  cv.paint(sl, d - halo, [tis.myo])
  cv.paint(sl, d, [tis.blood + uniform(rng, -0.04, 0.04) + rough * cv.noise(sl, 1.5)])


def _paint_chambers(cv: Canvas, tis: _Tissue, fr: _Frame) -> None:
  """Left ventricle (thick wall), right ventricle, right atrium, outflow tracts."""
  rng = cv.rng
  hc, hr, at = fr.hc, fr.hr, fr.at
  lv_rot = hr @ in_plane_rotation(uniform(rng, -45, -25))
  _paint_pool(cv, tis, blob(cv, at((-5, 2, -11)), (10.0, 8.0, 12.0), lv_rot,
                            Shape.random(rng, 0.06), pad_mm=6.0), 4.0)
  rv_rot = hr @ in_plane_rotation(uniform(rng, -35, -20))
  _paint_pool(cv, tis, blob(cv, at((-4, 12, 6)), (10.0, 5.5, 13.0), rv_rot,
                            Shape.random(rng, 0.08), pad_mm=3.0), 1.3)
  _paint_pool(cv, tis, blob(cv, at((2, -1, 18)), (10.0, 8.0, 8.0), hr, Shape.random(rng, 0.06),
                            pad_mm=3.0), 1.3)
  aa = np.array([at((2, 4, 0)), at((14, 3, 2)), hc + np.array([40.0, 2.0, 4.0])])
  _paint_pool(cv, tis, tube(cv, aa, uniform(rng, 6, 7)), 1.3)
  pa = np.array([at((-2, 14, -5)), at((10, 13, -8)), at((18, 4, -15)), at((20, -2, -24))])
  _paint_pool(cv, tis, tube(cv, pa, np.array([6.0, 6.0, 5.0, 4.0])), 1.3)


def _paint_left_atrium(cv: Canvas, tis: _Tissue, fr: _Frame) -> None:
  """Left atrium (+ four pulmonary-vein stubs), label 1, drawn last."""
  rng = cv.rng
  la_c = fr.at((uniform(rng, 6, 9), uniform(rng, -12, -9), uniform(rng, -3, 0)))
  la_semi = (uniform(rng, 9, 11), uniform(rng, 6.5, 8), uniform(rng, 11.5, 14))
  la_rot = fr.hr @ rotation(rng, (12, 8, 8))
  parts = [blob(cv, la_c, la_semi, la_rot, Shape.random(rng, 0.07),
                Warp.random(rng, 1.0, 30.0), pad_mm=3.0)]
  for sz in (-1, 1):
    for sx in (-1, 1):
      dirv = np.array([0.45 * sz + uniform(rng, -0.15, 0.15), uniform(rng, -0.7, -0.4),
                       sx * uniform(rng, 0.8, 1.0)])
      dirv /= np.linalg.norm(dirv)
      start = la_c + la_rot @ (dirv * np.asarray(la_semi) * 0.6)
      end = start + dirv * uniform(rng, 11, 16)
      parts.append(tube(cv, np.stack([start, (start + end) / 2, end]),
                        np.array([uniform(rng, 3.3, 4), 3.2, uniform(rng, 2.6, 3.0)])))
  parts = [p for p in parts if p is not None]
  # Halos first so the veins do not cut the atrium, then the blood.
  for sl, d in parts:
    cv.paint(sl, d - 1.3, [tis.myo], label=0)
  # Slow, swirling atrial flow: a little darker and mottled.
  la_mean = tis.blood * uniform(rng, 0.78, 0.83)
  la_amp = uniform(rng, 0.08, 0.1)
  for sl, d in parts:
    cv.paint(sl, d, [la_mean + la_amp * cv.noise(sl, 1.6)], label=1)
