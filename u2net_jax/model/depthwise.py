"""Depthwise (channel-wise) 3D convolution with selectable implementations.

XLA's grouped convolution (`feature_group_count=C`) is pathologically slow on
CPU (measured on a 2-core EPYC, 2×48³×32 fp32: 1363 ms forward, 3227 ms
forward+backward), while the same operation written as k³ shifted
multiply-adds is fused by XLA into one loop nest (10 ms / 310 ms). Autodiff of
those shifts is in turn slow on CPU (k³ padded full-size cotangents, k³
reductions to a few values), so 'fused' keeps the forward and gives it a
custom backward (see `depthwise_conv3d_fused`). All give the same numbers up
to float rounding; tests compare them with 'lax' in forward and gradients,
stride 1 and 2, odd sizes.

Layout: x `(B, D, H, W, C)`, kernel `(k, k, k, C)`, 'SAME' padding as in
TensorFlow/XLA (for stride 2 and even sizes: zero padding only at the end,
which is what the official 3D U²-Net code does by hand before its stride-2
convs).
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from u2net_jax import options
from u2net_jax.errors import ConfigError, InputError
from u2net_jax.model import depthwise_backward as backward
from u2net_jax.model.shift_taps import concat, shift_forward

IMPLS = options.DEPTHWISE_IMPLS

# While a list, every depthwise_conv3d call appends (x shape, kernel shape,
# stride, dtype) to it: how `autotune` learns a model's actual conv shapes.
SHAPES: list | None = None


def resolve_impl(impl: str, backend: str | None = None) -> str:
  """Maps 'auto' to the fastest implementation measured on `backend`."""
  if impl not in IMPLS:
    raise ConfigError(f"depthwise impl {impl!r} is not one of {IMPLS}.")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  # CPU: grouped conv is 100× slower than shifted multiply-adds, and 'fused'
  # (their custom backward) trains 2× faster than 'shift' (BENCHMARKS.md).
  # GPU/TPU have native depthwise kernels behind the grouped conv.
  return "fused" if backend == "cpu" else "lax"


def _check(x, kernel, stride):
  if x.ndim != 5:
    raise InputError(f"depthwise_conv3d expects x of shape (B, D, H, W, C), got {x.shape}.")
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[1] != kernel.shape[2]:
    raise InputError(f"depthwise kernel must be (k, k, k, C), got {kernel.shape}.")
  if kernel.shape[-1] != x.shape[-1]:
    raise InputError(
        f"depthwise kernel has {kernel.shape[-1]} channels but x has {x.shape[-1]}.")
  if stride not in (1, 2):
    raise InputError(f"depthwise stride must be 1 or 2, got {stride}.")


def depthwise_conv3d_lax(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Reference: XLA grouped convolution. Returns (B, D', H', W', C)."""
  _check(x, kernel, stride)
  c = x.shape[-1]
  k = kernel.shape[0]
  return lax.conv_general_dilated(
      x, kernel.reshape(k, k, k, 1, c), window_strides=(stride,) * 3,
      padding="SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      feature_group_count=c)


def depthwise_conv3d_shift(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """k³ shifted multiply-adds over a zero-padded input; XLA fuses them.

  The kernel gradient is computed block by block along depth (see
  `kernel_grad`): 3× faster on CPU than autodiff's k³ full-volume reductions.
  """
  _check(x, kernel, stride)
  return _shift_conv(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shift_conv(x, kernel, stride):
  return shift_forward(x, kernel, stride)


def _shift_fwd(x, kernel, stride):
  return shift_forward(x, kernel, stride), (x, kernel)


def _shift_bwd(stride, res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda x_: shift_forward(x_, kernel, stride), x)
  (dx,) = vjp_x(g)
  return dx, backward.kernel_grad(x, g, kernel.shape[0], stride).astype(kernel.dtype)


_shift_conv.defvjp(_shift_fwd, _shift_bwd)


def depthwise_conv3d_fused(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """`shift`'s forward with a backward pass written for XLA's CPU backend.

  - Input gradient: itself a depthwise conv, written as k³ shifted
    multiply-adds over the padded cotangent (stride 1: the flipped kernel;
    stride 2: the cotangent dilated by zeros), evaluated in a loop over blocks
    so that the padded cotangent is written once. Autodiff of `shift` instead
    pads each of the k³ slices' cotangents to full size and adds k³ full-size
    tensors.
  - Kernel gradient: elementwise accumulation into plane-sized accumulators,
    not k³ reductions to a few values.
  Both in `depthwise_backward.py`.
  Same values and gradients as 'lax' up to float rounding (tested).
  """
  _check(x, kernel, stride)
  return _fused_conv((x,), kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused_conv(parts, kernel, stride):
  """'fused' conv of `concatenate(parts, -1)`; the backward pass keeps the parts.

  Given the concatenation, the train step would keep it from the forward to
  the backward pass beside the parts (which their own producers keep anyway):
  a decoder's concatenated skip connection at full resolution.
  """
  return shift_forward(concat(parts), kernel, stride)


def _fused_fwd(parts, kernel, stride):
  # The forward's k³ slices are fused well as they are (blocking it measured
  # no faster in the train step); only the backward needs the loops.
  return shift_forward(concat(parts), kernel, stride), (parts, kernel)


def _fused_bwd(stride, res, g):
  parts, kernel = res
  dx = backward.input_grad(g, kernel, parts[0].shape[1:4], stride)
  k = kernel.shape[0]
  if len(parts) == 1:
    return (dx.astype(parts[0].dtype),), backward.kernel_grad_acc(parts[0], g, k, stride).astype(
        kernel.dtype)
  dparts, planes, start = [], [], 0
  for p in parts:  # per channel, so each part's kernel gradient is its own
    stop = start + p.shape[4]
    dparts.append(lax.slice_in_dim(dx, start, stop, axis=4).astype(p.dtype))
    planes.append(
        backward.kernel_grad_planes(p, lax.slice_in_dim(g, start, stop, axis=4), k, stride))
    start = stop
  # The parts' accumulators are joined before the one reduction, whose
  # summation order depends on the channel count: so the same bits as one
  # conv over the concatenation (tested), not only the same values.
  return tuple(dparts), backward.reduce_planes(lax.concatenate(planes, 3), k).astype(kernel.dtype)


_fused_conv.defvjp(_fused_fwd, _fused_bwd)


def depthwise_conv3d(x, kernel: jax.Array, stride: int = 1,
                     impl: str = "auto") -> jax.Array:
  """Depthwise 3D conv, 'SAME' padding.

  Args:
    x: (B, D, H, W, C), or a tuple of (B, D, H, W, C_i) parts to be
      concatenated along channels (C = Σ C_i): the same result as
      concatenating them first, but 'fused' then keeps only the parts for the
      backward pass, not their concatenation.
    kernel: (k, k, k, C), one k³ filter per channel.
    stride: 1 or 2 (same on all axes).
    impl: 'lax' (grouped conv), 'shift' (fused shifted multiply-adds),
      'fused' (the same forward with a CPU-friendly custom backward) or 'auto'
      (fastest for the default backend: 'fused' on CPU, 'lax' elsewhere).
  Returns:
    (B, ceil(D/s), ceil(H/s), ceil(W/s), C).
  """
  impl = resolve_impl(impl)
  parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
  whole = parts[0] if len(parts) == 1 else _whole(parts)
  _check(whole, kernel, stride)
  if SHAPES is not None:  # model.autotune records the calls' shapes
    SHAPES.append((tuple(whole.shape), tuple(kernel.shape), stride, str(whole.dtype)))
  if impl == "fused":
    return _fused_conv(parts, kernel, stride)
  x = concat(parts)
  if impl == "lax":
    return depthwise_conv3d_lax(x, kernel, stride)
  return depthwise_conv3d_shift(x, kernel, stride)


def _whole(parts):
  """The shape and dtype of the concatenation of `parts` (checked)."""
  first = parts[0]
  if any(p.ndim != 5 or p.shape[:4] != first.shape[:4] or p.dtype != first.dtype
         for p in parts):
    raise InputError(
        "depthwise_conv3d expects parts of shape (B, D, H, W, C_i) with equal (B, D, H, W) "
        f"and dtype, got {[(tuple(p.shape), str(p.dtype)) for p in parts]}.")
  return jax.ShapeDtypeStruct(first.shape[:4] + (sum(p.shape[4] for p in parts),), first.dtype)
