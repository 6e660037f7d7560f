"""Preprocessing plans: what prediction needs to treat a scan like the training data.

A `DomainPlan` holds, for one domain, everything `preprocess.preprocess_case`
and the sliding window need: modality, channel and class names, target
spacing (mm, z/y/x), normalization scheme and CT statistics, patch size
(voxels, D/H/W), plus the dataset it came from. Training writes the plans of
its domains to `<workdir>/preprocessing.json` (`write`); `load` reads that
file, or rebuilds the plans from the TFDS datasets' metadata when a workdir
predates it. Exports copy a plan into their `meta.json`.

This module imports neither JAX nor Flax (the export loader uses it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

from u2net_jax import io
from u2net_jax.errors import ConfigError

PLANS_FILE = "preprocessing.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DomainPlan:
  """How one domain's scans are preprocessed and predicted.

  Attributes:
    name: domain name.
    modality: 'CT' or 'MRI' (selects the normalization).
    channel_names: one per input channel, in channel order.
    class_names: one per output class, background first.
    target_spacing: mm (z, y, x) of the grid the model works on.
    normalization: 'nnunet' or 'official' (see data/preprocess.py).
    ct_stats: dict(p005, p995, mean, std) of the training set's foreground
      (CT with 'nnunet' normalization), else None.
    patch_size: sliding-window size, voxels (D, H, W).
    dataset_dir: the TFDS dataset the model was trained on ('' if unknown).
  """
  name: str
  modality: str
  channel_names: tuple[str, ...]
  class_names: tuple[str, ...]
  target_spacing: tuple[float, float, float]
  normalization: str = "nnunet"
  ct_stats: dict | None = None
  patch_size: tuple[int, int, int] = (64, 64, 64)
  dataset_dir: str = ""

  def __post_init__(self):
    object.__setattr__(self, "channel_names", tuple(str(c) for c in self.channel_names))
    object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
    object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
    if self.ct_stats is not None:
      object.__setattr__(self, "ct_stats", {k: float(v) for k, v in self.ct_stats.items()})
    if self.modality == "CT" and self.normalization == "nnunet" and self.ct_stats is None:
      raise ConfigError(f"Plan of CT domain {self.name!r} has no CT statistics (ct_stats).")

  @property
  def in_channels(self) -> int:
    return len(self.channel_names)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    for k in ("channel_names", "class_names", "target_spacing", "patch_size"):
      d[k] = list(d[k])
    return d

  @classmethod
  def from_dict(cls, d: Mapping) -> "DomainPlan":
    known = {f.name for f in dataclasses.fields(cls)}
    try:
      return cls(**{k: v for k, v in d.items() if k in known})
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
