"""The 'shift' dense conv equals XLA's convolution, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from u2net_jax.model import dense, models
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError, InputError


def _inputs(shape, cout, k=3, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, shape, jnp.float32)
  w = jax.random.normal(kk, (k, k, k, shape[-1], cout), jnp.float32) / np.sqrt(k ** 3 * shape[-1])
  return x, w


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape,cout", [((2, 8, 8, 8, 4), 6), ((1, 7, 10, 5, 1), 3)])
def test_shift_equals_lax_forward(shape, cout, stride, k):
  x, w = _inputs(shape, cout, k)
  ref = dense.conv3d_lax(x, w, stride)
  out = jax.jit(dense.conv3d_shift, static_argnums=2)(x, w, stride)
  assert out.shape == ref.shape == (shape[0], *[-(-s // stride) for s in shape[1:4]], cout)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(2, 8, 6, 8, 3), (1, 7, 5, 9, 2)])
def test_shift_equals_lax_gradients(shape, stride):
  x, w = _inputs(shape, 5, seed=1)
  cot = jax.random.normal(jax.random.key(2), dense.conv3d_lax(x, w, stride).shape)

  def loss(impl):
    return lambda x, w: jnp.sum(dense.conv3d(x, w, stride, impl) * cot)

  gx_ref, gw_ref = jax.grad(loss("lax"), argnums=(0, 1))(x, w)
  gx, gw = jax.jit(jax.grad(loss("shift"), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_stride2_matches_official_right_padding():
  # The official code pads one zero at the end of each axis, then a VALID
  # stride-2 conv: 'SAME' must be exactly that in every implementation.
  x, w = _inputs((1, 8, 8, 8, 2), 3, seed=3)
  xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 1), (0, 0)))
  ref = jax.lax.conv_general_dilated(xp, w, (2, 2, 2), "VALID",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  np.testing.assert_allclose(dense.conv3d(x, w, 2, "shift"), ref, atol=1e-5)


def test_auto_picks_shift_on_cpu_and_lax_elsewhere():
  assert dense.resolve_impl("auto", "cpu") == "shift"
  assert dense.resolve_impl("auto", "gpu") == "lax"
  assert dense.resolve_impl("auto", "tpu") == "lax"
  assert dense.resolve_impl("lax", "cpu") == "lax"
  with pytest.raises(ConfigError, match="'winograd'"):
    dense.resolve_impl("winograd")


def test_bad_shapes_are_named():
  x, w = _inputs((1, 4, 4, 4, 2), 3)
  with pytest.raises(InputError, match="3 channels|takes 2 channels"):
    dense.conv3d(x[..., :1], w, 1, "shift")
  with pytest.raises(InputError, match="must be"):
    dense.conv3d(x, w[0], 1, "shift")


def test_model_logits_and_gradients_do_not_depend_on_dense_impl():
  # The whole model (dense stride-1 and stride-2 units, the per-domain
  # input conv zero-padded to the largest channel count for a traced domain
  # index) is the same function under both.
  mode = "independent"
  domains = [DomainSpec("a", ("CT",), ("bg", "x")),
             DomainSpec("b", ("T2", "ADC"), ("bg", "y", "z"))]
  cfg = dict(mode=mode, features_root=4, num_levels=3, depthwise_impl="lax")
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 8, 2))
  out = {}
  for impl in ("lax", "shift"):
    model = models.build_model(domains, dict(cfg, dense_impl=impl), seed=0)
    graphdef, state = nnx.split(model)

    def loss(state, graphdef=graphdef):
      m = nnx.merge(graphdef, state)
      return jnp.sum(jnp.tanh(m(x, jnp.int32(1))[..., :3]))

    out[impl] = jax.jit(jax.value_and_grad(loss))(state)
  (v_ref, g_ref), (v, g) = out["lax"], out["shift"]
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(g_ref))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    # Float32 rounding differs with summation order; gradients that are zero
    # in exact arithmetic (e.g. a bias just before a norm) are pure rounding
    # noise: compare against the largest gradient's scale.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("stride", [(1, 2, 2), (2, 1, 1)])
def test_per_axis_stride_shift_equals_lax(stride):
  # Anisotropic pooling (model.pool_per_axis): values and both gradients.
  x, w = _inputs((1, 6, 8, 7, 3), 4, seed=4)
  ref = dense.conv3d_lax(x, w, stride)
  assert ref.shape == (1, *[-(-n // s) for n, s in zip((6, 8, 7), stride)], 4)
  np.testing.assert_allclose(dense.conv3d(x, w, list(stride), "shift"), ref, atol=1e-5)
  cot = jax.random.normal(jax.random.key(5), ref.shape)
  grads = {impl: jax.grad(lambda x, w: jnp.sum(dense.conv3d(x, w, stride, impl) * cot),
                          argnums=(0, 1))(x, w) for impl in ("lax", "shift")}
  for a, b in zip(grads["lax"], grads["shift"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
