"""Dense 3D convolution with selectable implementations.

The paper's baselines (independent, shared and adapter models) and the
stride-2 units of `downsample='dense'` use dense k³ convolutions. XLA's CPU
convolution is slow in the backward pass, worst for stride 2 (measured on
this project's 2-core CPU, batch 2, fp32, forward+backward: 32³ 8→16
stride 2 309 ms with `lax.conv` vs 8.5 ms with 'im2col'; 32³ 8→8 stride 1
159 ms vs 81 ms; BENCHMARKS.md). 'im2col' gathers the k³ shifted
(strided) views into one (…, k³·C_in) tensor and multiplies it by the
(k³·C_in, C_out) kernel: one GEMM forward, one GEMM per gradient.

Without differentiation (evaluation, export) the k³ shifted matmuls are
faster than the gathered GEMM for large volumes, so 'im2col' runs those in
its primal and the gathered form only in its backward (recomputed there, so
nothing k³-sized is kept between forward and backward).

Layout: x `(B, D, H, W, C_in)`, kernel `(k, k, k, C_in, C_out)`, 'SAME'
padding exactly as XLA's (`depthwise.same_padding`). Every implementation
gives the same numbers up to float rounding; tests compare them with 'lax' in
forward and gradients, stride 1 and 2, odd sizes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from u2net_jax.depthwise import same_padding
from u2net_jax.errors import ConfigError, InputError

IMPLS = ("auto", "lax", "im2col")


def resolve_impl(impl: str, backend: str | None = None) -> str:
  """Maps 'auto' to the fastest implementation measured on `backend`."""
  if impl not in IMPLS:
    raise ConfigError(f"dense conv impl {impl!r} is not one of {IMPLS}.")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  # GPU/TPU convolutions are native (cuDNN, MXU); only XLA:CPU's are slow.
  return "im2col" if backend == "cpu" else "lax"


def _check(x, kernel, stride):
  if x.ndim != 5:
    raise InputError(f"dense conv expects x of shape (B, D, H, W, C), got {x.shape}.")
  if kernel.ndim != 5 or len(set(kernel.shape[:3])) != 1:
    raise InputError(f"dense conv kernel must be (k, k, k, C_in, C_out), got {kernel.shape}.")
  if kernel.shape[3] != x.shape[-1]:
    raise InputError(f"dense conv kernel takes {kernel.shape[3]} channels but x has "
                     f"{x.shape[-1]}.")
  if stride < 1:
    raise InputError(f"dense conv stride must be ≥ 1, got {stride}.")


def conv3d_lax(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Reference: XLA convolution. Returns (B, D', H', W', C_out)."""
  _check(x, kernel, stride)
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride,) * 3, padding="SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _views(x: jax.Array, k: int, stride: int) -> list[jax.Array]:
  """The k³ shifted, strided views of the 'SAME'-padded x, each (B, D', H', W', C)."""
  spatial = x.shape[1:4]
  pads = [same_padding(n, k, stride) for n in spatial]
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  out = [-(-n // stride) for n in spatial]
  views = []
  for a in range(k):
    for b in range(k):
      for c in range(k):
        start = (0, a, b, c, 0)
        limit = (x.shape[0], a + stride * (out[0] - 1) + 1, b + stride * (out[1] - 1) + 1,
                 c + stride * (out[2] - 1) + 1, x.shape[-1])
        views.append(lax.slice(xp, start, limit, (1, stride, stride, stride, 1)))
  return views


def _gathered(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """One GEMM of the gathered views (B, D', H', W', k³·C_in) with the kernel."""
  k, cin, cout = kernel.shape[0], kernel.shape[3], kernel.shape[4]
  patches = jnp.concatenate(_views(x, k, stride), axis=-1)
  return jnp.einsum("bdhwi,io->bdhwo", patches, kernel.reshape(k ** 3 * cin, cout))


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
def _im2col(x, kernel, stride):
  return _shifted(x, kernel, stride)


def _im2col_fwd(x, kernel, stride):
  return _shifted(x, kernel, stride), (x, kernel)


def _im2col_bwd(stride, res, g):
  x, kernel = res
  # Differentiating the gathered GEMM: dK is one (k³·C_in × N)·(N × C_out)
  # GEMM, dx one GEMM plus k³ strided pad-adds, both fast on XLA:CPU (the
  # forward product itself is dead code here and is dropped by XLA).
  _, vjp = jax.vjp(lambda x_, k_: _gathered(x_, k_, stride), x, kernel)
  return vjp(g)


_im2col.defvjp(_im2col_fwd, _im2col_bwd)


def conv3d_im2col(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Dense k³ conv: shifted matmuls forward, gathered-GEMM gradients."""
  _check(x, kernel, stride)
  return _im2col(x, kernel, stride)


def conv3d(x: jax.Array, kernel: jax.Array, stride: int = 1, impl: str = "auto") -> jax.Array:
  """Dense 3D conv, 'SAME' padding: x (B, D, H, W, C_in) → (B, ⌈D/s⌉, ⌈H/s⌉, ⌈W/s⌉, C_out)."""
  impl = resolve_impl(impl)
  if impl == "lax":
    return conv3d_lax(x, kernel, stride)
  return conv3d_im2col(x, kernel, stride)
