"""Workdir or export folder? The one place that decides, and what each gives.

`open_source(path)` answers it for `run.py`, `predict.run` and
`review.open_predictors`: an export folder (`W/export/<domain>`, written by
`--mode=export`, read by `exported`) or a workdir (config.json, plans,
checkpoints). The `ModelSource` it returns gives a domain's plan (no weights
read) and its `Predictor`s, whichever kind it is.

Loading an export imports neither Flax nor the model (tests/test_layout.py):
the workdir path's modules (config_utils, train, model, jax) are imported
inside the functions that only a workdir reaches.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from u2net_jax import domains as domains_lib
from u2net_jax.data import plans
from u2net_jax.data.plans import DomainPlan
from u2net_jax.errors import ConfigError
from u2net_jax.infer import exported, postprocess
from u2net_jax.infer.predictor import Predictor

EXPORT = "export"
WORKDIR = "workdir"
# The file `config_utils.load_config` reads (config_utils itself is imported
# only on the workdir path: it imports the model).
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A workdir or an export folder, and how its plans and predictors are read.

  Attributes:
    kind: 'export' or 'workdir'.
    path: the folder.
    config: a workdir's config (the caller's, else its config.json); for an
      export, the caller's config (usually None: an export has none).
  """
  kind: str
  path: str
  config: Any = None

  @property
  def is_export(self) -> bool:
    return self.kind == EXPORT

  def plan(self, domain: str, *, log=print) -> DomainPlan:
    """The preprocessing plan of `domain`, without reading any weights.

    An export holds one domain ('' = that one; another name is a ConfigError);
    a workdir needs `domain` (ConfigError naming its domains otherwise).
    """
    if self.is_export:
      return exported.read_plan(self.path, domain=domain)
    spec, _ = resolve_domain(self.config, domain)
    return plans.load(self.path, self.config, [spec], log=log)[spec.name]

  def predictor(self, domain: str, *, log=print) -> Predictor:
    """The `Predictor` of `domain` (a workdir's: its best, else latest checkpoint)."""
    if self.is_export:
      return exported.load(self.path, domain=domain)
    return from_workdir(self.config, self.path, domain, log=log)

  def predictors(self, domains: str | Sequence[str] = "", *, log=print) -> list[Predictor]:
    """One `Predictor` per domain, each with its stored post-processing decision.

    Args:
      domains: names to keep ('a,b' or a list; empty = all). An export gives
        its one domain (checked when `domains` names exactly one).
    """
    if isinstance(domains, str):
      domains = domains.split(",")
    wanted = [d.strip() for d in domains if d.strip()]
    if self.is_export:
      return [exported.load(self.path, domain=wanted[0] if len(wanted) == 1 else "")]
    from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top — workdir only
    from u2net_jax.train import train  # pylint: disable=g-import-not-at-top — workdir only
    specs = config_utils.resolve_domains(self.config)
    chosen = [domains_lib.lookup(specs, n) for n in wanted] if wanted else list(specs)
    plan_of = plans.load(self.path, self.config, chosen, log=log)
    restored = train.restore_params(self.config, self.path, needs_data=False)
    params, step = restored.params, restored.step
    out = []
    for spec in chosen:
      p = from_params(self.config, spec, plan_of[spec.name], params, step,
                      os.path.abspath(self.path))
      p.decision = postprocess.read_decision(self.path, spec.name, step)
      out.append(p)
    return out


def open_source(path: str, config=None) -> ModelSource:
  """The model at `path`: an export folder if it is one, else a workdir.

  Args:
    path: `W/export/<domain>` or a workdir.
    config: the caller's config (--config); None reads a workdir's config.json.
  Raises:
    ConfigError: `path` is neither (the message names it), or its config.json
      does not read.
  """
  if exported.is_export_dir(path):
    return ModelSource(EXPORT, path, config)
  if config is None:
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
      raise ConfigError(f"{path!r} is neither a workdir (it has no {CONFIG_FILE}) nor an "
                        f"export folder (no {exported.META_FILE} of format "
                        f"{exported.FORMAT!r}; --mode=export writes W/export/<domain>).")
    from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top — workdir only
    config = config_utils.load_config(path)
  return ModelSource(WORKDIR, path, config)


# ----------------------------------------------------------------------------
# From a workdir (`predict` re-exports these names).

def resolve_domain(config, domain: str):
  """The DomainSpec called `domain` among the config's (ConfigError otherwise)."""
  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top — workdir only
  specs = config_utils.resolve_domains(config)
  if not domain:
    raise ConfigError(f"--domain is required; this model knows {[s.name for s in specs]}.")
  return domains_lib.lookup(specs, domain), specs


def from_params(config, spec, plan: DomainPlan, params, step: int, source: str = "") -> Predictor:
  """The in-process predictor of domain `spec` from a universal model's params.

  It runs the same pure function (`domain_model.make_apply`, shared + this
  domain's weights) that `--mode=export` serializes.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import domain_model  # pylint: disable=g-import-not-at-top
  weights = jax.device_put(domain_model.weights_of(params, spec, config.model))
  apply = jax.jit(domain_model.make_apply(spec, config.model))
  ev = config.eval
  return Predictor(plan=plan, fn=lambda x: np.asarray(apply(weights, x)),
                   overlap=ev.overlap, window_batch=ev.window_batch,
                   mirror=ev.mirror, blend=ev.blend,
                   source_patch=config_utils.source_patch_for(config, spec.name),
                   step=int(step), source=source)


def from_workdir(config, workdir: str, domain: str, *, log=print) -> Predictor:
  """The predictor of `domain` from the workdir's best (else latest) checkpoint."""
  from u2net_jax.train import train  # pylint: disable=g-import-not-at-top — workdir only
  spec, _ = resolve_domain(config, domain)
  plan = plans.load(workdir, config, [spec], log=log)[spec.name]
  restored = train.restore_params(config, workdir, needs_data=False)
  params, step = restored.params, restored.step
  return from_params(config, spec, plan, params, step, os.path.abspath(workdir))
