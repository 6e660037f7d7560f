"""Hippocampus T1 MRI scene: head (anterior) and body/tail (posterior).

Intensities are in arbitrary units (white matter ~0.8) until the scanner
finish applies the gain. `build_hippocampus` runs the steps below in a fixed
order: the random draws, hence the cases, depend on it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfds_builders.synthetic_organs.canvas import Canvas, uniform
from tfds_builders.synthetic_organs.finishing import mri_scanner
from tfds_builders.synthetic_organs.shapes import Shape, blob, curve, rotation, spline, tube


@dataclasses.dataclass(frozen=True)
class _Tissue:
  """The case's tissue intensities, arbitrary units."""
  wm: float
  gm: float
  csf: float


@dataclasses.dataclass(frozen=True)
class _Centreline:
  """The hippocampal centreline (posterior tail -> anterior head), mm.

  Attributes:
    rot: (3, 3) rotation of the whole crop.
    shift: (3,) translation of the whole crop, mm.
    ctrl: (6, 3) control points, mm (z, y, x).
    n_per: spline points per control interval.
    pts: (M, 3) spline points, mm.
    radii: (M,) tube radius at each point, mm.
    seg: (M - 1,) segment lengths, mm.
    t_split: normalized arc length of the head/body border.
    up, lat: (3,) rotated superior and lateral unit vectors.
  """
  rot: np.ndarray
  shift: np.ndarray
  ctrl: np.ndarray
  n_per: int
  pts: np.ndarray
  radii: np.ndarray
  seg: np.ndarray
  t_split: float
  up: np.ndarray
  lat: np.ndarray


def build_hippocampus(cv: Canvas) -> None:
  """T1-like crop of the medial temporal lobe; labels 1 = head, 2 = body+tail.

  Hippocampus, amygdala and cortex share grey-matter intensity; the
  hippocampus is a solid curved tube (no white-matter core, unlike gyri) with
  the dark temporal horn above it; its head is thick and bumpy, and a shallow
  dark cleft marks the head/body border.
  """
  rng = cv.rng
  full = cv.full()
  wm, gm, csf = uniform(rng, 0.78, 0.84), uniform(rng, 0.44, 0.48), uniform(rng, 0.1, 0.16)
  tis = _Tissue(wm=wm, gm=gm, csf=csf)
  cv.image[0] = wm + 0.02 * cv.noise(full, 2.0)
  line = _centreline(rng)
  _paint_gyri(cv, tis, line.shift)
  _paint_neighbours(cv, tis, line)
  _paint_amygdala(cv, tis, line)
  _paint_hippocampus(cv, tis, line)
  mri_scanner(cv, (200, 500), 0.5, 0.1, (0.02, 0.03))


def _centreline(rng: np.random.Generator) -> _Centreline:
  """Draws the crop's pose and the hippocampal centreline with its radii."""
  rot = rotation(rng, (10, 8, 8))
  shift = rng.uniform(-2.5, 2.5, 3)

  def tf(p):
    return (rot @ np.asarray(p, np.float64).T).T + shift

  ctrl = np.array([[8, -19, -4], [4, -11, -1], [1, -3, 0], [-1, 5, 1], [-3, 11, 2],
                   [-4, 15, 1]], np.float64) + rng.normal(0, 1.0, (6, 3))
  ctrl = tf(ctrl)
  radii_c = np.array([uniform(rng, 3.0, 3.4), uniform(rng, 3.4, 3.8), uniform(rng, 3.6, 4.0),
                      uniform(rng, 4.8, 5.4), uniform(rng, 5.8, 6.6), uniform(rng, 4.4, 5.0)])
  n_per = 4
  pts = spline(ctrl, n_per)
  radii = np.interp(np.arange(len(pts)) / n_per, np.arange(6), radii_c)
  seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
  cum = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
  t_split = float(cum[3 * n_per - 2]) + uniform(rng, -0.02, 0.02)
  up = rot @ np.array([1.0, 0.0, 0.0])
  lat = rot @ np.array([0.0, 0.0, 1.0])
  return _Centreline(rot=rot, shift=shift, ctrl=ctrl, n_per=n_per, pts=pts, radii=radii, seg=seg,
                     t_split=t_split, up=up, lat=lat)


def _paint_gyri(cv: Canvas, tis: _Tissue, shift: np.ndarray) -> None:
  """Cortex gyri (GM with a WM core) and sulcal CSF around the hippocampus; shift: (3,) mm."""
  rng = cv.rng
  wm, gm, csf = tis.wm, tis.gm, tis.csf
  for k in range(int(rng.integers(5, 8))):
    side = rng.choice(3)
    if side == 0:     # inferior
      c = np.array([uniform(rng, -22, -12), 0.0, uniform(rng, -20, 20)])
    elif side == 1:   # lateral
      c = np.array([uniform(rng, -15, 12), 0.0, uniform(rng, 12, 22)])
    else:             # superior
      c = np.array([uniform(rng, 14, 22), 0.0, uniform(rng, -20, 20)])
    c = c + shift
    p0 = c + np.array([uniform(rng, -4, 4), -30.0, uniform(rng, -4, 4)])
    p1 = c + np.array([uniform(rng, -4, 4), 30.0, uniform(rng, -4, 4)])
    g = curve(p0, p1, rng, 4.0, n=8)
    r = uniform(rng, 3.3, 4.5)
    res = tube(cv, g, r + 1.1)
    if res:
      cv.paint(*res, [csf + 0.1])
    res = tube(cv, g, r)
    if res:
      cv.paint(res[0], res[1], [gm + uniform(rng, -0.02, 0.02) + 0.02 * cv.noise(res[0], 1.5)])
    res = tube(cv, g, uniform(rng, 1.1, 1.6))
    if res:
      cv.paint(*res, [wm - 0.03])


def _paint_neighbours(cv: Canvas, tis: _Tissue, line: _Centreline) -> None:
  """Neighbours: parahippocampal gyrus, ambient cistern, temporal horn.

  The parahippocampal gyrus (GM around a WM core) is below, the ambient
  cistern medial, the temporal horn above-lateral.
  """
  rng = cv.rng
  wm, gm, csf = tis.wm, tis.gm, tis.csf
  pts, radii, n_per, up, lat = line.pts, line.radii, line.n_per, line.up, line.lat
  ph = pts[: 3 * n_per + 1] - up * (radii[: 3 * n_per + 1, None] + uniform(rng, 4.5, 5.5))
  res = tube(cv, ph, uniform(rng, 3.2, 3.8))
  if res:
    cv.paint(res[0], res[1], [gm + 0.02 * cv.noise(res[0], 1.5)])
  res = tube(cv, ph, 1.3)
  if res:
    cv.paint(*res, [wm - 0.02])
  amb = pts - lat * (radii[:, None] + uniform(rng, 2.5, 3.5))
  res = tube(cv, amb[: 3 * n_per + 1], uniform(rng, 2.0, 2.8))
  if res:
    cv.paint(*res, [csf])
  horn = pts[n_per:] + up * (0.7 * radii[n_per:, None] + 1.5) + lat * (0.7 * radii[n_per:, None])
  res = tube(cv, horn, uniform(rng, 1.6, 2.2))
  if res:
    cv.paint(*res, [csf])


def _paint_amygdala(cv: Canvas, tis: _Tissue, line: _Centreline) -> None:
  """Amygdala: GM blob antero-superior to the head."""
  rng = cv.rng
  rot, ctrl, up = line.rot, line.ctrl, line.up
  am_c = ctrl[-1] + up * uniform(rng, 8, 10) + rot @ np.array([0.0, uniform(rng, 1, 4), 0.0])
  res = blob(cv, am_c, (uniform(rng, 5.5, 6.5), uniform(rng, 6, 7.5), uniform(rng, 6, 7.5)), rot,
             Shape.random(rng, 0.06))
  if res:
    # More myelinated fibres than cortex: a little brighter on T1.
    cv.paint(res[0], res[1], [tis.gm + uniform(rng, 0.18, 0.21) + 0.012 * cv.noise(res[0], 1.5)])


def _paint_hippocampus(cv: Canvas, tis: _Tissue, line: _Centreline) -> None:
  """Hippocampus with its digitations; a thin WM (alveus) halo separates it.

  Labels: 1 where the normalized arc length >= line.t_split (head), else 2.
  """
  rng = cv.rng
  wm, gm = tis.wm, tis.gm
  pts, radii, n_per, up, lat = line.pts, line.radii, line.n_per, line.up, line.lat
  t_split, seg = line.t_split, line.seg
  parts = [tube(cv, pts, radii, with_param=True)]
  head_pts = pts[3 * n_per:]
  for _ in range(3):
    i = int(rng.integers(0, len(head_pts) - 1))
    c = head_pts[i] + up * radii[3 * n_per + i] * 0.8 + lat * uniform(rng, -2, 2)
    res = blob(cv, c, (2.3, 2.3, 2.3))
    if res:
      parts.append(res + (np.ones_like(res[1]),))
  for sl, d, _ in parts:
    cv.paint(sl, d - 1.2, [wm + 0.02], label=0)
  # Head: slightly brighter and mottled by its digitations; body/tail: smooth.
  head_gm, body_gm = gm + uniform(rng, 0.11, 0.14), gm + uniform(rng, 0.06, 0.08)
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
