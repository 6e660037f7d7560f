"""Domains: what the model must know about each organ/modality it segments.

A domain is identified by its name everywhere (parameters, optimizer state,
metrics, exports). Channel and class counts may differ between domains.

`DomainSpec` is the one description of a domain: the preprocessing plan
(`data.plans.DomainPlan`) and the synthetic benchmark's domains
(`tfds_builders.synthetic_organs.domains.SyntheticDomain`) are DomainSpecs
with fields added, so names, counts and checks live here only.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping, Sequence

from u2net_jax.errors import ConfigError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class DomainSpec:
  """One segmentation domain.

  Attributes:
    name: lower-case identifier, e.g. 'heart'; keys every per-domain weight.
    channel_names: one name per input channel, e.g. ('T2', 'ADC').
    class_names: one name per output class, background first.
    modality: 'CT' or 'MRI' (selects intensity normalization).
    spacing: target voxel spacing in mm, (z, y, x).
    patch_size: training patch, voxels (D, H, W).
  """
  name: str
  channel_names: tuple[str, ...]
  class_names: tuple[str, ...]
  modality: str = "MRI"
  spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
  patch_size: tuple[int, int, int] = (64, 64, 64)

  def __post_init__(self):
    if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
      raise ConfigError(
          f"Domain name {self.name!r} is invalid: use lower-case letters, "
          "digits and '_' starting with a letter (it becomes a parameter key).")
    object.__setattr__(self, "channel_names", tuple(self.channel_names))
    object.__setattr__(self, "class_names", tuple(self.class_names))
    object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
    if not self.channel_names:
      raise ConfigError(f"Domain {self.name!r} needs at least one input channel.")
    if len(self.class_names) < 2:
      raise ConfigError(
          f"Domain {self.name!r} needs at least 2 classes (background first), "
          f"got {list(self.class_names)}.")
    if self.modality not in ("CT", "MRI"):
      raise ConfigError(
          f"Domain {self.name!r}: modality {self.modality!r} is not 'CT' or 'MRI'.")
    if len(self.spacing) != 3 or min(self.spacing) <= 0:
      raise ConfigError(
          f"Domain {self.name!r}: spacing {self.spacing} must be 3 positive mm values (z, y, x).")
    if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
      raise ConfigError(
          f"Domain {self.name!r}: patch_size {self.patch_size} must be 3 positive ints.")

  @property
  def in_channels(self) -> int:
    return len(self.channel_names)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping) -> "DomainSpec":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ConfigError(f"Unknown DomainSpec fields {sorted(unknown)}; known: {sorted(known)}.")
    return cls(**dict(d))


def check_unique(domains: Sequence[DomainSpec]) -> tuple[DomainSpec, ...]:
  """Returns `domains` as a tuple after checking names are unique and non-empty."""
  domains = tuple(domains)
  if not domains:
    raise ConfigError("At least one domain is required.")
  names = [d.name for d in domains]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ConfigError(f"Duplicate domain names: {dup}.")
  return domains


def lookup(domains: Iterable[DomainSpec], name: str) -> DomainSpec:
  """The domain called `name`, or a ConfigError listing the known names."""
  domains = tuple(domains)
  for d in domains:
    if d.name == name:
      return d
  raise ConfigError(
      f"Unknown domain {name!r}; this model knows {[d.name for d in domains]}.")


# The paper's five MSD domains (+ spleen, used for the new-domain experiment),
# with the official code's target spacings (mm, z/y/x).
MSD_DOMAINS: dict[str, DomainSpec] = {
    d.name: d for d in (
        DomainSpec("heart", ("MRI",), ("background", "left_atrium"), "MRI",
                   (1.37, 1.25, 1.25)),
        DomainSpec("liver", ("CT",), ("background", "liver"), "CT",
                   (1.0, 0.77, 0.77)),
        DomainSpec("hippocampus", ("MRI",), ("background", "anterior", "posterior"),
                   "MRI", (1.0, 1.0, 1.0)),
        DomainSpec("prostate", ("T2", "ADC"),
                   ("background", "peripheral_zone", "transition_zone"), "MRI",
                   (3.6, 0.625, 0.625)),
        DomainSpec("pancreas", ("CT",), ("background", "pancreas"), "CT",
                   (2.5, 0.8, 0.8)),
        DomainSpec("spleen", ("CT",), ("background", "spleen"), "CT",
                   (5.0, 0.8, 0.8)),
    )
}
