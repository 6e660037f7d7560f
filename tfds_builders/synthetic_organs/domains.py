"""The synthetic domains: their specs (`SyntheticDomain`), scene builders and case seeds.

Six domains stand in for the Medical Segmentation Decathlon tasks of the
3D U²-Net paper (heart, liver, hippocampus, prostate, pancreas) plus spleen,
held back for the new-domain experiment.

A `SyntheticDomain` is a `u2net_jax.domains.DomainSpec` (names, modality,
spacing, `in_channels`, `num_classes` and their checks) plus what the
generator needs: the default volume shape and case counts.
`u2net_jax.domains` imports no JAX, so the builder stays light.
"""

from __future__ import annotations

import dataclasses

from tfds_builders.synthetic_organs.abdomen import build_abdomen
from tfds_builders.synthetic_organs.heart import build_heart
from tfds_builders.synthetic_organs.hippocampus import build_hippocampus
from tfds_builders.synthetic_organs.prostate import build_prostate
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class SyntheticDomain(DomainSpec):
  """One synthetic segmentation domain (one TFDS builder config).

  Attributes (besides DomainSpec's, whose `patch_size` the generator ignores):
    shape: default volume shape (D, H, W), voxels; `spacing` (mm, z/y/x) is
      the spacing at this shape.
    num_train: default number of training cases.
    num_validation: default number of validation cases.
  """
  _: dataclasses.KW_ONLY
  shape: tuple[int, int, int]
  num_train: int = 24
  num_validation: int = 8

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
    if len(self.shape) != 3 or min(self.shape) < 16:
      raise ConfigError(
          f"Synthetic domain {self.name!r}: shape {self.shape} must be 3 ints, each >= 16.")


# Spacings mimic each MSD task's anisotropy; the anatomy is a scaled phantom
# (the CT body is ~110 mm wide) so every volume fits in 48-80 voxels a side.
# Fields in DomainSpec's order: name, channel_names, class_names, modality, spacing.
DOMAINS: dict[str, SyntheticDomain] = {
    d.name: d for d in (
        SyntheticDomain("heart", ("MRI",), ("background", "left_atrium"), "MRI",
                        (1.37, 1.25, 1.25), shape=(48, 64, 64)),
        SyntheticDomain("liver", ("CT",), ("background", "liver"), "CT",
                        (2.5, 1.5, 1.5), shape=(48, 80, 80)),
        SyntheticDomain("hippocampus", ("MRI",), ("background", "anterior", "posterior"),
                        "MRI", (1.0, 1.0, 1.0), shape=(48, 48, 48)),
        SyntheticDomain("prostate", ("T2", "ADC"),
                        ("background", "peripheral_zone", "transition_zone"), "MRI",
                        (3.6, 1.25, 1.25), shape=(48, 64, 64)),
        SyntheticDomain("pancreas", ("CT",), ("background", "pancreas"), "CT",
                        (2.0, 1.5, 1.5), shape=(48, 80, 80)),
        SyntheticDomain("spleen", ("CT",), ("background", "spleen"), "CT",
                        (3.0, 1.5, 1.5), shape=(48, 80, 80)),
    )
}

# Seed layout of `case_seed`: disjoint blocks per (base_seed, domain, split).
_MAX_CASES = 500_000
_DOMAIN_BLOCK = len(SPLITS) * _MAX_CASES
_BASE_BLOCK = 100 * _DOMAIN_BLOCK

# The scene builder of each domain: paints a canvas (canvas.Canvas) in place.
# Their order sets each domain's seed block in `case_seed`.
SCENES = {
    "heart": build_heart,
    "liver": lambda cv: build_abdomen(cv, "liver"),
    "hippocampus": build_hippocampus,
    "prostate": build_prostate,
    "pancreas": lambda cv: build_abdomen(cv, "pancreas"),
    "spleen": lambda cv: build_abdomen(cv, "spleen"),
}
# Initial intensities (per channel) before any structure is painted.
FILLS = {"heart": (0.0,), "liver": (-1000.0,), "hippocampus": (0.0,),
         "prostate": (0.0, 0.0), "pancreas": (-1000.0,), "spleen": (-1000.0,)}


def get_domain(domain: str | SyntheticDomain) -> SyntheticDomain:
  """Returns the built-in domain called `domain` (or `domain` itself).

  Raises:
    ValueError: unknown name, or a SyntheticDomain with no scene builder.
  """
  if isinstance(domain, SyntheticDomain):
    if domain.name not in SCENES:
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
  return (base_seed * _BASE_BLOCK + list(SCENES).index(d.name) * _DOMAIN_BLOCK
          + SPLITS.index(split) * _MAX_CASES + index)
