"""The fused depthwise conv equals XLA's grouped conv, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2net_jax import depthwise


def _inputs(shape, k=3, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, shape, jnp.float32)
  w = jax.random.normal(kk, (k, k, k, shape[-1]), jnp.float32)
  return x, w


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(2, 8, 8, 8, 4), (1, 6, 10, 7, 3), (1, 5, 4, 9, 2)])
def test_shift_equals_lax_forward(shape, stride):
  x, w = _inputs(shape)
  ref = depthwise.depthwise_conv3d_lax(x, w, stride)
  out = depthwise.depthwise_conv3d_shift(x, w, stride)
  assert out.shape == ref.shape == (shape[0], *[-(-s // stride) for s in shape[1:4]], shape[4])
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_shift_equals_lax_gradients(stride):
  x, w = _inputs((2, 8, 6, 8, 3), seed=1)
  cot = jax.random.normal(jax.random.key(2), depthwise.depthwise_conv3d_lax(x, w, stride).shape)

  def loss(impl):
    return lambda x, w: jnp.sum(depthwise.depthwise_conv3d(x, w, stride, impl) * cot)

  gx_ref, gw_ref = jax.grad(loss("lax"), argnums=(0, 1))(x, w)
  gx, gw = jax.jit(jax.grad(loss("shift"), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-3)


def test_stride2_matches_official_right_padding():
  # The official code pads one zero at the end of each axis, then a VALID
  # stride-2 conv: our 'SAME' must be exactly that.
  x, w = _inputs((1, 8, 8, 8, 2), seed=3)
  xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 1), (0, 0)))
  ref = jax.lax.conv_general_dilated(
      xp, w.reshape(3, 3, 3, 1, 2), (2, 2, 2), "VALID",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=2)
  np.testing.assert_allclose(depthwise.depthwise_conv3d(x, w, 2, "shift"), ref, atol=1e-5)


def test_identity_kernel_is_identity():
  x, _ = _inputs((1, 5, 5, 5, 2))
  w = jnp.zeros((3, 3, 3, 2)).at[1, 1, 1].set(1.0)
  np.testing.assert_allclose(depthwise.depthwise_conv3d(x, w, 1, "shift"), x, atol=0)


def test_auto_picks_shift_on_cpu_and_lax_elsewhere():
  assert depthwise.resolve_impl("auto", "cpu") == "shift"
  assert depthwise.resolve_impl("auto", "gpu") == "lax"
  assert depthwise.resolve_impl("auto", "tpu") == "lax"
  assert depthwise.resolve_impl("lax", "cpu") == "lax"


def test_bad_inputs_raise_value_errors():
  x, w = _inputs((1, 4, 4, 4, 2))
  with pytest.raises(ValueError, match="impl"):
    depthwise.depthwise_conv3d(x, w, 1, "fast")
  with pytest.raises(ValueError, match="channels"):
    depthwise.depthwise_conv3d(x, jnp.zeros((3, 3, 3, 3)), 1)
  with pytest.raises(ValueError, match=r"\(B, D, H, W, C\)"):
    depthwise.depthwise_conv3d(x[0], w, 1)
  with pytest.raises(ValueError, match="stride"):
    depthwise.depthwise_conv3d(x, w, 3)
