"""optim.py: domain-update semantics and scale-aware kernel updates, on small trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2net_jax.train import extend, optim
from u2net_jax.errors import ConfigError

NAMES = ("heart", "prostate")


def _params(kernel_scale=(1.0, 1.0)):
  rng = np.random.default_rng(0)
  dom = lambda s: {"dw": jnp.asarray(rng.standard_normal((3, 3, 3, 4)) * s, jnp.float32),
                   "norm_scale": jnp.ones((4,), jnp.float32),
                   "norm_bias": jnp.zeros((4,), jnp.float32)}
  return {"shared": {"pw": jnp.asarray(rng.standard_normal((1, 1, 1, 4, 4)), jnp.float32)},
          "domains": {"heart": dom(kernel_scale[0]), "prostate": dom(kernel_scale[1])}}


def _grads(params, active: int, seed: int):
  """A gradient for the shared group and the active domain; zeros for the idle one."""
  rng = np.random.default_rng(seed)
  g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
  for i, n in enumerate(NAMES):
    if i != active:
      g["domains"][n] = jax.tree.map(jnp.zeros_like, g["domains"][n])
  return g


def _run(params, semantics, steps, tx, lr=1e-2):
  state = optim.init_opt_state(params["shared"], params["domains"], tx, tx,
                               freeze_shared=False)
  for t, active in enumerate(steps):
    params, state = optim.apply_updates(
        params, _grads(params, active, t), state, jnp.int32(active), names=NAMES,
        tx_shared=tx, tx_domain=tx, lr_shared=jnp.float32(lr), lr_domain=jnp.float32(lr),
        domain_updates=semantics)
  return params, state


def test_isolated_idle_domain_is_bit_identical_after_it_trained():
  tx = optim.make_tx(1e-3, "l2")
  after_prostate, state = _run(_params(), "isolated", [1], tx)
  final, final_state = _run(_params(), "isolated", [1, 0, 0, 0], tx)
  for a, b in zip(jax.tree.leaves(after_prostate["domains"]["prostate"]),
                  jax.tree.leaves(final["domains"]["prostate"])):
    np.testing.assert_array_equal(a, b)
  # Its Adam state (moments and count) did not move either.
  for a, b in zip(jax.tree.leaves(state["domains"]["prostate"]),
                  jax.tree.leaves(final_state["domains"]["prostate"])):
    np.testing.assert_array_equal(a, b)


def test_official_equals_one_adam_over_all_weights():
  # The official code: one torch Adam over every weight, grads zeroed (not
  # None) each step, so idle domains step on momentum and L2 decay.
  tx = optim.make_tx(1e-3, "l2")
  steps = [1, 0, 0, 1, 0]
  ours, _ = _run(_params(), "official", steps, tx)
  params = _params()
  state = tx.init(params)
  for t, active in enumerate(steps):
    upd, state = tx.update(_grads(params, active, t), state, params)
    params = jax.tree.map(lambda p, u: p - 1e-2 * u, params, upd)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # ... and the idle prostate weights did move after its one step.
  once, _ = _run(_params(), "official", [1], tx)
  assert not np.array_equal(once["domains"]["prostate"]["dw"], ours["domains"]["prostate"]["dw"])


@pytest.mark.parametrize("scaling", ["param_rms", "trust_ratio"])
def test_scale_aware_kernels_turn_at_the_same_rate_whatever_their_size(scaling):
  # Two domains whose kernels differ 5× in size (like depthwise vs dense
  # fan-in init) get the same gradient direction: with scaling their relative
  # change is equal; plain Adam turns the big one ~5× slower.
  def relative_change(scaling):
    tx = optim.make_tx(0.0, "adamw", scaling=scaling)
    p0 = _params(kernel_scale=(0.05, 0.25))
    p0["domains"]["prostate"]["dw"] = p0["domains"]["heart"]["dw"] * 5.0
    p = p0
    for active in (0, 1):
      p, _ = _run(p, "isolated", [active], tx)
    return [float(jnp.linalg.norm(p["domains"][n]["dw"] - p0["domains"][n]["dw"])
                  / jnp.linalg.norm(p0["domains"][n]["dw"])) for n in NAMES]
  plain = relative_change("none")
  scaled = relative_change(scaling)
  assert plain[0] / plain[1] == pytest.approx(5.0, rel=0.05)
  assert scaled[0] / scaled[1] == pytest.approx(1.0, rel=0.05)


def test_scaling_leaves_norm_and_bias_updates_to_plain_adam():
  p = _params()
  g = _grads(p, 0, 0)
  plain = optim.make_tx(0.0, "adamw", scaling="none")
  scaled = optim.make_tx(0.0, "adamw", scaling="param_rms")
  u_plain, _ = plain.update(g, plain.init(p), p)
  u_scaled, _ = scaled.update(g, scaled.init(p), p)
  for key in ("norm_scale", "norm_bias"):
    np.testing.assert_array_equal(u_plain["domains"]["heart"][key],
                                  u_scaled["domains"]["heart"][key])
  rms = float(jnp.sqrt(jnp.mean(p["domains"]["heart"]["dw"] ** 2)))
  np.testing.assert_allclose(u_scaled["domains"]["heart"]["dw"],
                             u_plain["domains"]["heart"]["dw"] * rms, rtol=1e-5)


def test_bad_values_are_config_errors():
  with pytest.raises(ConfigError, match="update_scaling 'lars'"):
    optim.make_tx(0.0, scaling="lars")
  with pytest.raises(ConfigError, match="domain_updates 'shared'"):
    optim.check_domain_updates("shared")


def test_extensions_always_isolate_domain_updates():
  for train in ("new", "all"):
    ext = extend.Extension(base_workdir="b", sources={}, new_domains=("spleen",), train=train)
    assert extend.training_overrides(ext, [])["domain_updates"] == "isolated"
