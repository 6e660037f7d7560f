"""Start a run from another run's weights: add, remove, rename or subset domains.

`config.init_from` names the workdir of a trained run (the *base*). The new
run's domains (`config.data.tasks`) take their weights from the base:

  * a domain the base has (or maps to through `extend.rename`, 'new=old,...')
    gets that domain's weights, unchanged;
  * a domain listed in `extend.new_domains` is new: its weights are the fresh
    initialization (`extend.init='scratch'`), or a copy of the most similar
    base domain (`'similar'`: same modality, channels and classes, nearest
    spacing) or of a named one (`'copy:liver'`);
  * a base domain not in `data.tasks` is dropped (removing a domain).

Shared weights always come from the base, which must have the same
architecture. `extend.train='new'` (the add-a-domain setting) freezes every
shared weight and every old domain — no optimizer state for them — and only
samples the new domains; `'all'` trains everything listed (e.g. fine-tuning a
subset of domains from a checkpoint).

`extension_report` is the new run's `summary["extension"]`: the new domains'
Dice, the parameters they added and, with `extend.compare_independent`, the
Dice of an independent model trained on them with the same budget.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.tree_util import DictKey

from u2net_jax import config as config_lib
from u2net_jax import config_utils
from u2net_jax.errors import CheckpointError, ConfigError
from u2net_jax.model import models

INIT_KINDS = ("scratch", "similar")  # or 'copy:<base domain>'
TRAIN_KINDS = ("new", "all")


@dataclasses.dataclass(frozen=True)
class Extension:
  """Where each domain of the new run gets its weights.

  Attributes:
    base_workdir: the run the weights come from.
    sources: new domain name → base domain name whose weights it takes
      (absent: freshly initialized).
    new_domains: the domains not taken from the base under their own role
      (listed in `extend.new_domains`).
    train: 'new' or 'all'.
  """
  base_workdir: str
  sources: dict
  new_domains: tuple
  train: str


class Base(NamedTuple):
  """The base run as the new run starts from it."""
  extension: Extension
  params: dict  # {"shared": ..., "domains": {name: ...}} on the host
  step: int  # the base checkpoint's step


def _rename_map(value) -> dict:
  out = {}
  for item in config_utils.split_names(value):
    new, sep, old = item.partition("=")
    if not sep or not new.strip() or not old.strip():
      raise ConfigError(f"extend.rename item {item!r} is not 'new=old'.")
    out[new.strip()] = old.strip()
  return out


def _similar(spec, base_specs) -> str | None:
  """The base domain most like `spec`: same channels and classes, then modality, then spacing."""
  fits = [b for b in base_specs
          if (b.in_channels, b.num_classes) == (spec.in_channels, spec.num_classes)]
  if not fits:
    return None
  def distance(b):
    spacing = float(np.linalg.norm(np.log(np.asarray(b.spacing) / np.asarray(spec.spacing))))
    return (b.modality != spec.modality, spacing)
  return min(fits, key=distance).name


def make_extension(config, specs, base_config, base_specs) -> Extension:
  """Checks that `config` can start from the base run; says where each domain comes from."""
  base_dir = config.init_from
  ext = config.extend
  arch_keys = ("mode", "features_root", "num_levels", "downsample", "deep_supervision",
               "pool_per_axis")
  diff = [k for k in arch_keys if getattr(config.model, k) != getattr(base_config.model, k)]
  if diff:
    raise CheckpointError(
        f"init_from={base_dir!r} is a run of another architecture: model."
        + ", model.".join(f"{k} is {getattr(base_config.model, k)!r} there and "
                          f"{getattr(config.model, k)!r} here" for k in diff) + ".")
  base_by_name = {s.name: s for s in base_specs}
  new = tuple(config_utils.split_names(ext.new_domains))
  rename = _rename_map(ext.rename)
  init = ext.init
  train = ext.train
  if train not in TRAIN_KINDS:
    raise ConfigError(f"extend.train {train!r} is not one of {TRAIN_KINDS}.")
  if init not in INIT_KINDS and not init.startswith("copy:"):
    raise ConfigError(f"extend.init {init!r} is not 'scratch', 'similar' or 'copy:<domain>'.")
  names = [s.name for s in specs]
  unknown_new = [n for n in new if n not in names]
  if unknown_new:
    raise ConfigError(f"extend.new_domains {unknown_new} are not in data.tasks {names}.")
  sources = {}
  for spec in specs:
    n = spec.name
    if n in new:
      src = None
      if init == "similar":
        src = _similar(spec, base_specs)
      elif init.startswith("copy:"):
        src = init.split(":", 1)[1]
        if src not in base_by_name:
          raise ConfigError(f"extend.init={init!r}: {base_dir!r} has no domain {src!r} "
                            f"(it has {sorted(base_by_name)}).")
      if src is not None:
        b = base_by_name[src]
        if (b.in_channels, b.num_classes) != (spec.in_channels, spec.num_classes):
          raise ConfigError(
              f"extend.init={init!r}: {src!r} has {b.in_channels} channels/{b.num_classes} "
              f"classes, {n!r} needs {spec.in_channels}/{spec.num_classes}.")
        sources[n] = src
      continue
    src = rename.get(n, n)
    if src not in base_by_name:
      raise CheckpointError(
          f"The checkpoint in {base_dir!r} has no domain {src!r} (it has "
          f"{', '.join(sorted(base_by_name))}); add {n!r} to --config.extend.new_domains "
          f"to train it as a new domain, or map it with --config.extend.rename={n}=<old>.")
    b = base_by_name[src]
    if (b.in_channels, b.num_classes) != (spec.in_channels, spec.num_classes):
      raise CheckpointError(
          f"Domain {n!r} has {spec.in_channels} channels/{spec.num_classes} classes but "
          f"{src!r} in {base_dir!r} has {b.in_channels}/{b.num_classes}.")
    sources[n] = src
  if train == "new" and not new:
    raise ConfigError("extend.train='new' trains only new domains, but extend.new_domains "
                      "is empty.")
  return Extension(base_dir, sources, new, train)


def training_overrides(extension: Extension, specs) -> dict:
  """train.* values that make `extension.train` happen (freeze, sample only new domains).

  An extension always isolates domain updates: a domain that is not sampled
  must not drift on optimizer momentum (optim.DOMAIN_UPDATES).
  """
  if extension.train == "all":
    return {"domain_updates": "isolated"}
  names = [s.name for s in specs]
  return {"domain_updates": "isolated", "freeze_shared": True,
          "frozen_domains": ",".join(n for n in names if n not in extension.new_domains),
          "domain_weights": ",".join("1" if n in extension.new_domains else "0" for n in names)}


def _by_role(tree, name: str) -> dict:
  """{path with the domain key replaced by a placeholder: leaf} of a domain's weights."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = tuple("<domain>" if isinstance(k, DictKey) and k.key == name else str(k)
                for k in path)
    out[key] = leaf
  return out


def rekey_domain(tree, src: str, dst_template, dst: str):
  """`src`'s weights laid out as `dst_template` (the same leaves, keyed by `dst`)."""
  values = _by_role(tree, src)

  def take(path, leaf):
    key = tuple("<domain>" if isinstance(k, DictKey) and k.key == dst else str(k)
                for k in path)
    v = values.get(key)
    if v is None or np.shape(v) != np.shape(leaf):
      raise CheckpointError(f"Weights of {src!r} do not fit domain {dst!r} at {key}.")
    return v
  return jax.tree_util.tree_map_with_path(take, dst_template)


def init_params(extension: Extension, params: dict, base_params: dict) -> dict:
  """New params: shared and mapped domains from the base, the rest as initialized."""
  domains = dict(params["domains"])
  for n, src in extension.sources.items():
    domains[n] = rekey_domain(base_params["domains"][src], src, params["domains"][n], n)
  shared = jax.tree.map(lambda new, old: _same_shape(new, old), params["shared"],
                        base_params["shared"])
  return {"shared": shared, "domains": domains}


def _same_shape(new, old):
  if np.shape(new) != np.shape(old):
    raise CheckpointError(f"shared weight shape {np.shape(old)} in the base run differs from "
                          f"{np.shape(new)} here.")
  return old


# ----------------------------------------------------------------------------
# The report: what the new domains reached and cost.

def independent_config(config):
  """The same run as an independent model on the new domains only, from scratch (a `Config`)."""
  config = config_lib.parse(config)
  new_names = config_utils.split_names(config.extend.new_domains)
  replace = dataclasses.replace
  return replace(
      config, init_from="",
      extend=replace(config.extend, new_domains="", compare_independent=False),
      model=replace(config.model, mode="independent"),
      data=replace(config.data, tasks=",".join(new_names)),
      train=replace(config.train, freeze_shared=False, frozen_domains="", domain_weights=""))


def extension_report(config, workdir, extension, base_step, summary, counts, log, *,
                     train_independent: Callable[..., dict]) -> dict | None:
  """New-domain Dice, parameters added, and (optionally) an independent model's Dice.

  `train_independent(config, workdir) -> summary` trains the comparison model
  (`extend.compare_independent`): the training loop itself, called again.
  None when a SIGTERM stopped the independent model's run (it saved; rerun).
  """
  specs = config_utils.resolve_domains(config)
  new = list(extension.new_domains)
  one_independent = {}
  for spec in specs:
    if spec.name in new:
      one = models.build_model([spec], dataclasses.replace(config.model, mode="independent"))
      one_independent[spec.name] = models.param_counts(one)["total"]
  report = {
      "init_from": os.path.abspath(extension.base_workdir), "base_step": int(base_step),
      "sources": dict(extension.sources), "trained": extension.train, "new_domains": {}}
  for n in new:
    added = counts["per_domain"][n]
    report["new_domains"][n] = {
        "mean_dice": summary["domains"][n]["mean_dice"],
        "params_added": added,
        "params_added_pct_of_independent": 100.0 * added / one_independent[n],
        "independent_model_params": one_independent[n]}
  if new and config.extend.compare_independent:
    sub_dir = os.path.join(workdir, "independent_" + "_".join(new))
    log(f"training an independent model on {', '.join(new)} with the same budget in {sub_dir}")
    sub = train_independent(independent_config(config), sub_dir)
    if sub.get("preempted"):
      return None  # the caller exits; a rerun resumes the comparison run
    for n in new:
      report["new_domains"][n]["independent_mean_dice"] = sub["domains"][n]["mean_dice"]
  return report
