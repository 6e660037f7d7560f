"""Preprocessing plans: what prediction needs to treat a scan like the training data.

A `DomainPlan` holds, for one domain, everything `preprocess.preprocess_case`
and the sliding window need: modality, channel and class names, target
spacing (mm, z/y/x), normalization scheme and CT statistics, patch size
(voxels, D/H/W), plus the dataset it came from. Training writes the plans of
its domains to `<workdir>/preprocessing.json` (`write`); `load` reads that
file, or rebuilds the plans from the TFDS datasets' metadata when a workdir
predates it. Exports copy a plan into their `meta.json`.

A `DomainPlan` is a `domains.DomainSpec` (a subclass) plus the preprocessing
fields `normalization`, `ct_stats` and `dataset_dir`: the names, counts
(`in_channels`, `num_classes`) and checks of a domain live in DomainSpec
only, and a plan goes wherever a spec does. A subclass rather than a held
spec, so that every reader keeps `plan.name`, `plan.patch_size`, ... with no
forwarding properties. Two things keep the plans file's shape:
`target_spacing` is the spec's `spacing` (a read-only alias, the name the
file and prediction use), and the constructor keeps the file's argument order
(name, modality, channel_names, class_names, target_spacing, ...), so
`to_dict`/`from_dict` write and read exactly the keys of format version 1.

This module imports neither JAX nor Flax (the export loader uses it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

from u2net_jax import io
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError

PLANS_FILE = "preprocessing.json"
FORMAT_VERSION = 1
# The keys of one domain's plan in the plans file and in an export's meta.json, in order.
PLAN_KEYS = ("name", "modality", "channel_names", "class_names", "target_spacing",
             "normalization", "ct_stats", "patch_size", "dataset_dir")


@dataclasses.dataclass(frozen=True, init=False)
class DomainPlan(DomainSpec):
  """How one domain's scans are preprocessed and predicted: a DomainSpec plus preprocessing.

  Attributes (besides DomainSpec's; `spacing` is the target spacing):
    target_spacing: mm (z, y, x) of the grid the model works on (= `spacing`).
    normalization: 'nnunet' or 'official' (see data/preprocess.py).
    ct_stats: dict(p005, p995, mean, std) of the training set's foreground
      (CT with 'nnunet' normalization), else None.
    dataset_dir: the TFDS dataset the model was trained on ('' if unknown).
  """
  normalization: str = "nnunet"
  ct_stats: dict | None = None
  dataset_dir: str = ""

  def __init__(self, name: str, modality: str, channel_names: Sequence[str],
               class_names: Sequence[str], target_spacing: Sequence[float],
               normalization: str = "nnunet", ct_stats: Mapping | None = None,
               patch_size: Sequence[int] = (64, 64, 64), dataset_dir: str = ""):
    """Arguments in the plans file's order; `patch_size` in voxels (D, H, W)."""
    for k, v in (("name", name), ("modality", modality), ("channel_names", channel_names),
                 ("class_names", class_names), ("spacing", target_spacing),
                 ("normalization", normalization), ("ct_stats", ct_stats),
                 ("patch_size", patch_size), ("dataset_dir", dataset_dir)):
      object.__setattr__(self, k, v)
    self.__post_init__()

  def __post_init__(self):
    object.__setattr__(self, "channel_names", tuple(str(c) for c in self.channel_names))
    object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
    super().__post_init__()
    if self.ct_stats is not None:
      object.__setattr__(self, "ct_stats", {k: float(v) for k, v in self.ct_stats.items()})
    if self.modality == "CT" and self.normalization == "nnunet" and self.ct_stats is None:
      raise ConfigError(f"Plan of CT domain {self.name!r} has no CT statistics (ct_stats).")

  @property
  def target_spacing(self) -> tuple[float, float, float]:
    """mm (z, y, x): the spec's `spacing`, under the plans file's name."""
    return self.spacing

  def to_dict(self) -> dict:
    """The plan as stored: PLAN_KEYS in order, sequences as lists."""
    d = {k: getattr(self, k) for k in PLAN_KEYS}
    for k in ("channel_names", "class_names", "target_spacing", "patch_size"):
      d[k] = list(d[k])
    if d["ct_stats"] is not None:
      d["ct_stats"] = dict(d["ct_stats"])
    return d

  @classmethod
  def from_dict(cls, d: Mapping) -> "DomainPlan":
    """The plan stored as `d` (keys other than PLAN_KEYS are ignored)."""
    try:
      return cls(**{k: v for k, v in d.items() if k in PLAN_KEYS})
    except TypeError as e:
      raise ConfigError(f"Malformed preprocessing plan {dict(d)}: {e}") from None


def from_metadata(spec, metadata: Mapping, dataset_dir: str = "") -> DomainPlan:
  """The plan of `spec` (a DomainSpec) from its TFDS dataset's info metadata."""
  md = dict(metadata)
  return DomainPlan(
      name=spec.name,
      modality=md.get("modality", spec.modality),
      channel_names=md.get("channel_names") or spec.channel_names,
      class_names=md.get("class_names") or spec.class_names,
      target_spacing=md.get("target_spacing") or spec.spacing,
      normalization=md.get("normalization", "nnunet"),
      ct_stats=md.get("ct_stats"),
      patch_size=spec.patch_size,
      dataset_dir=os.path.abspath(dataset_dir) if dataset_dir else "")


def write(workdir: str, plans: Sequence[DomainPlan]) -> str:
  """Writes `<workdir>/preprocessing.json` atomically; returns its path."""
  body = {"format_version": FORMAT_VERSION, "domains": {p.name: p.to_dict() for p in plans}}
  return io.write_json(os.path.join(workdir, PLANS_FILE), body)


def read(workdir: str) -> dict[str, DomainPlan] | None:
  """The plans stored in `workdir`, or None if it has no plans file."""
  path = os.path.join(workdir, PLANS_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      body = json.load(f)
    return {n: DomainPlan.from_dict(d) for n, d in body["domains"].items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ConfigError(f"{path} is not a readable preprocessing plan: {e}") from None


def load(workdir: str, config, specs, *, log=print) -> dict[str, DomainPlan]:
  """{domain name: plan} for `specs`: the workdir's file, else the datasets' metadata.

  The fallback (workdirs trained before plans were stored) builds or opens the
  config's TFDS datasets, exactly as training did.
  """
  stored = read(workdir) or {}
  missing = [s for s in specs if s.name not in stored]
  if missing:
    from u2net_jax.data import datasets  # pylint: disable=g-import-not-at-top
    dirs = datasets.ensure_built(config, missing, log=log)
    for s in missing:
      stored[s.name] = from_metadata(s, datasets.metadata(dirs[s.name]), dirs[s.name])
  return {s.name: stored[s.name] for s in specs}
