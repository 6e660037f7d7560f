r"""Seeded synthetic 3D medical volumes mimicking the 3D U²-Net MSD domains.

Modules: domains (specs, scene registry, seeds), canvas (painter's canvas,
noise), shapes (signed-distance shapes), finishing (scanner blur/bias/noise),
heart / hippocampus / prostate / abdomen (one scene each; abdomen_anatomy and
liver hold parts of the abdomen), baseline (threshold / window difficulty
checks); this module: the public API.

Six domains stand in for the Medical Segmentation Decathlon tasks of the
3D U²-Net paper (heart, liver, hippocampus, prostate, pancreas) plus spleen,
held back for the new-domain experiment. Every case is a pure function of
(domain, seed, shape): pure numpy + scipy, no downloads, ~0.13 s of one CPU
core per volume (all 6 x 32 default volumes: ~25 s).

How a case is made (painter's algorithm, see `canvas.Canvas`):
  * Structures are signed-distance shapes in mm (randomly deformed ellipsoids
    with low-order "spherical-harmonic" radius modulation and smooth sinusoidal
    warps; tubes along smooth random curves), placed with an anatomical
    location prior plus per-case jitter in position, size and orientation
    (shapes.py).
  * Each structure is painted in order over the previous ones with a soft
    occupancy (a one-voxel linear partial-volume ramp); its label is written
    where occupancy > 0.5, so label boundaries are exactly the image
    boundaries (no label noise) and occlusion is consistent (canvas.py).
  * Tissues get domain-specific textures (smoothed noise), then a point-spread
    blur and modality noise: CT in Hounsfield units with correlated Gaussian
    noise; MRI in arbitrary units with a smooth multiplicative bias field,
    per-case gain and Rician noise (ADC: Gaussian noise, lower resolution)
    (finishing.py).
  * Every target has distractors of overlapping intensity (other organs,
    vessels, bowel, grey matter, blood pools) but differs from them in shape,
    texture, wall/rim or neighbourhood, so a global intensity threshold or
    window fails (`threshold_baseline_dice` < 0.6, `window_baseline_dice` <
    0.5, baseline.py) while a small 3D CNN can learn it (the scene modules;
    liver.py: what keeps the liver's density from identifying it).

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

import zlib
from typing import Iterator, Sequence

import numpy as np

from tfds_builders.synthetic_organs.baseline import threshold_baseline_dice, window_baseline_dice
from tfds_builders.synthetic_organs.canvas import Canvas
from tfds_builders.synthetic_organs.domains import (DOMAINS, FILLS, SCENES, SPLITS,
                                                    SyntheticDomain, case_seed, get_domain)

# Names defined in domains.py and baseline.py are re-exported: callers use `generator.<name>`.
__all__ = [
    "DOMAINS", "SPLITS", "SyntheticDomain", "case_seed", "generate_case",
    "generate_split", "get_domain", "threshold_baseline_dice", "window_baseline_dice",
]


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
  cv = Canvas(shape, spacing, FILLS[dom.name], rng)
  SCENES[dom.name](cv)
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
