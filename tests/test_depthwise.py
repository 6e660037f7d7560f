"""The fused depthwise conv equals XLA's grouped conv, values and gradients."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smoke_workdir
from u2net_jax.model import depthwise, depthwise_backward


def _inputs(shape, k=3, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, shape, jnp.float32)
  w = jax.random.normal(kk, (k, k, k, shape[-1]), jnp.float32)
  return x, w


def _in_training_codegen(code: str) -> None:
  """Runs `code` (this module imported as `t`) in a fresh process with training's XLA flags.

  For the claims about training's exact bits: the other tests compile with
  cheaper code generation (tests/conftest.py), which may order a
  reduction's float additions differently.
  """
  prelude = (f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
             "import test_depthwise as t\n")
  proc = smoke_workdir.run(["-c", prelude + code + "\nprint('same bits')"], timeout=300,
                           env={"XLA_FLAGS": os.environ["U2NET_TRAINING_XLA_FLAGS"]})
  assert proc.returncode == 0 and "same bits" in proc.stdout, proc.stderr[-3000:]


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


def test_auto_picks_fused_on_cpu_and_lax_elsewhere():
  assert depthwise.resolve_impl("auto", "cpu") == "fused"
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
  with pytest.raises(ValueError, match="parts"):  # parts of different sizes
    depthwise.depthwise_conv3d((x, x[:, :3]), jnp.zeros((3, 3, 3, 4)), 1)


def _parts_equal_their_concatenation(impl, stride):
  # A decoder passes (upsampled, skip) as parts: the same numbers as
  # concatenating them first, values and gradients, for every impl. (At these
  # sizes, reducing each part's kernel gradient on its own would already
  # differ in the last bits.)
  (a, _), (b, _) = _inputs((2, 8, 24, 24, 8), seed=8), _inputs((2, 8, 24, 24, 4), seed=9)
  _, w = _inputs((1, 1, 1, 1, 12), seed=10)
  cot = jax.random.normal(jax.random.key(11), depthwise.depthwise_conv3d_lax(
      jnp.concatenate([a, b], axis=-1), w, stride).shape)

  def loss(joined):
    def f(a, b, w):
      x = jnp.concatenate([a, b], axis=-1) if joined else (a, b)
      return jnp.sum(depthwise.depthwise_conv3d(x, w, stride, impl) * cot)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

  (v_ref, g_ref), (v, g) = loss(True)(a, b, w), loss(False)(a, b, w)
  # Bit for bit: a model whose decoder passes parts trains exactly as one
  # that concatenates (float rounding differences would grow over a run).
  np.testing.assert_array_equal(v, v_ref)
  for got, ref in zip(g, g_ref):
    np.testing.assert_array_equal(got, ref)


@pytest.mark.slow
def test_parts_equal_their_concatenation():
  _in_training_codegen("for impl in ('fused', 'shift', 'lax'):\n"
                       "  for stride in (1, 2):\n"
                       "    t._parts_equal_their_concatenation(impl, stride)")


# -- the 'fused' fast path (custom VJP: blocked shifts, elementwise kernel grad) ---

FUSED_SHAPES = [(2, 8, 8, 8, 4), (1, 6, 10, 7, 3), (1, 5, 4, 9, 2), (3, 9, 5, 6, 2),
                (1, 1, 3, 2, 1)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_fused_equals_lax_forward_and_gradients(shape, stride):
  x, w = _inputs(shape, seed=4)
  ref = depthwise.depthwise_conv3d_lax(x, w, stride)
  cot = jax.random.normal(jax.random.key(5), ref.shape)

  def loss(impl):
    return lambda x, w: jnp.sum(depthwise.depthwise_conv3d(x, w, stride, impl) * cot)

  out = jax.jit(lambda x, w: depthwise.depthwise_conv3d(x, w, stride, "fused"))(x, w)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  gx_ref, gw_ref = jax.grad(loss("lax"), argnums=(0, 1))(x, w)
  (val, (gx, gw)) = jax.jit(jax.value_and_grad(loss("fused"), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(val, jnp.sum(ref * cot), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-3)


def test_fused_gradients_through_producers_equal_lax():
  # In a real step the conv's input and cotangent come from fused producers
  # (norms, activations); the blocked loops must not change the numbers.
  x, w = _inputs((2, 8, 8, 8, 4), seed=6)
  pw = jax.random.normal(jax.random.key(7), (4, 4))

  def net(impl):
    def f(x, w, pw):
      h = jax.nn.leaky_relu((x - x.mean()) / x.std(), 0.01)
      y = depthwise.depthwise_conv3d(h, w, 1, impl)
      y = jnp.tanh(y)
      y = depthwise.depthwise_conv3d(y, w * 0.5, 2, impl)
      return jnp.sum(jnp.einsum("bdhwi,io->bdhwo", y, pw) ** 2)
    return f

  ref = jax.grad(net("lax"), argnums=(0, 1, 2))(x, w, pw)
  got = jax.jit(jax.grad(net("fused"), argnums=(0, 1, 2)))(x, w, pw)
  for r, g in zip(ref, got):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


def test_fused_bfloat16_matches_float32_reference():
  x, w = _inputs((1, 8, 8, 8, 4), seed=8)
  ref = depthwise.depthwise_conv3d_lax(x, w, 1)
  out = depthwise.depthwise_conv3d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, "fused")
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), ref, rtol=0.05, atol=0.1)
  gw = jax.grad(lambda w: jnp.sum(depthwise.depthwise_conv3d(
      x.astype(jnp.bfloat16), w, 1, "fused").astype(jnp.float32)))(w.astype(jnp.bfloat16))
  gw_ref = jax.grad(lambda w: jnp.sum(depthwise.depthwise_conv3d_lax(x, w, 1)))(w)
  assert gw.dtype == jnp.bfloat16
  np.testing.assert_allclose(gw.astype(jnp.float32), gw_ref, rtol=0.05,
                             atol=0.02 * float(jnp.abs(gw_ref).max()))


def test_pointwise_conv_equals_einsum_values_and_gradients():
  from u2net_jax.model import layers  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(9), (2, 4, 6, 5, 3))
  k = jax.random.normal(jax.random.key(10), (3, 7))
  cot = jax.random.normal(jax.random.key(11), (2, 4, 6, 5, 7))
  ref_fn = lambda x, k: jnp.sum(jnp.einsum("bdhwi,io->bdhwo", x, k) * cot)
  fast_fn = lambda x, k: jnp.sum(layers.pointwise_conv(x, k) * cot)
  np.testing.assert_allclose(layers.pointwise_conv(x, k), jnp.einsum("bdhwi,io->bdhwo", x, k),
                             rtol=1e-6, atol=1e-6)
  ref = jax.grad(ref_fn, argnums=(0, 1))(x, k)
  got = jax.jit(jax.grad(fast_fn, argnums=(0, 1)))(x, k)
  for r, g in zip(ref, got):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_fused_model_equals_lax_model_loss_and_gradients():
  # The whole separable U-Net (fused depthwise + fast pointwise conv) against
  # the plain formulation: same weights, loss and every gradient.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import losses  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import models  # pylint: disable=g-import-not-at-top
  from u2net_jax.domains import DomainSpec  # pylint: disable=g-import-not-at-top
  specs = [DomainSpec("heart", ("mri",), ("bg", "fg")),
           DomainSpec("prostate", ("t2", "adc"), ("bg", "pz", "tz"))]
  x = jax.random.normal(jax.random.key(12), (2, 8, 8, 8, 2))
  label = jax.random.randint(jax.random.key(13), (2, 8, 8, 8), 0, 2)
  grads = {}
  for impl in ("lax", "fused"):
    model = models.build_model(specs, {"features_root": 4, "num_levels": 2,
                                       "depthwise_impl": impl}, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, graphdef=graphdef, rest=rest):
      logits = nnx.merge(graphdef, params, rest)(x, jnp.int32(1))
      return losses.segmentation_loss(logits, label, kind="ce")

    grads[impl] = jax.jit(jax.value_and_grad(loss))(params)
  (l_ref, g_ref), (l_fast, g_fast) = grads["lax"], grads["fused"]
  np.testing.assert_allclose(l_fast, l_ref, rtol=1e-5)
  for r, g in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_fast)):
    np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4 * max(1.0, float(jnp.abs(r).max())))


@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_instance_norm_custom_vjp_equals_autodiff(act, dtype):
  from u2net_jax.model import layers  # pylint: disable=g-import-not-at-top

  def plain(x, s, b):
    xf = x.astype(jnp.float32)
    m = jnp.mean(xf, axis=(1, 2, 3), keepdims=True)
    v = jnp.mean(jnp.square(xf - m), axis=(1, 2, 3), keepdims=True)
    y = (xf - m) * jax.lax.rsqrt(v + 1e-5) * s + b
    return (layers.leaky_relu(y) if act else y).astype(x.dtype)

  x = (jax.random.normal(jax.random.key(14), (2, 5, 4, 6, 3)) * 3 + 1).astype(dtype)
  s = jax.random.normal(jax.random.key(15), (3,))
  b = jax.random.normal(jax.random.key(16), (3,))
  cot = jax.random.normal(jax.random.key(17), x.shape)
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(layers.instance_norm(x, s, b, 1e-5, act).astype(jnp.float32),
                             plain(x, s, b).astype(jnp.float32), **tol)
  loss = lambda f: (lambda x, s, b: jnp.sum(f(x, s, b).astype(jnp.float32) * cot))
  ref = jax.grad(loss(plain), argnums=(0, 1, 2))(x, s, b)
  got = jax.jit(jax.grad(loss(lambda x, s, b: layers.instance_norm(x, s, b, 1e-5, act)),
                         argnums=(0, 1, 2)))(x, s, b)
  for r, g in zip(ref, got):
    assert g.dtype == r.dtype
    np.testing.assert_allclose(g.astype(jnp.float32), r.astype(jnp.float32),
                               rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(jnp.abs(
                                   r.astype(jnp.float32)).max())))


def _looped_equals_unrolled(stride):
  x, w = _inputs((2, 9, 12, 10, 3), seed=12)
  cot = jax.random.normal(jax.random.key(13), depthwise.depthwise_conv3d_lax(x, w, stride).shape)

  def grads():
    f = lambda x, w: jnp.sum(depthwise.depthwise_conv3d(x, w, stride, "fused") * cot)  # noqa: E731
    return jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)

  edge = depthwise_backward.LOOPED_TAPS_MAX
  try:
    depthwise_backward.LOOPED_TAPS_MAX = 0  # every conv's taps unrolled
    unrolled = grads()
    depthwise_backward.LOOPED_TAPS_MAX = 10 ** 9  # every conv's taps looped
    looped = grads()
  finally:
    depthwise_backward.LOOPED_TAPS_MAX = edge
  for a, b in zip(looped, unrolled):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_looped_and_unrolled_kernel_gradients_are_the_same_bits():
  # Small levels loop over the k³ taps (a smaller program to compile); that
  # must not change a single bit of what training computes.
  _in_training_codegen("for stride in (1, 2):\n  t._looped_equals_unrolled(stride)")
