"""Typed, frozen configs: every key, its type and its default, in one place.

The command line and the experiment scripts work with `ml_collections`
ConfigDicts (`--config.train.lr=…` overrides); the engine reads a `Config`,
parsed once from one (`parse`):

  - defaults live here only: a key a ConfigDict does not set (an older
    workdir's config.json, a hand-written config) takes the default below —
    the code never supplies a second default with `.get(key, default)`;
  - values are cast once to the declared type (no `int()`/`float()` at use);
    a value that cannot be cast, an unknown key or a choice outside its named
    set (`options.py`) is a `ConfigError` naming the key;
  - the result is frozen: nothing downstream can change a run's config.

`defaults()` gives the same defaults as a ConfigDict, which the presets
(`experiments/five_domain.py`) start from and override. Checks that need
the domains or the model (patch divisibility, MSD folder) stay in
`config_utils.validate`, one layer up.

Core module: imports nothing of u2net_jax but `errors`, `options` and
`typed_config` (the mapping → typed dataclass machinery).
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Mapping

from u2net_jax import options, typed_config
from u2net_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """The embedded synthetic benchmark's size (tfds_builders/synthetic_organs)."""
  shape: tuple[int, ...] = ()      # () = each domain's default volume size (D, H, W)
  num_train: int = 0               # 0 = the domain's default (24)
  num_validation: int = 0          # 0 = the domain's default (8)
  base_seed: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = "synthetic"        # default source of `tasks`: synthetic | msd | nnunet
  # Comma-separated domains, each `[name=][source:]ref` (`task_entries`): 'heart,liver';
  # 'heart,nnunet:/data/Dataset004_Hippocampus'; 'hip2=nnunet:Dataset004_Hippocampus'.
  tasks: str = "heart,liver,hippocampus,prostate,pancreas"
  data_dir: str = "data/tfds"      # TFDS data_dir (built on first use)
  # msd: the root holding TaskXX_Name folders; nnunet: a DatasetXXX_Name folder or
  # the nnUNet_raw folder holding them (relative nnunet refs are looked up there).
  manual_dir: str = ""
  fold: int = 0                    # of a seeded 5-fold split
  num_shards: int = 0              # data shards (0 = one per process)
  patch_size: tuple[int, ...] = (32, 32, 32)  # voxels (D, H, W)
  source_patch: str = ""           # 'domain:DxHxW,..': cut there, resized to patch_size
  normalization: str = "nnunet"    # 'nnunet' or 'official' (data/preprocess.py)
  synthetic: SyntheticConfig = SyntheticConfig()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  mode: str = "separable"          # options.MODES
  # dense: the official code's stride-2 convs; separable: depthwise + pointwise
  # (fewer weights). Main command, 3 seeds each: dense raises the mean Dice at the
  # same step time (results/main_command_seeds.md).
  downsample: str = "dense"
  features_root: int = 8           # F0; level l has F0·2^l features
  num_levels: int = 4
  # () = isotropic stride 2 at every level; (p_D, p_H, p_W) = the official
  # `nums_pool_per_axis` (anisotropic; num_levels = max + 1; dense downsampling).
  pool_per_axis: tuple[int, ...] = ()
  deep_supervision: bool = True
  # auto = measured at the start of training (model/autotune.py) | a fixed choice
  depthwise_impl: str = "auto"     # auto | lax | shift | fused
  dense_impl: str = "auto"         # auto | lax | shift (dense k³ convs)
  compute_dtype: str = "float32"   # or bfloat16 (float32 master weights)
  # Recompute each encoder/decoder level in the backward pass (jax.checkpoint):
  # less activation memory, ~1 more forward's FLOPs. Same results.
  remat: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  # 1,400 steps with 'official' domain updates and Adam 2e-2: mean Dice 0.865
  # where the previous default (isolated, 1e-2) needed 3,000 steps for ~0.9
  # (README "Choosing the update rule": 1,400-step runs of each candidate).
  steps: int = 1400
  batch_size: int = 2              # global, one domain per step
  num_devices: int = 0             # 0 = every device of every process
  lr: float = 2e-2                 # shared weights (0.865 vs 0.842 at 1e-2, README)
  lr_domain: float = 0.0           # per-domain weights (0 = same as lr)
  weight_decay: float = 5e-5
  weight_decay_domain: float = -1.0  # < 0: same as weight_decay
  weight_decay_mode: str = "adamw"   # or 'l2' (torch Adam, the official code)
  # How idle domains are updated (train/optim.py): 'isolated' (bit-identical)
  # or 'official' (one Adam over all weights, as the official PyTorch code);
  # official: 300-step mean Dice 0.544 vs 0.259 isolated (README).
  domain_updates: str = "official"
  # Scale-aware kernel updates (train/optim.py). none: at 1,400 steps
  # param_rms (lr 0.3, isolated) reached 0.775 against 0.842 (README).
  update_scaling: str = "none"
  # constant | poly | plateau (halve on no validation gain at an evaluation)
  # | loss_plateau (the official rule, train/schedules.py).
  schedule: str = "poly"
  plateau_epoch_steps: int = 300
  plateau_window: int = 20
  plateau_min_delta: float = 1e-4
  plateau_min_lr: float = 1e-8
  warmup_steps: int = 50
  grad_clip: float = 5.0           # global norm; 0 = none
  grad_accum: int = 1
  loss: str = "dice_ce"            # options.LOSS_KINDS (msd: lovasz_focal, official)
  lovasz_classes: str = "present"  # lovasz*: 'present' or 'all' (official)
  focal_detach: bool = False       # focal*: no gradient through (1-p)^γ (official)
  dice_background: bool = True     # dice*: background in the Dice mean (nnU-Net: False)
  fg_fraction: float = 0.5         # patches centred on foreground (nnU-Net: 1/3)
  # 'official': the official code's batch rule and placement (data/pipeline.py).
  sampling: str = "nnunet"
  small_class_prob: float = 0.3
  fore_prob: float = 0.3
  small_classes: str = ""          # 'domain:class,...'; default the highest class id
  domain_weights: str = ""         # '' = round-robin; else e.g. '1,1,2,1,1'
  freeze_shared: bool = False
  frozen_domains: str = ""
  nan_policy: str = "stop"         # or 'skip'
  log_every: int = 50
  eval_every: int = 0              # 0 = only at the end
  # At each evaluation, TensorBoard gets one picture per domain (`images/<domain>`:
  # orthogonal slices of the first validation case, label and prediction overlays).
  tb_images: bool = True
  checkpoint_every: int = 250
  max_to_keep: int = 2
  data_threads: int = 2


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  # Windows every patch/4 voxels: a window's Dice falls off its centre
  # (experiments/window_offset.py); main command, same checkpoints, 3 seeds:
  # mean 0.934 at 0.75, 0.928 at 0.625, 0.915 at 0.5 (README). ~4× the windows
  # of 0.5 (nnU-Net's and the official code's; the msd preset keeps 0.5).
  overlap: float = 0.75
  mirror: bool = False
  blend: str = "gaussian"          # gaussian (nnU-Net) | official (infer/sliding_window.py)
  # official: closing + largest 1-2 components (infer/postprocess.py), as the official
  # code evaluates; it removes far false positives (main command, 3 seeds: README).
  postprocess: str = "official"    # none | official
  window_batch: int = 4
  max_cases: int = 0               # 0 = all validation cases
  during_training_max_cases: int = 0  # evaluations every eval_every steps (0 = max_cases)
  surface_tolerance_mm: float = 2.0
  dice_grid: str = "preprocessed"  # metrics grid: preprocessed | original (MSD source files)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  enabled: bool = False            # jax.distributed.initialize() (auto on Cloud TPU)
  coordinator_address: str = ""
  num_processes: int = 1
  process_id: int = 0
  cpu_collectives: str = ""        # 'gloo' for multi-process CPU runs
  heartbeat_timeout_seconds: int = 100  # a process silent this long counts as dead (JAX)
  step_timeout_seconds: float = 1800.0  # a step/save outlasting this ends the run, exit 2; 0: off


@dataclasses.dataclass(frozen=True)
class ExtendConfig:
  """Adding domains to a trained run (`init_from`; experiments/add_domain.py)."""
  new_domains: str = ""            # domains not taken from init_from
  init: str = "scratch"            # scratch | similar | copy:<base domain>
  rename: str = ""                 # 'new=old,...': take a base domain's weights
  train: str = "new"               # new: only new domains; all: everything listed
  compare_independent: bool = False  # also train an independent model, same budget


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run's config. `augment` stays a mapping: `data/augment.py`'s
  `AugmentConfig` types and checks it (the data layer owns those choices)."""
  preset: str = "default"
  seed: int = 0
  init_from: str = ""              # workdir of a trained run to extend
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  distributed: DistributedConfig = DistributedConfig()
  extend: ExtendConfig = ExtendConfig()
  augment: Mapping[str, Any] = dataclasses.field(
      default_factory=lambda: types.MappingProxyType({}))

  def to_dict(self) -> dict:
    return to_dict(self)


# The named choices, checked at parse time (section, key) → allowed values.
CHOICES = {
    ("data", "source"): options.SOURCES,
    ("data", "normalization"): options.NORMALIZATIONS,
    ("model", "mode"): options.MODES,
    ("model", "downsample"): options.DOWNSAMPLES,
    ("model", "depthwise_impl"): options.DEPTHWISE_IMPLS,
    ("model", "dense_impl"): options.DENSE_IMPLS,
    ("model", "compute_dtype"): options.COMPUTE_DTYPES,
    ("train", "weight_decay_mode"): options.WEIGHT_DECAY_MODES,
    ("train", "domain_updates"): options.DOMAIN_UPDATES,
    ("train", "update_scaling"): options.UPDATE_SCALINGS,
    ("train", "schedule"): options.SCHEDULES,
    ("train", "loss"): options.LOSS_KINDS,
    ("train", "lovasz_classes"): options.LOVASZ_CLASSES,
    ("train", "sampling"): options.SAMPLINGS,
    ("train", "nan_policy"): options.NAN_POLICIES,
    ("eval", "blend"): options.BLENDS,
    ("eval", "postprocess"): options.EVAL_POSTPROCESS,
    ("eval", "dice_grid"): options.EVAL_DICE_GRIDS,
}


@dataclasses.dataclass(frozen=True)
class TaskEntry:
  """One `data.tasks` entry, `[name=][source:]ref`, as written (nothing looked up).

  Attributes:
    name: the domain name given with `name=` ('' = the ref's: the task name for
      synthetic/msd, the dataset folder's for nnunet, data/datasets.py).
    source: one of options.SOURCES (`data.source` when the entry names none).
    ref: synthetic/msd: a task ('heart'); nnunet: a DatasetXXX_Name folder
      (absolute, or relative to data.manual_dir) or its name ('hippocampus').
    text: the entry itself, for messages.
  """
  name: str
  source: str
  ref: str
  text: str


_ENTRY_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_SOURCE_PREFIX = re.compile(r"^[A-Za-z_]+$")


def task_entries(tasks, default_source: str) -> tuple[TaskEntry, ...]:
  """`data.tasks` ('a,b' text or a sequence) as entries; a bad one is a ConfigError naming it.

  `heart` = (source default_source, ref 'heart'); `nnunet:/data/Dataset004_Hippocampus`
  names its source; `hip=msd:hippocampus` also names the domain.
  """
  items = tasks.split(",") if isinstance(tasks, str) else [str(t) for t in tasks or ()]
  items = [t.strip() for t in items if t.strip()]
  if not items:
    raise ConfigError("config.data.tasks is empty; name at least one domain.")
  out = []
  for text in items:
    name, sep, rest = text.partition("=")
    if not sep or not _ENTRY_NAME.match(name.strip()):
      name, rest = "", text
    prefix, sep, ref = rest.partition(":")
    if sep and prefix.strip() in options.SOURCES:
      source = prefix.strip()
    elif sep and _SOURCE_PREFIX.match(prefix.strip()):
      raise ConfigError(f"config.data.tasks entry {text!r}: {prefix.strip()!r} is not a data "
                        f"source; use one of {options.SOURCES}, e.g. "
                        "'nnunet:/data/nnUNet_raw/Dataset004_Hippocampus'.")
    else:
      source, ref = default_source, rest
    if not ref.strip():
      raise ConfigError(f"config.data.tasks entry {text!r} names no task or dataset.")
    out.append(TaskEntry(name.strip(), source, ref.strip(), text))
  return tuple(out)


def parse(config) -> Config:
  """A ConfigDict / mapping (or a `Config`, returned as is) → a checked, frozen `Config`."""
  if isinstance(config, Config):
    return config
  cfg = typed_config.parse_dataclass(Config, typed_config.as_mapping(config, ""), "")
  _check(cfg)
  return cfg


def model_config(value) -> ModelConfig:
  """`config.model` as a `ModelConfig`: itself, or from a ConfigDict/mapping (absent: defaults)."""
  if isinstance(value, ModelConfig):
    return value
  return typed_config.parse_dataclass(ModelConfig, typed_config.as_mapping(value, "model"), "model")


def defaults():
  """Every key's default as an `ml_collections.ConfigDict` (the presets start here)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(to_dict(Config()))


def to_dict(cfg) -> dict:
  """A `Config` (or section) as plain nested dicts/tuples (what `config.json` holds)."""
  out = {}
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    if dataclasses.is_dataclass(v):
      v = to_dict(v)
    elif isinstance(v, Mapping):
      v = dict(v)
    out[f.name] = v
  return out


def _check(cfg: Config) -> None:
  for (section, key), allowed in CHOICES.items():
    value = getattr(getattr(cfg, section), key)
    if value not in allowed:
      raise ConfigError(f"config.{section}.{key} {value!r} is not one of {allowed}.")
  m = cfg.model
  if m.num_levels < 1 or m.features_root < 1:
    raise ConfigError(f"model.num_levels ({m.num_levels}) and model.features_root "
                      f"({m.features_root}) must be ≥ 1.")
  if m.pool_per_axis and len(m.pool_per_axis) != 3:
    raise ConfigError(f"model.pool_per_axis must be 3 integers (D, H, W), got "
                      f"{m.pool_per_axis!r}.")
  if m.pool_per_axis and m.mode == "separable" and m.downsample == "separable":
    raise ConfigError("model.pool_per_axis (anisotropic pooling) needs "
                      "model.downsample='dense' in separable mode.")
  p = cfg.data.patch_size
  if len(p) != 3 or min(p) <= 0:
    raise ConfigError(f"config.data.patch_size {p} must be 3 positive ints (D, H, W).")
  t = cfg.train
  for key in ("steps", "batch_size", "grad_accum"):
    if getattr(t, key) < 1:
      raise ConfigError(f"train.{key} must be ≥ 1, got {getattr(t, key)}.")
  for key in ("log_every", "eval_every", "checkpoint_every", "max_to_keep", "warmup_steps",
              "num_devices", "data_threads"):
    if getattr(t, key) < 0:
      raise ConfigError(f"train.{key} must be ≥ 0, got {getattr(t, key)}.")
  if not 0.0 < cfg.eval.overlap < 1.0 and cfg.eval.overlap != 0.0:
    raise ConfigError(f"eval.overlap must be in [0, 1), got {cfg.eval.overlap}.")
  # The original grid's reference is the MSD source label file of the task the
  # domain is named after (data/reference.py): MSD entries, not renamed.
  other = [e.text for e in task_entries(cfg.data.tasks, cfg.data.source)
           if e.source != "msd" or e.name]
  if cfg.eval.dice_grid == "original" and other:
    raise ConfigError(f"eval.dice_grid='original' needs MSD data (data.source="
                      f"{cfg.data.source!r}; config.data.tasks entries {other} are not plain "
                      "MSD tasks): synthetic volumes have no source files; use "
                      "eval.dice_grid='preprocessed'.")
  if cfg.extend.new_domains.strip() and not cfg.init_from:
    raise ConfigError(
        f"extend.new_domains={cfg.extend.new_domains!r} adds domains to a trained run: pass "
        "--config.init_from=<workdir of that run> (e.g. runs/five_domain).")
