"""Prostate MRI scene, channels (T2, ADC): peripheral and transition zones.

T2 is in arbitrary units, ADC in 1e-6 mm²/s. `build_prostate` runs the steps
below in a fixed order: the random draws, hence the cases, depend on it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfds_builders.synthetic_organs.canvas import Canvas, uniform
from tfds_builders.synthetic_organs.finishing import bias_field, psf, rician
from tfds_builders.synthetic_organs.shapes import (Shape, Warp, blob, curve, in_plane_rotation,
                                                   rotation, sub_slices, tube)


@dataclasses.dataclass(frozen=True)
class _Tissue:
  """The case's (T2, ADC) intensities: fat and muscle pairs, zone values."""
  fat: tuple[float, float]
  muscle: tuple[float, float]
  t2_pz: float
  adc_pz: float
  t2_tz: float
  adc_tz: float


@dataclasses.dataclass(frozen=True)
class _Pelvis:
  """Placement of the gland and the rectum.

  Attributes:
    zg: scene z of the gland, mm.
    ry: y of the rectum axis, mm.
    rr: rectum radius, mm.
    gsemi: (3,) gland semi-axes, mm.
    gc: (3,) gland centre, mm (z, y, x).
    zline: (5,) mm, the z samples of the rectum axis.
  """
  zg: float
  ry: float
  rr: float
  gsemi: np.ndarray
  gc: np.ndarray
  zline: np.ndarray


def build_prostate(cv: Canvas) -> None:
  """Pelvic MRI, channels (T2, ADC); labels 1 = peripheral, 2 = transition zone.

  T2 is in arbitrary units; ADC in 1e-6 mm²/s. The PZ is a bright-T2,
  high-ADC shell behind and beside the TZ core, which is intermediate and
  nodular; fat is bright on T2 only, urine and seminal vesicles are bright on
  both, so no single channel threshold isolates either zone.
  """
  rng = cv.rng
  full = cv.full()
  zfov = cv.shape[0] * cv.sp[0] / 2
  # (T2, ADC) of each tissue.
  fat = (uniform(rng, 0.7, 0.8), uniform(rng, 200, 350))
  muscle = (uniform(rng, 0.18, 0.26), uniform(rng, 1300, 1500))
  t2_pz, adc_pz = uniform(rng, 0.8, 0.92), uniform(rng, 1650, 2000)
  t2_tz, adc_tz = uniform(rng, 0.4, 0.5), uniform(rng, 1100, 1400)
  tis = _Tissue(fat=fat, muscle=muscle, t2_pz=t2_pz, adc_pz=adc_pz, t2_tz=t2_tz, adc_tz=adc_tz)
  cv.image[0] = fat[0] + 0.03 * cv.noise(full, 2.0)
  cv.image[1] = fat[1]

  zg = uniform(rng, -8, 8)
  ry = uniform(rng, -25, -21)
  rr = uniform(rng, 10, 12.5)
  gsemi = np.array([uniform(rng, 17, 22), uniform(rng, 14, 17), uniform(rng, 19, 23)])
  gc = np.array([zg, ry + rr + gsemi[1] + uniform(rng, 2, 4), uniform(rng, -3, 3)])
  pel = _Pelvis(zg=zg, ry=ry, rr=rr, gsemi=gsemi, gc=gc,
                zline=np.linspace(-zfov - 10, zfov + 10, 5))

  _paint_pelvic_walls(cv, tis, pel)
  _paint_rectum(cv, pel)
  _paint_bladder(cv, pel)
  _paint_seminal_vesicles(cv, pel)
  _paint_neurovascular_bundles(cv, pel)
  _paint_gland(cv, tis, pel)
  _scanner(cv, pel)


def _paint_pelvic_walls(cv: Canvas, tis: _Tissue, pel: _Pelvis) -> None:
  """Side walls (obturator internus), pubic bones, femoral heads, levator ani."""
  rng = cv.rng
  muscle, zg, ry, rr, gsemi, gc = tis.muscle, pel.zg, pel.ry, pel.rr, pel.gsemi, pel.gc
  for side in (-1, 1):
    res = blob(cv, (0.0, uniform(rng, -5, 8), side * uniform(rng, 32, 36)),
               (80.0, uniform(rng, 22, 28), uniform(rng, 5, 7)),
               in_plane_rotation(side * uniform(rng, 5, 15)))
    if res:
      cv.paint(res[0], res[1], [muscle[0] + 0.02 * cv.noise(res[0], 1.5), muscle[1]])
    c = np.array([zg - uniform(rng, 0, 10), gc[1] + gsemi[1] + uniform(rng, 9, 13),
                  side * uniform(rng, 6, 9)])
    res = blob(cv, c, (uniform(rng, 16, 22), uniform(rng, 6, 8), uniform(rng, 5, 7)),
               rotation(rng, (10, 10, 10)))
    if res:
      cv.paint(res[0], res[1], [0.08, 350.0])
      cv.paint(res[0], res[1] + 1.3,
               [uniform(rng, 0.5, 0.6) + 0.04 * cv.noise(res[0], 1.0), 500.0])
    res = blob(cv, (zg + uniform(rng, 25, 35), uniform(rng, -5, 5), side * uniform(rng, 44, 48)),
               (22.0, 22.0, 22.0))
    if res:
      cv.paint(res[0], res[1], [0.08, 350.0])
      cv.paint(res[0], res[1] + 1.5,
               [uniform(rng, 0.5, 0.6) + 0.04 * cv.noise(res[0], 1.0), 500.0])
    # Levator ani beside the rectum below the gland.
    res = blob(cv, (zg - gsemi[0] - uniform(rng, 5, 15), ry + uniform(rng, 0, 5),
                    side * (rr + uniform(rng, 4, 7))),
               (uniform(rng, 18, 25), uniform(rng, 7, 10), uniform(rng, 2.5, 4)))
    if res:
      cv.paint(res[0], res[1], [muscle[0], muscle[1]])


def _paint_rectum(cv: Canvas, pel: _Pelvis) -> None:
  """Rectum: muscular wall, lumen with gas, fluid or a coil balloon."""
  rng = cv.rng
  sp = cv.sp
  rpts = np.stack([pel.zline, pel.ry + rng.normal(0, 2, 5), rng.normal(0, 2, 5)], axis=1)
  res = tube(cv, rpts, pel.rr)
  sl, d = res
  cv.paint(sl, d, [0.3 + 0.02 * cv.noise(sl, 1.5), 1300.0])
  lum = [(0.04, 700.0), (uniform(rng, 0.75, 0.9), 2200.0), (0.08, 300.0)][int(rng.integers(0, 3))]
  cv.paint(sl, d + 3.5 / sp[1], [lum[0] + 0.02 * cv.noise(sl, 2.0),
                                 lum[1] + 150 * cv.noise(sl, 2.0)])


def _paint_bladder(cv: Canvas, pel: _Pelvis) -> None:
  """Bladder above the gland: thin wall, urine very bright on both channels."""
  rng = cv.rng
  sp = cv.sp
  zg, gsemi, gc = pel.zg, pel.gsemi, pel.gc
  bsemi = (uniform(rng, 24, 32), uniform(rng, 20, 26), uniform(rng, 25, 32))
  bc = np.array([zg + gsemi[0] + bsemi[0] * uniform(rng, 0.6, 0.85), gc[1] + uniform(rng, 2, 8),
                 uniform(rng, -4, 4)])
  res = blob(cv, bc, bsemi, rotation(rng, (10, 10, 10)), Shape.random(rng, 0.06))
  if res:
    cv.paint(res[0], res[1], [0.3, 1500.0])
    cv.paint(res[0], res[1] + 2.5 / sp[1], [uniform(rng, 0.95, 1.05), uniform(rng, 2700, 3000)])


def _paint_seminal_vesicles(cv: Canvas, pel: _Pelvis) -> None:
  """Seminal vesicles: paired convoluted tubes above and behind the gland.

  Fluid (bright T2, high ADC) with dark septations.
  """
  rng = cv.rng
  sp = cv.sp
  gsemi, gc = pel.gsemi, pel.gc
  for side in (-1, 1):
    p0 = gc + np.array([0.5 * gsemi[0], -0.45 * gsemi[1], side * 4.0])
    p1 = p0 + np.array([uniform(rng, 10, 16), uniform(rng, -8, -3), side * uniform(rng, 18, 24)])
    pts = curve(p0, p1, rng, 3.0, n=8, harmonics=3)
    res = tube(cv, pts, uniform(rng, 4.5, 5.5))
    if res:
      sl, d = res
      cv.paint(sl, d, [0.4, 1400.0])
      sept = cv.noise(sl, 1.2)
      cv.paint(sl, d + 1.5 / sp[1], [np.where(sept > 0.8, 0.45, uniform(rng, 0.8, 0.9)),
                                     np.where(sept > 0.8, 1500.0, uniform(rng, 1800, 2100))])


def _paint_neurovascular_bundles(cv: Canvas, pel: _Pelvis) -> None:
  """Neurovascular bundles: flow voids postero-lateral to the gland."""
  rng = cv.rng
  gsemi, gc = pel.gsemi, pel.gc
  for side in (-1, 1):
    c = gc + np.array([0.0, -0.55 * gsemi[1], side * 0.85 * gsemi[2]])
    res = tube(cv, np.stack([c - [gsemi[0], 0, 0], c + [gsemi[0], 0, 0]]), uniform(rng, 1.6, 2.2))
    if res:
      cv.paint(*res, [0.15, 1500.0])


def _paint_gland(cv: Canvas, tis: _Tissue, pel: _Pelvis) -> None:
  """The gland: peripheral zone (label 1) and transition zone (label 2).

  Gland = PZ everywhere, then the TZ core (anterior, clipped to the gland)
  behind its dark pseudocapsule. Capsule: dark one-voxel rim.
  """
  rng = cv.rng
  gsemi, gc = pel.gsemi, pel.gc
  g_rot = rotation(rng, (12, 10, 6))
  g_shape = Shape.random(rng, 0.05)
  g_shape.lin = (g_shape.lin[0] + 0.08, g_shape.lin[1] + 0.06, g_shape.lin[2])  # wider base
  sl, dg = blob(cv, gc, gsemi, g_rot, g_shape, Warp.random(rng, 1.0, 30.0), pad_mm=5.0)
  cv.paint(sl, dg - 1.1, [0.28, 1300.0], label=0)
  pz_tex = cv.noise(sl, 1.0)
  cv.paint(sl, dg, [tis.t2_pz + 0.04 * pz_tex, tis.adc_pz + 80.0 * pz_tex], label=1)
  tc = gc + g_rot @ np.array([uniform(rng, 0.1, 0.2) * gsemi[0],
                              uniform(rng, 0.3, 0.4) * gsemi[1], 0.0])
  tsemi = gsemi * np.array([uniform(rng, 0.62, 0.72), uniform(rng, 0.68, 0.78),
                            uniform(rng, 0.6, 0.68)])
  res = blob(cv, tc, tsemi, g_rot, Shape.random(rng, 0.05))
  tsl, dt = res
  inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, tsl))
  dt = np.maximum(dt[sub_slices(tsl, inter)], dg[sub_slices(sl, inter)] + 0.8)
  cv.paint(inter, dt - 1.0, [0.32, 1300.0], label=1)
  # Benign nodular texture: large blobs of brighter / darker signal.
  nod = cv.noise(inter, 2.5)
  fine = cv.noise(inter, 1.0)
  cv.paint(inter, dt, [tis.t2_tz + 0.08 * nod + 0.03 * fine, tis.adc_tz + 90.0 * nod], label=2)


def _scanner(cv: Canvas, pel: _Pelvis) -> None:
  """Finishes both channels (D, H, W): T2 with an endorectal coil, ADC from DWI."""
  rng = cv.rng
  # T2: blur, coil bias (bright near the rectum at y = pel.ry), gain, Rician noise.
  gain = uniform(rng, 200, 500)
  t2 = psf(cv.image[0], (0.3, 0.6, 0.6))
  z, y, x = cv.grid(cv.full())
  coil = 1.0 + uniform(rng, 0.2, 0.5) * np.exp(-((y - pel.ry) ** 2 + x ** 2) / (2 * 25.0 ** 2))
  t2 *= bias_field(cv, 0.12) * coil * gain
  cv.image[0] = rician(cv, t2, gain * uniform(rng, 0.025, 0.04))
  # ADC: computed from lower-resolution DWI, so blurrier, Gaussian noise.
  adc = psf(cv.image[1], (0.5, 1.0, 1.0))
  adc += uniform(rng, 60, 110) * rng.standard_normal(adc.shape, dtype=np.float32)
  np.clip(adc, 0.0, None, out=adc)
  cv.image[1] = adc
