"""The update step: loss and gradients of one batch of one domain, clipping, the optimizers.

One program for every domain: the step takes the domain as a traced int32,
per-domain weights are gathered inside it (see layers.DomainSelector), and
inputs are zero-padded to the largest channel count.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from u2net_jax import config_utils, host_memory
from u2net_jax.errors import ConfigError
from u2net_jax.model import models
from u2net_jax.train import losses, optim
from u2net_jax.train.state import ModelParts


def make_train_step(parts: ModelParts, model: models.U2Net, config, tx_shared, tx_domain):
  """step(state, batch, lr_shared, lr_domain) -> (state, {"loss", "grad_norm", "finite"})."""
  tcfg = config.train
  counts = jnp.array([d.num_classes for d in model.domains])
  max_k = model.max_num_classes
  accum = tcfg.grad_accum
  freeze_shared = tcfg.freeze_shared
  loss_kw = config_utils.loss_options(tcfg)

  def loss_fn(params, image, label, domain):
    if freeze_shared:
      # No weight gradient for frozen shared weights: none computed, none
      # counted in the clipping norm.
      params = {"shared": jax.lax.stop_gradient(params["shared"]),
                "domains": params["domains"]}
    logits = parts.merge(params)(image, domain)
    mask = jnp.arange(max_k) < counts[domain]
    return losses.segmentation_loss(logits, label, kind=tcfg.loss, class_mask=mask, **loss_kw)

  grad_fn = jax.value_and_grad(loss_fn)

  def step(state, batch, lr_shared, lr_domain):
    params = state["params"]
    domain = batch["domain"]
    if accum == 1:
      loss, grads = grad_fn(params, batch["image"], batch["label"], domain)
    else:
      def micro(carry, xs):
        l, g = grad_fn(params, xs[0], xs[1], domain)
        return jax.tree.map(jnp.add, carry, (l, g)), None
      split = lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:])
      zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
      (loss, grads), _ = jax.lax.scan(micro, zero, (split(batch["image"]), split(batch["label"])))
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    grads, gnorm = optim.clip_grads(grads, tcfg.grad_clip)
    new_params, new_opt = optim.apply_updates(
        params, grads, state["opt"], domain, names=parts.names, tx_shared=tx_shared,
        tx_domain=tx_domain, lr_shared=lr_shared, lr_domain=lr_domain,
        domain_updates=optim.check_domain_updates(tcfg.domain_updates))
    # A non-finite loss or gradient leaves the state as it was (the caller
    # then stops or skips, by config): no NaN ever reaches a checkpoint.
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {"params": keep(new_params, params), "opt": keep(new_opt, state["opt"]),
                 "step": state["step"] + finite.astype(jnp.int32)}
    return new_state, {"loss": loss, "grad_norm": gnorm, "finite": finite}

  return step


def learning_rate(tcfg, step: int, plateau_scale: float) -> tuple[float, float]:
  """(shared lr, domain lr) at `step` for `train.schedule`."""
  total = max(tcfg.steps, 1)
  if tcfg.schedule == "constant":
    factor = 1.0
  elif tcfg.schedule == "poly":
    factor = (1 - min(step, total - 1) / total) ** 0.9
  elif tcfg.schedule in ("plateau", "loss_plateau"):
    factor = plateau_scale
  else:
    raise ConfigError(f"train.schedule {tcfg.schedule!r} is not constant, poly, plateau or "
                      "loss_plateau.")
  warm = tcfg.warmup_steps
  if warm and step < warm:
    factor *= (step + 1) / warm
  lr_d = tcfg.lr_domain if tcfg.lr_domain > 0 else tcfg.lr
  return tcfg.lr * factor, lr_d * factor


class CompiledStep(NamedTuple):
  """The compiled update step and what feeds it.

  The step takes and returns the state as its flat list of leaves (order of
  `jax.tree.leaves(state)`; `treedef` rebuilds it): rebuilding the pytree of
  Flax variables around ~1,600 arrays on every call cost ~16 ms of Python per
  step on a 2-core CPU (500 steps of the default preset: 86.5 s → 78.6 s).
  """
  fn: Callable  # (leaves, global batch, lr_shared, lr_domain) -> (leaves, out); donates leaves
  to_global: Callable[[dict], dict]  # a host batch → arrays over the whole mesh
  trace_seconds: float
  seconds: float  # tracing and compiling
  treedef: object = None  # the state's pytree structure


def compile_train_step(step_fn, mesh, batch_size: int, state, patch, channels: int, start: int,
                       plateau_scale: float, tcfg, meanwhile: Callable[[], object] = lambda: None,
                       release_memory: bool = True) -> tuple[CompiledStep, object]:
  """Compiles `step_fn` for global batches (batch_size, *patch, channels) while `meanwhile()` runs.

  Traced from the batch's shapes alone (no data needed), then compiled in a
  background thread: XLA's compiler releases the GIL, so on a 2-core CPU the
  first run's data build (`meanwhile`) overlaps the compile. Returns the
  compiled step and what `meanwhile` returned (its exceptions propagate, after
  the compile ends). `release_memory`: return the compiler's freed heap to
  the OS afterwards (`host_memory.release_free_memory`; off only to measure it).
  """
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))
  treedef = jax.tree.structure(state)

  def flat_step(leaves, batch, lr_s, lr_d):
    new_state, out = step_fn(jax.tree.unflatten(treedef, leaves), batch, lr_s, lr_d)
    new_leaves, new_def = jax.tree.flatten(new_state)
    if new_def != treedef:
      raise AssertionError(f"the step changed the state's structure: {new_def} != {treedef}")
    return new_leaves, out

  jit_step = jax.jit(flat_step, donate_argnums=(0,),
                     out_shardings=(replicated, replicated))

  def to_global(b):
    out = {}
    for k in ("image", "label"):
      local = b[k]
      out[k] = jax.make_array_from_process_local_data(
          data_sharding, local, (batch_size,) + local.shape[1:])
    out["domain"] = jax.device_put(jnp.int32(b["domain"]), replicated)
    return out

  t0 = time.time()
  # The shapes and dtypes of to_global(PatchSampler.batch(step)).
  example = {
      "image": jax.ShapeDtypeStruct((batch_size, *patch, channels), jnp.float32,
                                    sharding=data_sharding),
      "label": jax.ShapeDtypeStruct((batch_size, *patch), jnp.int32, sharding=data_sharding),
      "domain": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
  lr0 = learning_rate(tcfg, start, plateau_scale)
  lowered = jit_step.lower(jax.tree.leaves(state), example, *map(jnp.float32, lr0))
  trace_s = time.time() - t0

  def compile_():
    compiled = lowered.compile()
    return compiled, time.time() - t0

  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile") as pool:
    pending = pool.submit(compile_)
    try:
      result = meanwhile()
    finally:
      compiled, seconds = pending.result()
  # The compiler's freed heap (~1 GB on the cpu preset) would otherwise stay
  # resident under the step's buffers (host_memory.py).
  if release_memory:
    host_memory.release_free_memory()
  return CompiledStep(compiled, to_global, trace_s, seconds, treedef), result
