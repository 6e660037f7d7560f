"""What makes the liver domain's cases hard for an intensity window (abdomen.py).

Used only when the liver is the target (label 1); the pancreas and spleen
domains paint the same phantom without these steps, so their cases are
unchanged. As in real CT, intensity alone does not find the liver:

  * Contrast phase varies between cases: one enhancement level per case, from
    unenhanced to portal-venous, moves every enhancing tissue (liver, spleen,
    pancreas, kidney, vessels, bowel and stomach wall) between its unenhanced
    and its portal-venous HU, while fat and muscle stay.
  * Steatosis: in about half the cases fat lowers the liver by up to 45 HU.
    So the liver is bowel-wall-like in one case, muscle-like in another and
    spleen-like in a third; its vessels are darker than it in some, brighter
    in others.
  * The spleen is as dense as the unsteatotic liver (-10..+15 HU) in every phase.
  * The liver's density drifts smoothly inside the case (perfusion, focal fat),
    so one case's liver spans a wide band too.
  * The abdominal wall muscles are 4-8 mm thicker than in the shared phantom
    (`thicken_wall`): a large muscle-dense distractor next to the liver.

Position (right upper quadrant), shape (one large lobulated organ under the
body wall), texture, the fat plane around it and its vessel tree identify it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfds_builders.synthetic_organs.abdomen_anatomy import Body, Hu
from tfds_builders.synthetic_organs.canvas import Canvas, uniform

# Unenhanced HU of the enhancing tissues (`draw_look` interpolates from them).
_PLAIN = {"liver": 58.0, "spleen": 48.0, "panc": 42.0, "vessel": 42.0, "bowel": 38.0,
          "kidney": 32.0}


@dataclasses.dataclass(frozen=True)
class LiverLook:
  """One case's liver appearance.

  Attributes:
    enhancement: 0 (unenhanced) .. 1 (portal-venous).
    liver_pv: the liver's portal-venous HU (`tissue_hu`'s draw).
    drift: SD of the smooth density drift inside the liver, HU.
  """
  enhancement: float
  liver_pv: float
  drift: float

  def vessel_hu(self, offset: float) -> float:
    """HU of the liver's vessels, `offset` HU above the liver when portal-venous."""
    return _PLAIN["vessel"] + self.enhancement * (self.liver_pv + offset - _PLAIN["vessel"])

  def parenchyma(self, cv: Canvas, hu: Hu, sl) -> np.ndarray:
    """Liver HU over region `sl`: fine texture plus the smooth drift."""
    return (hu.liver + 7.0 * cv.noise(sl, 2.5) + 4.0 * cv.noise(sl, 1.0)
            + self.drift * cv.noise(sl, 14.0))


def draw_look(rng: np.random.Generator, hu: Hu) -> tuple[Hu, LiverLook]:
  """Moves `hu` (portal-venous, `tissue_hu`) to this case's phase and liver fat."""
  e = uniform(rng, 0.0, 1.0)
  out = {k: v + e * (getattr(hu, k) - v) for k, v in _PLAIN.items()}
  out["spleen"] = out["liver"] + uniform(rng, -10.0, 15.0)
  out["liver"] -= max(0.0, uniform(rng, -45.0, 45.0))   # steatosis
  look = LiverLook(enhancement=e, liver_pv=hu.liver, drift=uniform(rng, 6.0, 12.0))
  return dataclasses.replace(hu, **out), look


def thicken_wall(cv: Canvas, hu: Hu, body: Body) -> Body:
  """Paints a 4-8 mm muscle layer inside the body wall; returns `body` with its cavity
  shrunk accordingly (so organs painted later stay inside it)."""
  t = uniform(cv.rng, 4.0, 8.0) / cv.sp[1]
  full = cv.full()
  shell = np.maximum(body.d_cav, -(body.d_cav + t))
  cv.paint(full, shell, [hu.muscle + 6.0 * cv.noise(full, 1.6)])
  return dataclasses.replace(body, d_cav=body.d_cav + t)
