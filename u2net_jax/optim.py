"""Optax updates for shared + per-domain weights, with frozen groups.

The trainable weights are kept as separate pytrees: `shared` and one per
domain (`domains[name]`), each with its own optimizer state (and Adam step
count). A step on domain d updates the shared group and group d only; every
other domain's weights AND optimizer state are carried through untouched
(`lax.cond` per domain, so they are bit-identical — Adam moments and weight
decay would otherwise move idle domains). A frozen group (the shared weights
when adding a domain, or listed domains) has no optimizer state at all.

Learning rates are passed to `apply_updates` each step (host-side schedules
such as plateau halving need no recompilation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from u2net_jax.errors import ConfigError


def make_tx(weight_decay: float, mode: str = "adamw", b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam direction without the learning rate (applied in `apply_updates`).

  mode 'adamw': decoupled weight decay (Loshchilov & Hutter);
  mode 'l2': L2 added to the gradient before Adam (torch.optim.Adam's
  weight_decay, as in the official code).
  """
  if mode == "adamw":
    return optax.chain(optax.scale_by_adam(b1, b2, eps), optax.add_decayed_weights(weight_decay))
  if mode == "l2":
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1, b2, eps))
  raise ConfigError(f"train.weight_decay_mode {mode!r} is not 'adamw' or 'l2'.")


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
                  lr_domain: jax.Array) -> tuple[dict, dict]:
  """One optimizer step for the active domain index.

  Args:
    params: {'shared': tree, 'domains': {name: tree}}.
    grads: same structure (other domains' grads are zeros and ignored).
    opt_state: from `init_opt_state`.
    active: int32 scalar, index into `names`.
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
