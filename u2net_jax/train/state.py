"""The training state: the mesh, the model split into shared and per-domain trees, optimizers.

Shared and per-domain weights are separate trees keyed by name, so that a
step updates one domain's weights and the optimizer of each tree is its own.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from u2net_jax import config_utils, io, options
from u2net_jax.errors import CheckpointError, ConfigError
from u2net_jax.model import autotune, layers, models
from u2net_jax.train import optim

# ----------------------------------------------------------------------------
# Mesh and processes.


def maybe_initialize_distributed(config) -> None:
  """jax.distributed.initialize() when asked (flag/config) — automatic on Cloud TPU."""
  dist = config.distributed
  if not dist.enabled:
    return
  # Nothing may touch the XLA backend before initialize() (not even process_count).
  if getattr(maybe_initialize_distributed, "_done", False):
    return
  # A process that sends no heartbeat this long counts as dead: the others then end
  # (train/peers.py; their next collective usually fails long before).
  kw = {"heartbeat_timeout_seconds": dist.heartbeat_timeout_seconds}
  if dist.coordinator_address:
    kw.update(coordinator_address=dist.coordinator_address,
              num_processes=dist.num_processes, process_id=dist.process_id)
  # Only affects CPU devices (multi-process CPU runs need gloo collectives);
  # harmless on GPU/TPU. Checking the backend here would initialize it.
  jax.config.update("jax_cpu_collectives_implementation",
                    dist.cpu_collectives or "gloo")
  jax.distributed.initialize(**kw)
  maybe_initialize_distributed._done = True


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over the first `num_devices` devices (0: all of them)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices) or jax.process_count() > 1 and num_devices != len(devices):
      raise ConfigError(f"train.num_devices={num_devices} but {len(devices)} devices exist.")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


# ----------------------------------------------------------------------------
# State: shared and per-domain weights as separate trees, keyed by name.


@dataclasses.dataclass
class ModelParts:
  """What `merge` needs besides the params to rebuild the model."""
  graphdef: nnx.GraphDef
  names: tuple[str, ...]
  rest: nnx.State

  def merge(self, params) -> models.U2Net:
    return nnx.merge(self.graphdef, params["shared"],
                     *[params["domains"][n] for n in self.names], self.rest)


def domain_filter(name: str):
  return nnx.All(layers.DomainParam, lambda path, _: path[-1] == name)


def split_model(model: models.U2Net) -> tuple[ModelParts, dict]:
  """(parts, {"shared": State, "domains": {name: State}})."""
  names = model.domain_names
  graphdef, shared, *doms, rest = nnx.split(model, layers.SHARED,
                                            *[domain_filter(n) for n in names], ...)
  params = {"shared": shared, "domains": dict(zip(names, doms))}
  return ModelParts(graphdef, names, rest), params


def architecture(config, specs) -> dict:
  """What a checkpoint must match to be restored into this config."""
  m = config.model
  return {"mode": m.mode, "features_root": m.features_root,
          "num_levels": m.num_levels, "downsample": m.downsample,
          "deep_supervision": m.deep_supervision,
          **({"pool_per_axis": list(m.pool_per_axis)} if m.pool_per_axis else {}),
          "domains": {d.name: [d.in_channels, d.num_classes] for d in specs}}


def check_architecture(meta: dict, expected: dict, directory: str) -> None:
  got = meta.get("architecture")
  if got != expected:
    raise CheckpointError(
        f"{directory} holds a checkpoint of another architecture ({got}); this config "
        f"builds {expected}. Use another --workdir or the matching config.")


AUTOTUNE_FILE = "autotune.json"


def tuned_model_config(config, specs, per_device_batch: int, workdir: str, log):
  """(config.model with 'auto' impls resolved, record to keep in the workdir or None).

  A workdir that already holds `autotune.json` (a resumed run) keeps its
  choice, so a run never changes implementation half-way. Otherwise
  `model.autotune` measures (or reuses its cache); with several processes,
  process 0's choice is used by all (one program everywhere).
  """
  m = config.model
  path = os.path.join(workdir, AUTOTUNE_FILE)
  if os.path.exists(path):
    try:
      with open(path) as f:
        kept = json.load(f)
      tuned = dataclasses.replace(m, depthwise_impl=kept["depthwise_impl"],
                                  dense_impl=kept["dense_impl"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"{path} is not readable ({e}); delete it to measure again.") from None
    log(f"autotune: resuming with depthwise {tuned.depthwise_impl!r}, dense "
        f"{tuned.dense_impl!r} ({path})")
    return tuned, None
  tuned, report = autotune.tune(specs, m, per_device_batch, config.data.patch_size, log=log)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ids = np.array([options.DEPTHWISE_IMPLS.index(tuned.depthwise_impl),
                    options.DENSE_IMPLS.index(tuned.dense_impl)], np.int32)
    ids = multihost_utils.broadcast_one_to_all(ids)
    tuned = dataclasses.replace(m, depthwise_impl=options.DEPTHWISE_IMPLS[int(ids[0])],
                                dense_impl=options.DENSE_IMPLS[int(ids[1])])
  record = {"depthwise_impl": tuned.depthwise_impl, "dense_impl": tuned.dense_impl,
            "configured": {"depthwise_impl": m.depthwise_impl, "dense_impl": m.dense_impl},
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "measurements": report}
  return tuned, record


def write_autotune_record(workdir: str, record) -> None:
  if record is not None and jax.process_index() == 0:
    io.write_json(os.path.join(workdir, AUTOTUNE_FILE), record)


def build_train_state(config, specs, mesh):
  """(model, parts, state, tx_shared, tx_domain); state = {params, opt, step}, replicated."""
  model = models.build_model(specs, config.model, seed=config.seed)
  parts, params = split_model(model)
  tcfg = config.train
  scaling = tcfg.update_scaling
  tx_shared = optim.make_tx(tcfg.weight_decay, tcfg.weight_decay_mode, scaling=scaling)
  wd_d = tcfg.weight_decay_domain if tcfg.weight_decay_domain >= 0 else tcfg.weight_decay
  tx_domain = optim.make_tx(wd_d, tcfg.weight_decay_mode, scaling=scaling)
  frozen = set(config_utils.split_names(tcfg.frozen_domains))
  opt = optim.init_opt_state(params["shared"], params["domains"], tx_shared, tx_domain,
                             freeze_shared=tcfg.freeze_shared,
                             frozen_domains=frozen)
  state = {"params": params, "opt": opt, "step": jnp.zeros((), jnp.int32)}
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  return model, parts, state, tx_shared, tx_domain
