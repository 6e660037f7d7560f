"""Config → domains, validation, and the resolved config saved in a workdir."""

from __future__ import annotations

import json
import os


from u2net_jax import config as config_lib
from u2net_jax import io
from u2net_jax import domains as domains_lib
from u2net_jax import options
from u2net_jax.data import datasets, rescale
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError, DataError
from u2net_jax.model import models

SOURCES = options.SOURCES


def split_names(value) -> list[str]:
  """'a,b' or a sequence → ['a', 'b'] (empty string → [])."""
  if isinstance(value, str):
    return [t.strip() for t in value.split(",") if t.strip()]
  return [str(t) for t in (value or ())]


def domain_weights(config, specs) -> list[float] | None:
  """`train.domain_weights` ('' = round-robin, else one weight per domain)."""
  w = config.train.domain_weights
  if not w:
    return None
  try:
    values = [float(x) for x in split_names(w)]
  except ValueError:
    raise ConfigError(f"train.domain_weights {w!r} must be numbers.") from None
  if len(values) != len(specs):
    raise ConfigError(f"train.domain_weights has {len(values)} values for {len(specs)} domains.")
  return values


def task_names(config) -> list[str]:
  """The domain names of `config.data.tasks` (entries `[name=][source:]ref`), in order."""
  return [t.name for t in datasets.tasks(config)]


def _synthetic_specs() -> dict[str, DomainSpec]:
  from tfds_builders.synthetic_organs import generator  # pylint: disable=g-import-not-at-top
  return {
      name: DomainSpec(name, tuple(d.channel_names), tuple(d.class_names), d.modality,
                       tuple(d.spacing))
      for name, d in generator.DOMAINS.items()}


def available_domains(source: str) -> dict[str, DomainSpec]:
  """The named domains of `source` (nnunet has none: its domains are dataset folders)."""
  if source == "synthetic":
    return _synthetic_specs()
  if source == "msd":
    return dict(domains_lib.MSD_DOMAINS)
  if source == "nnunet":
    return {}
  raise ConfigError(f"config.data.source {source!r} is not one of {SOURCES}.")


def patch_size(config) -> tuple[int, int, int]:
  p = config.data.patch_size
  if isinstance(p, str):
    p = [s for s in p.replace("x", ",").split(",") if s.strip()]
  try:
    p = tuple(int(s) for s in p)
  except (TypeError, ValueError):
    raise ConfigError(f"config.data.patch_size {config.data.patch_size!r} is not 3 ints.") from None
  if len(p) != 3 or min(p) <= 0:
    raise ConfigError(f"config.data.patch_size {p} must be 3 positive ints (D, H, W).")
  return p


def resolve_domains(config) -> tuple[DomainSpec, ...]:
  """The DomainSpecs named by `config.data.tasks`, with the config's patch size.

  synthetic / msd domains are known by name; an nnU-Net domain's channels,
  classes, modality and spacing come from its dataset (`datasets.nnunet_spec_fields`).
  """
  patch = patch_size(config)
  specs = []
  for t in datasets.tasks(config):
    if t.source == "nnunet":
      try:
        f = datasets.nnunet_spec_fields(config, t.ref)
      except DataError as e:
        raise DataError(f"Domain {t.name!r} of config.data.tasks: {e}") from None
      specs.append(DomainSpec(t.name, f["channel_names"], f["class_names"], f["modality"],
                              f["spacing"], patch))
      continue
    known = available_domains(t.source)
    if t.ref not in known:
      raise ConfigError(
          f"Unknown domain {t.ref!r} in config.data.tasks for source "
          f"{t.source!r}; known: {sorted(known)}.")
    d = known[t.ref]
    specs.append(DomainSpec(t.name, d.channel_names, d.class_names, d.modality,
                            d.spacing, patch))
  return tuple(specs)


def loss_options(tcfg) -> dict:
  """`losses.segmentation_loss` options of `train.loss` from the (typed) train config.

  train.lovasz_classes: 'present' (classes in the batch's labels) or 'all'
  (the official code: `lovasz_softmax(..., only_present=False)`);
  train.focal_detach: no gradient through focal's (1-p)^γ (the official code);
  train.dice_background: class 0 in the Dice mean (nnU-Net leaves it out).
  """
  out = {}
  if tcfg.loss in ("dice", "dice_ce"):
    out["include_background"] = tcfg.dice_background
  if tcfg.loss in ("lovasz", "lovasz_focal"):
    out["classes"] = tcfg.lovasz_classes
  if tcfg.loss in ("focal", "lovasz_focal"):
    out["detach_modulator"] = tcfg.focal_detach
  return out


def validate(config, *, needs_data: bool = False) -> tuple[DomainSpec, ...]:
  """Checks the config before any work; returns its domains.

  Keys, types and named choices are checked by `config.parse` (u2net_jax/config.py);
  here what needs the domains or the model. `needs_data`: the mode reads
  data, so an MSD config must name its folder.
  """
  cfg = config_lib.parse(config)
  rescale.source_patches(cfg)  # data.source_patch: 'domain:DxHxW,...'
  specs = resolve_domains(cfg)
  if needs_data and any(t.source == "msd" for t in datasets.tasks(cfg)):
    if not cfg.data.manual_dir:
      raise ConfigError(
          "The msd preset reads MSD data: pass --config.data.manual_dir=/path/to/MSD "
          "(the folder holding Task02_Heart, Task03_Liver, ...).")
    if not os.path.isdir(cfg.data.manual_dir):
      raise ConfigError(f"config.data.manual_dir {cfg.data.manual_dir!r} is not a folder.")
  m = cfg.model
  divisor = models.pool_divisor(models.level_strides(m.num_levels, m.pool_per_axis))
  patch = cfg.data.patch_size
  if any(p % d for p, d in zip(patch, divisor)):
    pools = m.pool_per_axis or "isotropic"
    shown = divisor[0] if len(set(divisor)) == 1 else divisor
    raise ConfigError(
        f"config.data.patch_size {patch} is not divisible by {shown} (the pooling of "
        f"num_levels={m.num_levels}, pool_per_axis {pools}).")
  return specs


def source_patch_for(config, name: str):
  """Domain `name`'s source patch (D, H, W) from `data.source_patch`; None unless resized."""
  return rescale.source_patch_of(rescale.source_patches(config), name, patch_size(config))


def default_workdir(config_path: str, preset: str) -> str:
  stem = os.path.splitext(os.path.basename(config_path))[0]
  return os.path.join("runs", f"{stem}_{preset}" if preset else stem)


def save_config(config, workdir: str) -> str:
  """Writes the resolved config (typed, with every default) as `<workdir>/config.json`."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  io.write_json(path, config_lib.parse(config).to_dict(), sort_keys=True)
  return path


def load_config(workdir: str) -> config_lib.Config:
  """`<workdir>/config.json` as a typed `Config` (keys it lacks take today's defaults)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} does not exist: is {workdir!r} a workdir of this project?")
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is not a readable config: {e}") from None
  try:
    return config_lib.parse(values)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None
