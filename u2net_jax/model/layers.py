"""Layers of the 3D U²-Net family: per-domain weights, norms and conv units.

Shared weights are `nnx.Param`; per-domain weights are `DomainParam`, a
separate variable type, stored in an `nnx.Dict` keyed by domain name, so the
last element of every per-domain parameter's path is its domain's name.
Filters, optimizers, checkpoints and exports select on the type.

Every layer is called with a `DomainSelector`, which reads the active domain's
entry: by name (a Python str: exact shapes, one program per domain), or by a
traced integer index (one program for all domains: per-domain weights are
stacked, zero-padded to the largest channel/class count, and indexed; the
gradient of an index is zero for every other domain, so the other domains'
entries are untouched).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from u2net_jax import options
from u2net_jax.errors import ConfigError
from u2net_jax.model import dense, depthwise
from u2net_jax.model.shift_taps import concat


class DomainParam(nnx.Param):
  """A weight that belongs to one domain; its path ends with the domain name."""


# Shared weights: every Param that is not a DomainParam.
SHARED = nnx.All(nnx.Param, nnx.Not(DomainParam))

MODES = options.MODES
DOWNSAMPLES = options.DOWNSAMPLES

Init = Callable[[jax.Array, tuple], jax.Array]


def _numpy_rng(key: jax.Array) -> np.random.Generator:
  # Weights are drawn with NumPy from a seed taken from the NNX key: eager
  # jax.random calls compile one small program per weight shape (~10 s for a
  # U-Net on CPU), NumPy compiles nothing. Still deterministic per Rngs seed.
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def he_normal(fan_in: int) -> Init:
  """Kaiming-normal for LeakyReLU nets: std = sqrt(2 / fan_in), float32."""
  def init(key, shape):
    try:
      rng = _numpy_rng(key)
    except jax.errors.TracerArrayConversionError:  # under nnx.eval_shape: shapes only
      return jnp.zeros(shape, jnp.float32)
    values = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)
    return jnp.asarray(values.astype(np.float32))
  return init


def constant(value: float) -> Init:
  def init(key, shape):
    del key
    return jnp.asarray(np.full(shape, value, np.float32))
  return init


@dataclasses.dataclass(frozen=True)
class DomainSelector:
  """Reads the active domain's entry of a per-domain weight.

  Attributes:
    names: all domain names of the model, in model order.
    domain: a name (str) or an int32 index (Python int or traced scalar).
  """
  names: tuple[str, ...]
  domain: str | int | jax.Array

  @property
  def by_name(self) -> bool:
    return isinstance(self.domain, str)

  def read(self, weight: nnx.Param | nnx.Dict, pad_axis: int | None = None) -> jax.Array:
    """The active domain's value of `weight` (shared weights pass through).

    With an index, entries of different sizes along `pad_axis` are zero-padded
    to the largest before stacking.
    """
    if isinstance(weight, nnx.Variable):
      return weight[...]
    if self.by_name:
      return weight[self.domain][...]
    values = [weight[n][...] for n in self.names]
    if pad_axis is not None:
      size = max(v.shape[pad_axis] for v in values)
      values = [_pad_to(v, pad_axis, size) for v in values]
    return jnp.stack(values)[self.domain]


def _pad_to(v: jax.Array, axis: int, size: int) -> jax.Array:
  pad = [(0, 0)] * v.ndim
  pad[axis] = (0, size - v.shape[axis])
  return jnp.pad(v, pad)


def make_weight(rngs: nnx.Rngs, init: Init, shape: tuple | Callable[[str], tuple],
                names: Sequence[str] | None) -> nnx.Param | nnx.Dict:
  """A shared `nnx.Param` (names=None) or an `nnx.Dict` of `DomainParam`s.

  `shape` may be a function of the domain name for per-domain weights whose
  size depends on the domain (input channels, classes).
  """
  if names is None:
    return nnx.Param(init(rngs.params(), tuple(shape)))
  shape_of = shape if callable(shape) else (lambda _: tuple(shape))
  return nnx.Dict({n: DomainParam(init(rngs.params(), tuple(shape_of(n)))) for n in names})


@jax.custom_vjp
def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1³ conv `x @ kernel` over channels, (B, D, H, W, I) × (I, O), with a CPU-friendly VJP.

  Same values and gradients as the einsum. Autodiff's kernel gradient
  contracts over every voxel, for which XLA's CPU backend first transposes
  the activations (a slow copy, into which it also fuses the cotangent's
  producer); here the voxels are split into blocks that become the batch
  dimension of one batched matmul, then summed.
  """
  return jnp.einsum("bdhwi,io->bdhwo", x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise_conv(x, kernel), (x, kernel)


def _pointwise_bwd(res, g):
  x, kernel = res
  dx = jnp.einsum("bdhwo,io->bdhwi", g, kernel.astype(g.dtype)).astype(x.dtype)
  voxels = int(np.prod(x.shape[:4]))
  blocks = _block_count(voxels)
  xr = x.reshape(blocks, voxels // blocks, x.shape[-1])
  gr = g.reshape(blocks, voxels // blocks, g.shape[-1])
  # Summing the blocks apart keeps XLA from merging them back into one contraction.
  dk = jnp.sum(jnp.einsum("nvi,nvo->nio", xr, gr, preferred_element_type=jnp.float32), axis=0)
  return dx, dk.astype(kernel.dtype)


def _block_count(voxels: int, target: int = 64) -> int:
  """The largest divisor of `voxels` that is ≤ target."""
  for b in range(min(target, voxels), 0, -1):
    if voxels % b == 0:
      return b
  return 1


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


def leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, negative_slope=0.01)


def _norm_stats(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=(1, 2, 3), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(1, 2, 3), keepdims=True)
  return mean, lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5,
                  act: bool = False) -> jax.Array:
  """Affine instance norm over (D, H, W) of (B, D, H, W, C), optionally + LeakyReLU(0.01).

  Statistics and arithmetic in float32, result in x's dtype. Same values and
  gradients as autodiff of the plain formula (tested), with a hand-written
  backward: the two reductions Σ g and Σ g·x̂ per (sample, channel) and one
  elementwise pass, x̂ recomputed from x and the saved statistics, where
  autodiff materializes more intermediates and makes more passes.
  """
  return _instance_norm_fwd(x, scale, bias, eps, act)[0]


def _instance_norm_fwd(x, scale, bias, eps, act):
  mean, r = _norm_stats(x, eps)
  y = (x.astype(jnp.float32) - mean) * r
  y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  if act:
    y = leaky_relu(y)
  return y.astype(x.dtype), (x, scale, bias, mean, r)


def _instance_norm_bwd(eps, act, res, g):
  del eps
  x, scale, bias, mean, r = res
  s = scale.astype(jnp.float32)
  xhat = (x.astype(jnp.float32) - mean) * r
  gf = g.astype(jnp.float32)
  if act:
    gf = jnp.where(xhat * s + bias.astype(jnp.float32) >= 0, gf, 0.01 * gf)
  count = x.shape[1] * x.shape[2] * x.shape[3]
  sum_g = jnp.sum(gf, axis=(1, 2, 3), keepdims=True)
  sum_gx = jnp.sum(gf * xhat, axis=(1, 2, 3), keepdims=True)
  dx = (r * s) * (gf - sum_g / count - xhat * (sum_gx / count))
  dscale = jnp.sum(sum_gx, axis=(0, 1, 2, 3))
  dbias = jnp.sum(sum_g, axis=(0, 1, 2, 3))
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)


class InstanceNorm(nnx.Module):
  """Per-domain affine instance norm over (D, H, W); statistics in float32."""

  def __init__(self, features: int | Callable[[str], int], names: Sequence[str],
               *, eps: float = 1e-5, rngs: nnx.Rngs):
    shape = (lambda n: (features(n),)) if callable(features) else (features,)
    self.scale = make_weight(rngs, constant(1.0), shape, names)
    self.bias = make_weight(rngs, constant(0.0), shape, names)
    self.eps = eps

  def __call__(self, x: jax.Array, sel: DomainSelector, act: bool = False) -> jax.Array:
    """Normalizes x (B, D, H, W, C); with `act`, LeakyReLU(0.01) follows (fused)."""
    return instance_norm(x, sel.read(self.scale, 0), sel.read(self.bias, 0), self.eps, act)


class Conv(nnx.Module):
  """Dense 3D conv (no bias unless asked), 'SAME' padding, shared or per-domain.

  Kernel (k, k, k, in, out). `in_features`/`out_features` may be functions of
  the domain name (input and output layers); with a traced domain index they
  are zero-padded to the largest, which leaves results and gradients of the
  real channels unchanged.
  """

  def __init__(self, in_features, out_features, *, kernel_size: int = 3, stride=1,
               names: Sequence[str] | None, use_bias: bool = False,
               dtype=jnp.float32, fast_pointwise: bool = False, impl: str = "auto",
               rngs: nnx.Rngs):
    fin = in_features if callable(in_features) else (lambda _: in_features)
    fout = out_features if callable(out_features) else (lambda _: out_features)
    k = kernel_size
    if names is None:
      shape = (k, k, k, fin(None), fout(None))
      init = he_normal(k ** 3 * fin(None))
      self.kernel = make_weight(rngs, init, shape, None)
    else:
      self.kernel = nnx.Dict({
          n: DomainParam(he_normal(k ** 3 * fin(n))(rngs.params(), (k, k, k, fin(n), fout(n))))
          for n in names})
    bias_shape = (lambda n: (fout(n),)) if names else (fout(None),)
    self.bias = (make_weight(rngs, constant(0.0), bias_shape,
                             names) if use_bias else None)
    self.stride = stride
    self.dtype = dtype
    self.fast_pointwise = fast_pointwise
    self.impl = dense.resolve_impl(impl)

  def __call__(self, x: jax.Array, sel: DomainSelector) -> jax.Array:
    if isinstance(self.kernel, nnx.Dict) and not sel.by_name:
      kernel = self._padded_kernel(sel)
    else:
      kernel = sel.read(self.kernel)
    x = x.astype(self.dtype)
    if kernel.shape[:3] == (1, 1, 1) and self.stride == 1:
      k1 = kernel[0, 0, 0].astype(self.dtype)
      y = pointwise_conv(x, k1) if self.fast_pointwise else jnp.einsum("bdhwi,io->bdhwo", x, k1)
    else:
      y = dense.conv3d(x, kernel.astype(self.dtype), self.stride, self.impl)
    if self.bias is not None:
      y = y + sel.read(self.bias, 0).astype(self.dtype)
    return y

  def _padded_kernel(self, sel: DomainSelector) -> jax.Array:
    values = [self.kernel[n][...] for n in sel.names]
    cin = max(v.shape[3] for v in values)
    cout = max(v.shape[4] for v in values)
    values = [_pad_to(_pad_to(v, 3, cin), 4, cout) for v in values]
    return jnp.stack(values)[sel.domain]


class DepthwiseConv(nnx.Module):
  """Per-domain depthwise k³ conv (kernel (k, k, k, C)), no bias."""

  def __init__(self, features: int, *, kernel_size: int = 3, stride: int = 1,
               names: Sequence[str], impl: str = "auto", dtype=jnp.float32, rngs: nnx.Rngs):
    k = kernel_size
    self.kernel = make_weight(rngs, he_normal(k ** 3), (k, k, k, features), names)
    self.stride = stride
    self.impl = depthwise.resolve_impl(impl)
    self.dtype = dtype

  def __call__(self, x, sel: DomainSelector) -> jax.Array:
    """x: (B, D, H, W, C) or channel parts (see `depthwise.depthwise_conv3d`)."""
    kernel = sel.read(self.kernel).astype(self.dtype)
    parts = tuple(p.astype(self.dtype) for p in _parts(x))
    return depthwise.depthwise_conv3d(parts, kernel, self.stride, self.impl)


def _parts(x) -> tuple:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class ConvUnit(nnx.Module):
  """One conv unit; its output is normalized but not yet activated.

  Variants (`mode`), for stride-1 units:
    separable: per-domain depthwise 3³ → norm → act → shared pointwise 1³ → norm.
    independent: per-domain dense k³ conv → norm.
    shared: shared dense k³ conv → per-domain norm.
    series_adapter: shared k³ conv → per-domain [norm → 1³ conv] + identity → norm.
    parallel_adapter: shared k³ conv(x) + per-domain 1³ conv(x) → norm.
  Downsampling units (stride 2, or per-axis strides from `model.pool_per_axis`)
  are a plain dense conv → norm in every mode, as
  in the official code (per-domain in 'independent'); in 'separable' mode they
  are separable too unless `downsample='dense'`.
  All norms are per-domain InstanceNorms.
  """

  def __init__(self, in_features: int, out_features: int, *, kernel_size: int = 3,
               stride=1, mode: str, names: Sequence[str],
               downsample: str = "separable", depthwise_impl: str = "auto",
               dense_impl: str = "auto", dtype=jnp.float32, rngs: nnx.Rngs):
    names = tuple(names)
    if stride != 1 and not isinstance(stride, int) and mode == "separable" and (
        downsample == "separable"):
      raise ConfigError(f"Per-axis stride {tuple(stride)} (model.pool_per_axis) needs "
                        "model.downsample='dense' in separable mode.")
    if stride != 1 and not (mode == "separable" and downsample == "separable"):
      variant = "independent" if mode == "independent" else "shared"
    else:
      variant = mode
    self.variant = variant
    conv_kw = dict(kernel_size=kernel_size, stride=stride, dtype=dtype, impl=dense_impl,
                   rngs=rngs)
    if variant == "separable":
      # The official code uses a 3³ depthwise conv even in its 1³ units.
      self.dw = DepthwiseConv(in_features, kernel_size=3, stride=stride, names=names,
                              impl=depthwise_impl, dtype=dtype, rngs=rngs)
      self.dw_norm = InstanceNorm(in_features, names, rngs=rngs)
      self.pw = Conv(in_features, out_features, kernel_size=1, names=None, dtype=dtype,
                     fast_pointwise=self.dw.impl == "fused", rngs=rngs)
    elif variant == "independent":
      self.conv = Conv(in_features, out_features, names=names, **conv_kw)
    else:
      self.conv = Conv(in_features, out_features, names=None, **conv_kw)
      if variant == "series_adapter":
        self.adapter_norm = InstanceNorm(out_features, names, rngs=rngs)
        self.adapter = Conv(out_features, out_features, kernel_size=1, names=names,
                            dtype=dtype, rngs=rngs)
      elif variant == "parallel_adapter":
        self.adapter = Conv(in_features, out_features, kernel_size=1, stride=stride,
                            names=names, dtype=dtype, impl=dense_impl, rngs=rngs)
    self.norm = InstanceNorm(out_features, names, rngs=rngs)

  def __call__(self, x, sel: DomainSelector) -> jax.Array:
    """x: (B, D, H, W, C), or a tuple of channel parts to concatenate.

    Separable units keep the parts, not their concatenation, for the
    backward pass (`depthwise.depthwise_conv3d`); the dense variants join
    them first.
    """
    if self.variant == "separable":
      y = self.dw_norm(self.dw(x, sel), sel, act=True)
      y = self.pw(y, sel)
      return self.norm(y, sel)
    x = concat(_parts(x))
    if self.variant == "series_adapter":
      y = self.conv(x, sel)
      y = y + self.adapter(self.adapter_norm(y, sel), sel)
    elif self.variant == "parallel_adapter":
      y = self.conv(x, sel) + self.adapter(x, sel)
    else:
      y = self.conv(x, sel)
    return self.norm(y, sel)


def upsample_nearest(x: jax.Array, factor=2) -> jax.Array:
  """Nearest-neighbour ×factor on D, H, W: (B, D, H, W, C) → (B, fD, fH, fW, C).

  `factor`: an int or per-axis (f_D, f_H, f_W) (anisotropic pooling).
  """
  fd, fh, fw = (factor,) * 3 if isinstance(factor, int) else tuple(factor)
  b, d, h, w, c = x.shape
  x = x[:, :, None, :, None, :, None, :]
  x = jnp.broadcast_to(x, (b, d, fd, h, fh, w, fw, c))
  return x.reshape(b, d * fd, h * fh, w * fw, c)


def check_mode(mode: str, downsample: str) -> None:
  if mode not in MODES:
    raise ConfigError(f"model.mode {mode!r} is not one of {MODES}.")
  if downsample not in DOWNSAMPLES:
    raise ConfigError(f"model.downsample {downsample!r} is not one of {DOWNSAMPLES}.")
