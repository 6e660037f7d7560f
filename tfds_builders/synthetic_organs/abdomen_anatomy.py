"""The abdomen phantom's trunk and non-target anatomy (CT, HU), see abdomen.py.

Couch, body wall, spine, ribs, bowel, stomach, kidneys and great vessels: the
distractors of the liver, pancreas and spleen targets, with overlapping HU
but another shape, texture, wall or neighbourhood.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfds_builders.synthetic_organs.canvas import Canvas, uniform
from tfds_builders.synthetic_organs.shapes import (Shape, blob, clip_to, curve, ellipse_z,
                                                   in_plane_rotation, rotation, tube)


@dataclasses.dataclass(frozen=True)
class Hu:
  """The case's tissue intensities, HU."""
  fat: float
  liver: float
  muscle: float
  spleen: float
  panc: float
  vessel: float
  bowel: float
  kidney: float


@dataclasses.dataclass(frozen=True)
class Body:
  """The trunk.

  Attributes:
    zs: scene z of the phantom origin, mm.
    zfov: half the scan length, mm.
    y0, x0: centre of the body cross-section, mm.
    ay, ax: its semi-axes, mm.
    t_fat: subcutaneous fat thickness, mm.
    d_cav: (1, H, W) signed distance to the abdominal cavity, voxels.
  """
  zs: float
  zfov: float
  y0: float
  x0: float
  ay: float
  ax: float
  t_fat: float
  d_cav: np.ndarray


@dataclasses.dataclass(frozen=True)
class Spine:
  """The vertebral column: body centre vb_y and radius r_vb (mm), lordosis slope lord.

  zline: (2,) mm, the z range lines along the spine are drawn over.
  """
  vb_y: float
  r_vb: float
  lord: float
  zline: np.ndarray

  def along_z(self, yc, xc) -> np.ndarray:
    """(2, 3) mm (z, y, x) end points of a line through (yc, xc) following the lordosis."""
    return np.stack([self.zline, yc + self.lord * self.zline, np.full(2, xc)], axis=1)


def tissue_hu(rng: np.random.Generator) -> Hu:
  """Draws the tissue intensities of one case, HU."""
  # Portal-venous phase. A shared contrast-timing shift moves every enhancing
  # tissue together (so relative contrast is stable) on top of small per-organ
  # jitter. Soft tissues sit ~20-30 HU apart (2-4 noise SDs), each band
  # shared with a distractor of another shape: muscle ~ bowel wall ~ pancreas
  # < liver ~ IVC < spleen ~ gastric wall < vessels ~ kidney cortex.
  enh = uniform(rng, -12, 12)
  hu_fat = uniform(rng, -115, -85)
  hu_liver = 100.0 + enh + uniform(rng, -4, 4)
  hu_muscle = uniform(rng, 45, 60)
  hu_spleen = hu_liver + uniform(rng, 25, 35)
  hu_panc = hu_liver - uniform(rng, 22, 30)
  hu_vessel = hu_liver + uniform(rng, 70, 100)
  hu_bowel = hu_liver - uniform(rng, 45, 60)
  hu_kidney = hu_liver + uniform(rng, 60, 110)
  return Hu(fat=hu_fat, liver=hu_liver, muscle=hu_muscle, spleen=hu_spleen, panc=hu_panc,
             vessel=hu_vessel, bowel=hu_bowel, kidney=hu_kidney)


def paint_body(cv: Canvas, hu: Hu, zs: float) -> Body:
  """Couch, then the body: elliptic cylinder with a flatter back, fat / muscle / cavity."""
  rng = cv.rng
  sp = cv.sp
  y0, x0 = uniform(rng, -4, 2), uniform(rng, -3, 3)
  ay, ax = uniform(rng, 37, 42), uniform(rng, 50, 56)
  full = cv.full()
  couch_y = y0 - 0.9 * ay - 2.5
  _, yy, _ = cv.grid(full)
  couch = (np.abs(yy - (couch_y - 3.0)) - 2.0) / sp[1]
  cv.paint(full, couch, [-250.0])
  d_body = ellipse_z(cv, y0, x0, ay, ax, ay_post=0.9 * ay)
  tex = cv.noise(full, 1.6)   # shared background texture field
  cv.paint(full, d_body, [hu.fat + 8.0 * tex])
  t_fat, t_mus = uniform(rng, 4, 8), uniform(rng, 2.5, 4)
  cv.paint(full, d_body + t_fat / sp[1], [hu.muscle + 6.0 * tex])
  d_cav = d_body + (t_fat + t_mus) / sp[1]
  cv.paint(full, d_cav, [hu.fat + 10 + 14.0 * tex])
  return Body(zs=zs, zfov=cv.shape[0] * sp[0] / 2, y0=y0, x0=x0, ay=ay, ax=ax, t_fat=t_fat,
               d_cav=d_cav)


def paint_spine(cv: Canvas, hu: Hu, body: Body) -> Spine:
  """Spine: paraspinal muscles, canal and arch, vertebral body (cortex, cancellous, discs)."""
  rng = cv.rng
  sp = cv.sp
  y0, x0, ay, zfov = body.y0, body.x0, body.ay, body.zfov
  r_vb = uniform(rng, 6.5, 8)
  vb_y = y0 - 0.9 * ay + r_vb + uniform(rng, 14, 17)
  lord = uniform(rng, -0.08, 0.08)
  spine = Spine(vb_y=vb_y, r_vb=r_vb, lord=lord, zline=np.array([-zfov - 10, zfov + 10]))
  along_z = spine.along_z
  can_y = vb_y - r_vb - 3.8
  for side in (-1, 1):
    res = blob(cv, (0.0, can_y - 2.0, x0 + side * uniform(rng, 10, 12)),
               (200.0, uniform(rng, 6, 8), uniform(rng, 7, 9)))
    if res:
      cv.paint(res[0], res[1], [hu.muscle + 6.0 * cv.noise(res[0], 2.0)])
  res = tube(cv, along_z(can_y, x0), 6.0)
  cv.paint(*res, [uniform(rng, 500, 800)])
  res = tube(cv, along_z(can_y - 7.0, x0), 2.5)
  cv.paint(*res, [uniform(rng, 500, 800)])
  res = tube(cv, along_z(can_y, x0), 3.3)
  cv.paint(*res, [20.0])
  sl, d = tube(cv, along_z(vb_y, x0), r_vb)
  cv.paint(sl, d, [uniform(rng, 700, 1000)])
  z = cv.grid(sl)[0]
  disc_period, disc_phase = uniform(rng, 13, 16), uniform(rng, 0, 16)
  disc = np.abs(((z + disc_phase) % disc_period) - disc_period / 2) < 2.0
  cancellous = np.where(disc, 90.0, uniform(rng, 180, 300)) + 35.0 * cv.noise(sl, 1.0)
  cv.paint(sl, d + 1.5 / sp[1], [cancellous])
  return spine


def paint_ribs(cv: Canvas, body: Body) -> None:
  """Ribs: arcs just inside the muscle wall on both sides (upper levels)."""
  rng = cv.rng
  zs, zfov, y0, x0, ay, ax, t_fat = (body.zs, body.zfov, body.y0, body.x0, body.ay, body.ax,
                                     body.t_fat)
  for k in range(4):
    zr = zs + uniform(rng, -5, 45) - 14 * k
    if abs(zr) > zfov + 5:
      continue
    for side in (-1, 1):
      th = np.linspace(math.radians(uniform(rng, -115, -95)), math.radians(uniform(rng, 5, 35)), 9)
      ry, rx = ay - t_fat - 1.5, ax - t_fat - 1.5
      # Ribs run obliquely: lower anteriorly, so a slice cuts short pieces.
      pts = np.stack([zr - 20.0 * (th - th[0]), y0 + ry * np.sin(th),
                      x0 + side * rx * np.cos(th)], axis=1)
      res = tube(cv, pts, uniform(rng, 1.8, 2.6))
      if res:
        cv.paint(*res, [uniform(rng, 450, 800)])


def paint_bowel(cv: Canvas, hu: Hu, body: Body) -> None:
  """Bowel: small-bowel loops and colon; lumen fluid, gas, positive contrast, or
  collapsed (solid, organ-like HU) with an enhancing mucosal ring."""
  rng = cv.rng
  sp = cv.sp
  zs, y0, x0, ay, ax, d_cav = body.zs, body.y0, body.x0, body.ay, body.ax, body.d_cav
  for k in range(int(rng.integers(8, 12))):
    cz = zs + uniform(rng, -50, 10)
    cy_ = y0 + uniform(rng, -5, 0.7 * ay)
    cx_ = x0 + uniform(rng, -0.7, 0.7) * ax
    p0 = np.array([cz, cy_, cx_])
    p1 = p0 + rng.normal(0, 22, 3) * np.array([0.8, 0.6, 1.0])
    pts = curve(p0, p1, rng, 10.0, n=8)
    r = uniform(rng, 4.5, 7.5)
    res = tube(cv, pts, r)
    if res is None:
      continue
    sl, d = res
    d = clip_to(sl, d, d_cav, 0.5)
    kind = rng.choice(4, p=[0.3, 0.2, 0.15, 0.35])
    cv.paint(sl, d, [hu.bowel + uniform(rng, -10, 10) + 6.0 * cv.noise(sl, 1.5)])
    wall = 2.0 / sp[1]
    if kind == 0:
      cv.paint(sl, d + wall, [uniform(rng, 0, 25)])
    elif kind == 1:
      cv.paint(sl, d + wall, [uniform(rng, -950, -800)])
    elif kind == 2:
      cv.paint(sl, d + wall, [uniform(rng, 200, 350)])
    else:
      # Collapsed loop: target sign, bright mucosa inside darker submucosa.
      cv.paint(sl, d + 0.9 * wall, [hu.bowel - 25.0])
      cv.paint(sl, d + 1.6 * wall, [hu.bowel + 25.0])


def paint_stomach(cv: Canvas, hu: Hu, body: Body) -> None:
  """Stomach (left upper): enhancing wall, fluid with an air-fluid level."""
  rng = cv.rng
  sp = cv.sp
  zs, y0, x0, d_cav = body.zs, body.y0, body.x0, body.d_cav
  sc = np.array([zs + uniform(rng, 0, 10), y0 + uniform(rng, 8, 16), x0 - uniform(rng, 12, 20)])
  res = blob(cv, sc, (uniform(rng, 14, 20), uniform(rng, 10, 13), uniform(rng, 12, 16)),
             rotation(rng, (25, 10, 10)), Shape.random(rng, 0.08))
  if res:
    sl, d = res
    d = clip_to(sl, d, d_cav, 0.5)
    # Enhancing gastric mucosa: as bright as the spleen, but a thin shell.
    cv.paint(sl, d, [hu.spleen + uniform(rng, -5, 5) + 4.0 * cv.noise(sl, 1.5)])
    y = cv.grid(sl)[1]
    lumen = np.where(y > sc[1] + uniform(rng, 0, 8), -900.0,
                     uniform(rng, 0, 30)).astype(np.float32)
    cv.paint(sl, d + 2.5 / sp[1], [lumen + 4.0 * cv.noise(sl, 2.0)])


def paint_kidneys(cv: Canvas, hu: Hu, body: Body, spine: Spine) -> None:
  """Kidneys: cortex, medulla, sinus fat at the hilum."""
  rng = cv.rng
  zs, x0, vb_y = body.zs, body.x0, spine.vb_y
  kz = zs - 40.0 + uniform(rng, -5, 5)
  for side in (-1, 1):
    c = np.array([kz + uniform(rng, -3, 3), vb_y + uniform(rng, -2, 3),
                  x0 + side * uniform(rng, 25, 29)])
    semi = np.array([uniform(rng, 16, 20), uniform(rng, 10, 12), uniform(rng, 7, 9)])
    rot = in_plane_rotation(side * uniform(rng, 10, 30))
    res = blob(cv, c, semi, rot, Shape.random(rng, 0.05))
    if res is None:
      continue
    sl, d = res
    cv.paint(sl, d, [hu.kidney + 8.0 * cv.noise(sl, 1.5)])
    res = blob(cv, c, semi * 0.68, rot)
    if res:
      cv.paint(res[0], res[1], [uniform(rng, 70, 100)])
    res = blob(cv, c + np.array([0, 2.0, -side * 5.0]), semi * np.array([0.5, 0.3, 0.35]), rot)
    if res:
      cv.paint(res[0], res[1], [hu.fat + 20])


def paint_great_vessels(cv: Canvas, hu: Hu, body: Body,
                         spine: Spine) -> tuple[float, float]:
  """Aorta and IVC in front of the spine; returns the aorta centre (y, x), mm."""
  rng = cv.rng
  x0, vb_y, r_vb = body.x0, spine.vb_y, spine.r_vb
  ao_y, ao_x = vb_y + r_vb + uniform(rng, 4, 6), x0 - uniform(rng, 3, 7)
  ivc_y, ivc_x = vb_y + r_vb + uniform(rng, 3, 6), x0 + uniform(rng, 12, 16)
  res = tube(cv, spine.along_z(ao_y, ao_x), uniform(rng, 5, 6.5))
  cv.paint(*res, [hu.vessel + uniform(rng, 0, 40)])
  res = blob(cv, (0.0, ivc_y, ivc_x), (400.0, uniform(rng, 4.5, 5.5), uniform(rng, 6, 8)))
  if res:
    cv.paint(res[0], res[1], [hu.liver + uniform(rng, -10, 10)])
  return ao_y, ao_x
