"""CT abdomen scene (HU): the liver, pancreas and spleen domains share one phantom.

An upper abdomen in the portal-venous phase: the trunk and non-target anatomy
(abdomen_anatomy.py), then the solid organs painted here (spleen, liver with
its vessel tree and gallbladder, pancreas with its vessels and duodenum). The
domain's organ is label 1, every other structure is background. Liver cases
add the steps of liver.py (contrast phase, steatosis, liver-like spleen,
density drift, thicker wall muscles), so intensity does not identify the liver.
`build_abdomen` runs the steps in a fixed order: the random draws, hence the
cases, depend on it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from tfds_builders.synthetic_organs import abdomen_anatomy as anatomy
from tfds_builders.synthetic_organs import liver
from tfds_builders.synthetic_organs.abdomen_anatomy import Body, Hu, Spine
from tfds_builders.synthetic_organs.canvas import Canvas, uniform
from tfds_builders.synthetic_organs.finishing import ct_scanner
from tfds_builders.synthetic_organs.shapes import (Shape, Warp, blob, clip_to, curve,
                                                   in_plane_rotation, rotation, spline,
                                                   sub_slices, tube)

# Phantom z of each target's centre; each domain's scan range is centred on it.
ABDOMEN_Z = {"liver": 0.0, "pancreas": -22.0, "spleen": -4.0}


@dataclasses.dataclass(frozen=True)
class _PancreasLine:
  """Pancreas centreline.

  Attributes:
    zp: scene z of the pancreas, mm.
    ctrl: (5, 3) control points head -> tail, mm (z, y, x).
    pts: (M, 3) spline points through ctrl, mm.
    rad: (M,) radius at each point, mm.
  """
  zp: float
  ctrl: np.ndarray
  pts: np.ndarray
  rad: np.ndarray


def build_abdomen(cv: Canvas, target: str) -> None:
  """Upper-abdomen CT (HU) with liver, spleen, pancreas, kidneys, bowel, spine.

  The organ named `target` is label 1, every other structure is background.
  """
  rng = cv.rng
  lab = {k: (1 if k == target else 0) for k in ("liver", "pancreas", "spleen")}
  zs = -ABDOMEN_Z[target] + uniform(rng, -5, 5)   # phantom z -> scene z
  hu = anatomy.tissue_hu(rng)
  look = None
  if target == "liver":   # what keeps density from identifying the liver: liver.py
    hu, look = liver.draw_look(rng, hu)
  body = anatomy.paint_body(cv, hu, zs)
  if look is not None:
    body = liver.thicken_wall(cv, hu, body)
  spine = anatomy.paint_spine(cv, hu, body)
  anatomy.paint_ribs(cv, body)
  anatomy.paint_bowel(cv, hu, body)
  anatomy.paint_stomach(cv, hu, body)
  anatomy.paint_kidneys(cv, hu, body, spine)
  ao_y, ao_x = anatomy.paint_great_vessels(cv, hu, body, spine)
  # The spleen is placed here but painted with the other solid organs, below.
  spl = _spleen_blob(cv, body)
  line = _pancreas_centreline(rng, body, spine, ao_y)
  _paint_peripancreatic(cv, hu, body, line, ao_y, ao_x)
  _paint_organ(cv, hu, body, spl, lambda sl: [hu.spleen + 3.0 * cv.noise(sl, 2.0)],
               lab["spleen"])
  _paint_liver(cv, hu, body, lab["liver"], look)
  # Pancreas last: nothing may cut the thin organ into pieces.
  _paint_pancreas(cv, hu, body, line, lab["pancreas"])
  ct_scanner(cv)


def _spleen_blob(cv: Canvas, body: Body):
  """Spleen (left posterior, follows the wall, crescent-like): (slices, distance) or None."""
  rng = cv.rng
  zs, y0, x0 = body.zs, body.y0, body.x0
  spc = np.array([zs - 4.0 + uniform(rng, -4, 4), y0 + uniform(rng, -16, -9),
                  x0 - uniform(rng, 27, 31)])
  sp_semi = (uniform(rng, 22, 27), uniform(rng, 18, 22), uniform(rng, 9, 11.5))
  sp_rot = in_plane_rotation(uniform(rng, -40, -15)) @ rotation(rng, (0, 15, 15))
  return blob(cv, spc, sp_semi, sp_rot, Shape.random(rng, 0.08),
              Warp.random(rng, 1.5, 40.0), pad_mm=4.0)


def _pancreas_centreline(rng: np.random.Generator, body: Body, spine: Spine,
                         ao_y: float) -> _PancreasLine:
  """Draws the pancreas centreline; ao_y: aorta centre y, mm.

  Head (right, by the duodenum) -> neck (in front of the aorta) -> body ->
  tail (towards the splenic hilum).
  """
  zs, x0, vb_y = body.zs, body.x0, spine.vb_y
  zp = zs - 22.0 + uniform(rng, -3, 3)
  ctrl = np.array([
      [zp - 9, vb_y + 18, x0 + 15], [zp - 3, vb_y + 22, x0 + 10],
      [zp, ao_y + 12, x0 - 1], [zp + 4, ao_y + 9, x0 - 14],
      [zp + 7, vb_y + 6, x0 - 26]]) + rng.normal(0, 1.8, (5, 3))
  p_pts = spline(ctrl, 4)
  rr = np.array([uniform(rng, 7, 8.5), uniform(rng, 6.5, 8), uniform(rng, 5.5, 6.5),
                 uniform(rng, 5.3, 6.3), uniform(rng, 5, 6)])
  p_rad = np.interp(np.linspace(0, 4, len(p_pts)), np.arange(5), rr)
  return _PancreasLine(zp=zp, ctrl=ctrl, pts=p_pts, rad=p_rad)


def _paint_peripancreatic(cv: Canvas, hu: Hu, body: Body, line: _PancreasLine,
                          ao_y: float, ao_x: float) -> None:
  """Splenic vein behind the pancreas, SMA in front of the aorta (ao_y, ao_x, mm),
  duodenum curving around the pancreatic head."""
  rng = cv.rng
  sp = cv.sp
  x0, zp, ctrl, p_pts, p_rad = body.x0, line.zp, line.ctrl, line.pts, line.rad
  sv = p_pts.copy()
  sv[:, 1] -= p_rad + 2.5
  res = tube(cv, sv[len(sv) // 3:], uniform(rng, 2.5, 3.3))
  if res:
    cv.paint(*res, [hu.vessel])
  sma = np.array([[zp + 10, ao_y + 4, ao_x + 1], [zp - 10, ao_y + 9, ao_x + 2],
                  [zp - 40, ao_y + 14, ao_x + 3]])
  res = tube(cv, sma, 3.0)
  if res:
    cv.paint(*res, [hu.vessel + 20])
  duo = spline(np.array([[zp + 6, ctrl[1, 1] + 4, ctrl[1, 2] + 14],
                         [zp - 6, ctrl[1, 1], ctrl[1, 2] + 15],
                         [zp - 16, ctrl[0, 1] - 2, ctrl[0, 2] + 6],
                         [zp - 20, ctrl[0, 1] - 4, x0 - 5]]), 4)
  res = tube(cv, duo, uniform(rng, 5, 6.5))
  if res:
    sl, d = res
    cv.paint(sl, d, [hu.bowel])
    cv.paint(sl, d + 2.0 / sp[1], [uniform(rng, -5, 30)])


def _paint_organ(cv: Canvas, hu: Hu, body: Body, res, values: Callable, label: int,
                 clip: bool = True):
  """Paints a solid organ behind a one-voxel fat plane: (slices, distance) or None.

  The fat plane keeps the organ's outline visible where it touches tissue of
  the same density.

  Args:
    cv: canvas.
    hu: tissue intensities.
    body: the trunk (its cavity clips the organ).
    res: (slices, signed distance in voxels) or None (then nothing is painted).
    values: slices -> per-channel values, called after the fat plane is painted.
    label: label value of the organ.
    clip: keep the organ inside the abdominal cavity.
  """
  if res is None:
    return None
  sl, d = res
  if clip:
    d = clip_to(sl, d, body.d_cav, 1.5 / cv.sp[1])
  cv.paint(sl, d - 1.2, [hu.fat + 15.0], label=0)
  cv.paint(sl, d, values(sl), label=label)
  return sl, d


def _paint_liver(cv: Canvas, hu: Hu, body: Body, label: int,
                 look: liver.LiverLook | None) -> None:
  """Liver (right upper) with its vessel tree, and the gallbladder under it.

  look: the liver domain's case appearance (liver.py), or None (other domains).
  """
  rng = cv.rng
  zs, y0, x0 = body.zs, body.y0, body.x0
  lc = np.array([zs + uniform(rng, -4, 4), y0 + uniform(rng, 0, 8), x0 + uniform(rng, 17, 23)])
  l_semi = np.array([uniform(rng, 26, 33), uniform(rng, 24, 29), uniform(rng, 25, 30)])
  l_rot = rotation(rng, (12, 8, 8))
  l_shape = Shape.random(rng, 0.07)
  l_shape.lin = (l_shape.lin[0] - 0.08, l_shape.lin[1], l_shape.lin[2] + 0.12)
  lres = _paint_organ(
      cv, hu, body, blob(cv, lc, l_semi, l_rot, l_shape, Warp.random(rng, 2.0, 50.0), pad_mm=4.0),
      lambda sl: [hu.liver + 7.0 * cv.noise(sl, 2.5) + 4.0 * cv.noise(sl, 1.0) if look is None
                  else look.parenchyma(cv, hu, sl)], label)
  if lres:
    _paint_liver_vessels(cv, hu, lc, l_semi, lres, label, look)
    _paint_gallbladder(cv, hu, lc, l_semi)


def _paint_liver_vessels(cv: Canvas, hu: Hu, lc: np.ndarray, l_semi: np.ndarray, lres,
                         label: int, look: liver.LiverLook | None) -> None:
  """Portal / hepatic vessel tree, part of the liver label (as in MSD).

  Args:
    lc, l_semi: (3,) liver centre and semi-axes, mm.
    lres: the liver's (slices, signed distance in voxels); vessels stay inside it.
  """
  rng = cv.rng
  lsl, ld = lres
  hilum = lc + np.array([-0.3 * l_semi[0], -0.25 * l_semi[1], -0.35 * l_semi[2]])
  v_off = uniform(rng, 45, 75)
  v_hu = hu.liver + v_off if look is None else look.vessel_hu(v_off)
  for _ in range(int(rng.integers(7, 11))):
    dirv = rng.normal(0, 1, 3) * np.array([0.8, 0.8, 1.0]) + np.array([0.3, 0.2, 0.6])
    dirv /= np.linalg.norm(dirv)
    end = hilum + dirv * uniform(rng, 0.6, 1.0) * l_semi
    pts = curve(hilum, end, rng, 4.0, n=6)
    res = tube(cv, pts, np.linspace(uniform(rng, 3.0, 4.0), 1.6, len(pts)))
    if res is None:
      continue
    sl, d = res
    # Keep the vessels inside the liver envelope.
    inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, lsl))
    if any(s.stop <= s.start for s in inter):
      continue
    dv = np.maximum(d[sub_slices(sl, inter)], ld[sub_slices(lsl, inter)] + 1.0)
    cv.paint(inter, dv, [v_hu], label=label)


def _paint_gallbladder(cv: Canvas, hu: Hu, lc: np.ndarray, l_semi: np.ndarray) -> None:
  """Gallbladder under the liver (lc, l_semi: (3,) mm): fluid, not liver."""
  rng = cv.rng
  gc = lc + np.array([-0.55 * l_semi[0], 0.45 * l_semi[1], -0.25 * l_semi[2]])
  res = blob(cv, gc, (uniform(rng, 8, 12), uniform(rng, 5, 7), uniform(rng, 5, 7)),
             rotation(rng, (20, 20, 20)))
  if res:
    cv.paint(res[0], res[1] - 1.0, [hu.fat + 15.0], label=0)
    cv.paint(res[0], res[1], [uniform(rng, 0, 20)], label=0)


def _paint_pancreas(cv: Canvas, hu: Hu, body: Body, line: _PancreasLine, label: int) -> None:
  """Pancreas along `line`: lobulated parenchyma, fat clefts between lobules."""
  rng = cv.rng
  res = tube(cv, line.pts, line.rad)
  if res:
    sl = res[0]
    # Lobulated parenchyma: fat clefts between lobules (dark speckles).
    lob = cv.noise(sl, 1.3)
    val = hu.panc + 5.0 * lob - np.clip(lob - 1.0, 0, None) * uniform(rng, 60, 90)
    _paint_organ(cv, hu, body, res, lambda sl: [val], label, clip=False)
