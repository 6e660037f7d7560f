"""Dense 3D convolution with selectable implementations.

The paper's baselines (independent, shared and adapter models), the input
conv of every model and the stride-2 units of `downsample='dense'` are dense
k³ convolutions. XLA's CPU convolution is slow, worst in the backward pass
and for stride 2 (2-core CPU, batch 2, fp32; BENCHMARKS.md): the input conv
of the `cpu` benchmark (64³, 1 → 16) takes 490 ms forward with `lax.conv`
and 28 ms as 'shift'; a 32³ 8 → 16 stride-2 conv 309 ms forward+backward
with `lax.conv` and ~10 ms as 'shift'.

'shift' writes the conv as k³ matmuls of shifted (strided) views of the
zero-padded input with the kernel's (C_in, C_out) slices, summed (XLA fuses
the slicing into the matmuls' operands), with a custom backward (see
`_shift_bwd`).

Layout: x `(B, D, H, W, C_in)`, kernel `(k, k, k, C_in, C_out)`, 'SAME'
padding exactly as XLA's (`shift_taps.same_padding`). Both implementations
give the same numbers up to float rounding; tests compare them in forward
and gradients, stride 1 and 2, kernel 1 and 3, odd sizes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from u2net_jax import options
from u2net_jax.errors import ConfigError, InputError
from u2net_jax.model.shift_taps import same_padding

IMPLS = options.DENSE_IMPLS

# While a list, every conv3d call appends (x shape, kernel shape, strides,
# dtype) to it: how `autotune` learns a model's actual conv shapes.
SHAPES: list | None = None


def resolve_impl(impl: str, backend: str | None = None) -> str:
  """Maps 'auto' to the fastest implementation measured on `backend`."""
  if impl not in IMPLS:
    raise ConfigError(f"dense conv impl {impl!r} is not one of {IMPLS}.")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  # GPU/TPU convolutions are native (cuDNN, MXU); only XLA:CPU's are slow.
  return "shift" if backend == "cpu" else "lax"


def _check(x, kernel, stride):
  if x.ndim != 5:
    raise InputError(f"dense conv expects x of shape (B, D, H, W, C), got {x.shape}.")
  if kernel.ndim != 5 or len(set(kernel.shape[:3])) != 1:
    raise InputError(f"dense conv kernel must be (k, k, k, C_in, C_out), got {kernel.shape}.")
  if kernel.shape[3] != x.shape[-1]:
    raise InputError(f"dense conv kernel takes {kernel.shape[3]} channels but x has "
                     f"{x.shape[-1]}.")
  if min(strides(stride)) < 1:
    raise InputError(f"dense conv stride must be ≥ 1 on every axis, got {stride}.")


def strides(stride) -> tuple[int, int, int]:
  """An int or a (D, H, W) stride as a 3-tuple (anisotropic pooling: `model.pool_per_axis`)."""
  if isinstance(stride, (tuple, list)):
    if len(stride) != 3:
      raise InputError(f"dense conv stride must be an int or 3 ints (D, H, W), got {stride}.")
    return tuple(int(v) for v in stride)
  return (int(stride),) * 3


def conv3d_lax(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Reference: XLA convolution. Returns (B, D', H', W', C_out)."""
  _check(x, kernel, stride)
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides(stride), padding="SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _views(x: jax.Array, k: int, stride) -> list[jax.Array]:
  """The k³ shifted, strided views of the 'SAME'-padded x, each (B, D', H', W', C)."""
  spatial = x.shape[1:4]
  st = strides(stride)
  pads = [same_padding(n, k, s) for n, s in zip(spatial, st)]
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  out = [-(-n // s) for n, s in zip(spatial, st)]
  views = []
  for a in range(k):
    for b in range(k):
      for c in range(k):
        start = (0, a, b, c, 0)
        limit = (x.shape[0], *(o + s * (n - 1) + 1 for o, s, n in zip((a, b, c), st, out)),
                 x.shape[-1])
        views.append(lax.slice(xp, start, limit, (1, *st, 1)))
  return views


def _shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Sum over the k³ views of view @ kernel[a, b, c] (no k³-sized buffer)."""
  k = kernel.shape[0]
  flat = kernel.reshape(k ** 3, *kernel.shape[3:])
  y = None
  for i, v in enumerate(_views(x, k, stride)):
    t = jnp.einsum("bdhwi,io->bdhwo", v, flat[i])
    y = t if y is None else y + t
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shift_conv(x, kernel, stride):
  return _shifted(x, kernel, stride)


def _shift_fwd(x, kernel, stride):
  return _shifted(x, kernel, stride), (x, kernel)


def _shift_bwd(stride, res, g):
  x, kernel = res
  k = kernel.shape[0]
  # Kernel gradient: one (C_in × N)·(N × C_out) GEMM per offset. Measured
  # faster on XLA:CPU than one GEMM over the gathered (N × k³·C_in) views
  # (no k³-sized buffer) and much faster than the convolution's own
  # transpose. Input gradient: autodiff of the shifted sum (k³ small GEMMs
  # with the transposed kernel slices, padded and added).
  dk = jnp.stack([jnp.einsum("bdhwi,bdhwo->io", v, g) for v in _views(x, k, stride)])
  _, vjp_x = jax.vjp(lambda x_: _shifted(x_, kernel, stride), x)
  (dx,) = vjp_x(g)
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_shift_conv.defvjp(_shift_fwd, _shift_bwd)


def conv3d_shift(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Dense k³ conv as k³ shifted matmuls, with a per-offset-GEMM backward."""
  _check(x, kernel, stride)
  return _shift_conv(x, kernel, strides(stride))  # a tuple: hashable nondiff argument


def conv3d(x: jax.Array, kernel: jax.Array, stride=1, impl: str = "auto") -> jax.Array:
  """Dense 3D conv, 'SAME' padding: x (B, D, H, W, C_in) → (B, ⌈D/s⌉, ⌈H/s⌉, ⌈W/s⌉, C_out).

  `stride`: an int or per-axis (s_D, s_H, s_W).
  """
  impl = resolve_impl(impl)
  if SHAPES is not None:  # model.autotune records the calls' shapes
    SHAPES.append((tuple(x.shape), tuple(kernel.shape), strides(stride), str(x.dtype)))
  if impl == "lax":
    return conv3d_lax(x, kernel, stride)
  return conv3d_shift(x, kernel, stride)
