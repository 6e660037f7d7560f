"""Config → domains, validation, and the resolved config saved in a workdir."""

from __future__ import annotations

import json
import os

import ml_collections

from u2net_jax import domains as domains_lib
from u2net_jax import options
from u2net_jax.data import pipeline, preprocess, rescale
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError
from u2net_jax.infer import sliding_window
from u2net_jax.model import layers, models

SOURCES = ("synthetic", "msd")


def split_names(value) -> list[str]:
  """'a,b' or a sequence → ['a', 'b'] (empty string → [])."""
  if isinstance(value, str):
    return [t.strip() for t in value.split(",") if t.strip()]
  return [str(t) for t in (value or ())]


def domain_weights(config, specs) -> list[float] | None:
  """`train.domain_weights` ('' = round-robin, else one weight per domain)."""
  w = config.train.get("domain_weights", "")
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
  """`config.data.tasks` ('a,b' string or a sequence) as a list of names."""
  tasks = config.data.tasks
  if isinstance(tasks, str):
    names = [t.strip() for t in tasks.split(",") if t.strip()]
  else:
    names = [str(t) for t in tasks]
  if not names:
    raise ConfigError("config.data.tasks is empty; name at least one domain.")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ConfigError(f"config.data.tasks lists {dup} more than once.")
  return names


def _synthetic_specs() -> dict[str, DomainSpec]:
  from tfds_builders.synthetic_organs import generator  # pylint: disable=g-import-not-at-top
  return {
      name: DomainSpec(name, tuple(d.channel_names), tuple(d.class_names), d.modality,
                       tuple(d.spacing))
      for name, d in generator.DOMAINS.items()}


def available_domains(source: str) -> dict[str, DomainSpec]:
  if source == "synthetic":
    return _synthetic_specs()
  if source == "msd":
    return dict(domains_lib.MSD_DOMAINS)
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
  """The DomainSpecs named by `config.data.tasks`, with the config's patch size."""
  known = available_domains(config.data.source)
  patch = patch_size(config)
  specs = []
  for name in task_names(config):
    if name not in known:
      raise ConfigError(
          f"Unknown domain {name!r} in config.data.tasks for source "
          f"{config.data.source!r}; known: {sorted(known)}.")
    d = known[name]
    specs.append(DomainSpec(d.name, d.channel_names, d.class_names, d.modality,
                            d.spacing, patch))
  return tuple(specs)


LOVASZ_CLASSES = ("present", "all")
SCHEDULES = ("constant", "poly", "plateau", "loss_plateau")
EVAL_POSTPROCESS = ("none", "official")
EVAL_DICE_GRIDS = ("preprocessed", "original")  # evaluate.evaluate_domain


def loss_options(tcfg) -> dict:
  """`losses.segmentation_loss` options of `train.loss` from the train config.

  train.lovasz_classes: 'present' (classes in the batch's labels) or 'all'
  (the official code: `lovasz_softmax(..., only_present=False)`);
  train.focal_detach: no gradient through focal's (1-p)^γ (the official code).
  """
  kind = tcfg.get("loss", "dice_ce")
  if kind not in options.LOSS_KINDS:
    raise ConfigError(f"train.loss {kind!r} is not one of {options.LOSS_KINDS}.")
  out = {}
  if kind in ("lovasz", "lovasz_focal"):
    classes = str(tcfg.get("lovasz_classes", "present"))
    if classes not in LOVASZ_CLASSES:
      raise ConfigError(f"train.lovasz_classes {classes!r} is not one of {LOVASZ_CLASSES}.")
    out["classes"] = classes
  if kind in ("focal", "lovasz_focal"):
    out["detach_modulator"] = bool(tcfg.get("focal_detach", False))
  return out


def validate(config, *, needs_data: bool = False) -> tuple[DomainSpec, ...]:
  """Checks the config before any work; returns its domains.

  `needs_data`: the mode reads data, so an MSD config must name its folder.
  """
  m = config.model
  layers.check_mode(m.mode, m.downsample)
  if int(m.num_levels) < 1 or int(m.features_root) < 1:
    raise ConfigError(
        f"model.num_levels ({m.num_levels}) and model.features_root ({m.features_root}) "
        "must be ≥ 1.")
  if models.parse_pools(m.get("pool_per_axis", ())) and m.mode == "separable" and (
      m.downsample == "separable"):
    raise ConfigError("model.pool_per_axis (anisotropic pooling) needs "
                      "model.downsample='dense' in separable mode.")
  if m.compute_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.compute_dtype {m.compute_dtype!r} is not float32 or bfloat16.")
  tcfg = config.get("train", None)
  if tcfg is not None:
    if tcfg.get("domain_updates", "isolated") not in options.DOMAIN_UPDATES:
      raise ConfigError(f"train.domain_updates {tcfg.domain_updates!r} is not one of "
                        f"{options.DOMAIN_UPDATES}.")
    if tcfg.get("update_scaling", "none") not in options.UPDATE_SCALINGS:
      raise ConfigError(f"train.update_scaling {tcfg.update_scaling!r} is not one of "
                        f"{options.UPDATE_SCALINGS}.")
    if tcfg.get("schedule", "poly") not in SCHEDULES:
      raise ConfigError(f"train.schedule {tcfg.schedule!r} is not one of {SCHEDULES}.")
    loss_options(tcfg)
    if tcfg.get("sampling", "nnunet") not in pipeline.SAMPLINGS:
      raise ConfigError(f"train.sampling {tcfg.sampling!r} is not one of {pipeline.SAMPLINGS}.")
  ev = config.get("eval", None)
  if ev is not None and ev.get("blend", "gaussian") not in sliding_window.BLENDS:
    raise ConfigError(f"eval.blend {ev.blend!r} is not one of {sliding_window.BLENDS}.")
  if ev is not None and ev.get("postprocess", "none") not in EVAL_POSTPROCESS:
    raise ConfigError(f"eval.postprocess {ev.postprocess!r} is not one of {EVAL_POSTPROCESS}.")
  if ev is not None and ev.get("dice_grid", "preprocessed") not in EVAL_DICE_GRIDS:
    raise ConfigError(f"eval.dice_grid {ev.dice_grid!r} is not one of {EVAL_DICE_GRIDS}.")
  if ev is not None and ev.get("dice_grid", "preprocessed") == "original" and (
      config.data.source != "msd"):
    # The original grid's reference is the source label file (data/reference.py).
    raise ConfigError(f"eval.dice_grid='original' needs MSD data (data.source='msd', got "
                      f"{config.data.source!r}): synthetic volumes have no source files; "
                      "use eval.dice_grid='preprocessed'.")
  norm = config.data.get("normalization", "nnunet")
  if norm not in preprocess.SCHEMES:
    raise ConfigError(f"data.normalization {norm!r} is not one of {preprocess.SCHEMES}.")
  rescale.source_patches(config)  # data.source_patch: 'domain:DxHxW,...'
  specs = resolve_domains(config)
  ext = config.get("extend", None)
  if ext is not None and split_names(ext.get("new_domains", "")) and not config.get(
      "init_from", ""):
    raise ConfigError(
        f"extend.new_domains={ext.new_domains!r} adds domains to a trained run: pass "
        "--config.init_from=<workdir of that run> (e.g. runs/five_domain).")
  if needs_data and config.data.source == "msd":
    manual = config.data.get("manual_dir", "")
    if not manual:
      raise ConfigError(
          "The msd preset reads MSD data: pass --config.data.manual_dir=/path/to/MSD "
          "(the folder holding Task02_Heart, Task03_Liver, ...).")
    if not os.path.isdir(manual):
      raise ConfigError(f"config.data.manual_dir {manual!r} is not a folder.")
  divisor = models.pool_divisor(
      models.level_strides(int(m.num_levels), models.parse_pools(m.get("pool_per_axis", ()))))
  patch = patch_size(config)
  if any(p % d for p, d in zip(patch, divisor)):
    pools = tuple(m.get("pool_per_axis", ())) or "isotropic"
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
  """Writes the resolved config as `<workdir>/config.json`; returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} does not exist: is {workdir!r} a workdir of this project?")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is not a readable config: {e}") from None
