"""Params of a trained workdir (evaluate, predict, export, extension from a base run)."""

from __future__ import annotations

from typing import NamedTuple

from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from u2net_jax import config as config_lib
from u2net_jax import config_utils
from u2net_jax.errors import CheckpointError
from u2net_jax.model import models
from u2net_jax.train import checkpoint as ckpt_lib
from u2net_jax.train.state import (ModelParts, architecture, build_train_state,
                                   check_architecture, make_mesh)


class Restored(NamedTuple):
  """A checkpoint's params and what it takes to use them."""
  model: models.U2Net  # freshly initialized: its weights are not the checkpoint's
  parts: ModelParts  # parts.merge(params) is the restored model
  params: dict  # {"shared": State, "domains": {name: State}}, replicated on one device
  specs: list  # the config's DomainSpecs, in the model's domain order
  step: int  # the checkpoint's step


def restore_params(config, workdir: str, *, which: str = "best",
                   needs_data: bool = True) -> Restored:
  """The workdir's best (else latest) checkpoint; `which="latest"`: the latest.

  `needs_data=False`: the caller reads no dataset (predict, export), so an MSD
  config need not name its data folder.
  """
  config = config_lib.parse(config)
  specs = config_utils.validate(config, needs_data=needs_data)
  mesh = make_mesh(1)
  model, parts, state, _, _ = build_train_state(config, specs, mesh)
  ckpts = ckpt_lib.Checkpoints(workdir, max_to_keep=config.train.max_to_keep)
  arch = architecture(config, specs)
  abstract = ckpt_lib.abstract_like(state, NamedSharding(mesh, P()))
  check = lambda m: check_architecture(m, arch, ckpts.directory)
  restored = None
  try:
    if which == "best":
      restored = ckpts.restore_best(abstract, check_meta=check)
    if restored is None:
      restored = ckpts.restore_latest(abstract, check_meta=check)
  finally:
    ckpts.close()
  if restored is None:
    raise CheckpointError(f"{workdir} has no checkpoint: train it first (--mode=train).")
  step, state, _ = restored
  return Restored(model, parts, state["params"], specs, step)
