"""Optax updates for shared + per-domain weights, with frozen groups.

The trainable weights are kept as separate pytrees: `shared` and one per
domain (`domains[name]`), each with its own optimizer state (and Adam step
count). With `isolated` updates a step on domain d updates the shared group
and group d only; every other domain's weights AND optimizer state are
carried through untouched
(`lax.cond` per domain, so they are bit-identical — Adam moments and weight
decay would otherwise move idle domains). A frozen group (the shared weights
when adding a domain, or listed domains) has no optimizer state at all.

Domain-update semantics (`train.domain_updates`):
  isolated  as above: an idle domain's weights and optimizer state are
            bit-identical across a step on another domain. Always used when
            extending a trained run (extend.training_overrides).
  official  what the official PyTorch code does: one Adam over all weights,
            and with PyTorch < 2.0 `zero_grad()` leaves zero tensors (not None),
            so every domain steps every step — idle domains keep moving on their
            Adam momentum (and, with L2 weight decay, towards zero). The
            default preset's choice (README "Choosing the update rule").

Scale-aware updates (`train.update_scaling`): every conv is followed by an
instance norm, so only a filter's direction matters and Adam (≈ lr per weight
per step) turns it at a rate lr / rms(kernel). Kaiming fan-in init makes
depthwise (fan-in 27) and pointwise kernels 5–6× larger than dense 3³ ones
(fan-in 27·C), so at one lr the separable filters turn ~5× slower.
  none         plain Adam.
  param_rms    kernels' Adam updates × rms(kernel) (`optax.scale_by_param_block_rms`,
               Adafactor's relative step): every kernel turns at ≈ lr per step
               whatever its fan-in; norms and biases keep plain Adam.
  trust_ratio  kernels' updates rescaled to ‖kernel‖/‖update‖ (LAMB,
               `optax.scale_by_trust_ratio`): like param_rms but the update's
               own size is normalized away too.

Learning rates are passed to `apply_updates` each step (host-side schedules
such as plateau halving need no recompilation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from u2net_jax import options
from u2net_jax.errors import ConfigError

DOMAIN_UPDATES = options.DOMAIN_UPDATES
UPDATE_SCALINGS = options.UPDATE_SCALINGS


def is_kernel(leaf) -> bool:
  """Conv kernels are the ≥ 2-D leaves ((k, k, k, C) depthwise, (k, k, k, in, out) dense)."""
  return getattr(leaf, "ndim", 0) >= 2


def _kernel_scaling(scaling: str) -> optax.GradientTransformation:
  if scaling == "param_rms":
    inner = optax.scale_by_param_block_rms(min_scale=1e-3)
  elif scaling == "trust_ratio":
    inner = optax.scale_by_trust_ratio()
  else:
    raise ConfigError(f"train.update_scaling {scaling!r} is not one of {UPDATE_SCALINGS}.")
  return optax.masked(inner, lambda params: jax.tree.map(is_kernel, params))


def make_tx(weight_decay: float, mode: str = "adamw", b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, scaling: str = "none") -> optax.GradientTransformation:
  """Adam direction without the learning rate (applied in `apply_updates`).

  mode 'adamw': decoupled weight decay (Loshchilov & Hutter);
  mode 'l2': L2 added to the gradient before Adam (torch.optim.Adam's
  weight_decay, as in the official code).
  scaling: one of UPDATE_SCALINGS (see the module docstring), applied last
  (after the decay, as in LAMB).
  """
  if mode == "adamw":
    parts = [optax.scale_by_adam(b1, b2, eps), optax.add_decayed_weights(weight_decay)]
  elif mode == "l2":
    parts = [optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1, b2, eps)]
  else:
    raise ConfigError(f"train.weight_decay_mode {mode!r} is not 'adamw' or 'l2'.")
  if scaling != "none":
    parts.append(_kernel_scaling(scaling))
  return optax.chain(*parts)


def check_domain_updates(value: str) -> str:
  if value not in DOMAIN_UPDATES:
    raise ConfigError(f"train.domain_updates {value!r} is not one of {DOMAIN_UPDATES}.")
  return value


def init_opt_state(shared, domains: dict, tx_shared, tx_domain, *, freeze_shared: bool,
                   frozen_domains=()) -> dict:
  """{'shared': state | None, 'domains': {name: state}} (frozen groups absent)."""
  return {
      "shared": None if freeze_shared else tx_shared.init(shared),
      "domains": {n: tx_domain.init(p) for n, p in domains.items() if n not in frozen_domains},
  }


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def apply_updates(params: dict, grads: dict, opt_state: dict, active: jax.Array, *,
                  names: tuple[str, ...], tx_shared, tx_domain, lr_shared: jax.Array,
                  lr_domain: jax.Array, domain_updates: str = "isolated") -> tuple[dict, dict]:
  """One optimizer step for the active domain index.

  Args:
    params: {'shared': tree, 'domains': {name: tree}}.
    grads: same structure (other domains' grads are zeros and ignored).
    opt_state: from `init_opt_state`.
    active: int32 scalar, index into `names`.
    domain_updates: 'isolated' (only the active domain's group steps) or
      'official' (every non-frozen domain group steps, idle ones on zero grads).
  Returns:
    (new params, new opt_state).
  """
  new_params = {"shared": params["shared"], "domains": dict(params["domains"])}
  new_state: dict[str, Any] = {"shared": opt_state["shared"],
                               "domains": dict(opt_state["domains"])}
  if opt_state["shared"] is not None:
    upd, new_state["shared"] = tx_shared.update(grads["shared"], opt_state["shared"],
                                                params["shared"])
    new_params["shared"] = jax.tree.map(lambda p, u: p - lr_shared * u, params["shared"], upd)
  for i, name in enumerate(names):
    if name not in opt_state["domains"]:
      continue  # frozen: no state, no update

    def step(operand, name=name):
      p, g, s = operand
      upd, s = tx_domain.update(g, s, p)
      return jax.tree.map(lambda a, u: a - lr_domain * u, p, upd), s

    def keep(operand):
      p, _, s = operand
      return p, s

    if domain_updates == "official":
      new_params["domains"][name], new_state["domains"][name] = step(
          (params["domains"][name], grads["domains"][name], opt_state["domains"][name]))
      continue
    new_params["domains"][name], new_state["domains"][name] = lax.cond(
        active == i, step, keep,
        (params["domains"][name], grads["domains"][name], opt_state["domains"][name]))
  return new_params, new_state


def clip_grads(grads: dict, max_norm: float) -> tuple[dict, jax.Array]:
  """Clips the whole gradient (shared + domains) to `max_norm` (≤ 0: no clip)."""
  norm = _norm(grads)
  if max_norm <= 0:
    return grads, norm
  scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
  return jax.tree.map(lambda g: g * scale, grads), norm
