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
import jax.numpy as jnp
from jax import lax

from u2net_jax import options
from u2net_jax.errors import ConfigError, InputError

IMPLS = options.DEPTHWISE_IMPLS

# While a list, every depthwise_conv3d call appends (x shape, kernel shape,
# stride, dtype) to it: how `autotune` learns a model's actual conv shapes.
SHAPES: list | None = None

# Output depth planes per block in the 'fused' backward loops (measured: 4).
_BLOCK = 4
# Output voxels per sample up to which 'fused''s kernel gradient loops over
# its taps rather than unrolling them (measured: 16³ — BENCHMARKS.md "Compile").
_LOOPED_TAPS_MAX = 16 ** 3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) zero padding of XLA's 'SAME' for one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


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
  `_kernel_grad`): 3× faster on CPU than autodiff's k³ full-volume reductions.
  """
  _check(x, kernel, stride)
  return _shift_conv(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shift_conv(x, kernel, stride):
  return _shift_forward(x, kernel, stride)


def _shift_fwd(x, kernel, stride):
  return _shift_forward(x, kernel, stride), (x, kernel)


def _shift_bwd(stride, res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda x_: _shift_forward(x_, kernel, stride), x)
  (dx,) = vjp_x(g)
  return dx, _kernel_grad(x, g, kernel.shape[0], stride).astype(kernel.dtype)


_shift_conv.defvjp(_shift_fwd, _shift_bwd)


def _kernel_grad(x, g, k, stride, block=4):
  """dL/dkernel (k, k, k, C) = Σ_{n,o} xpad[n, s·o + (a, b, c)] · g[n, o].

  Autodiff would make k³ reductions, each a full pass over memory. Looping
  over blocks of `block` output depth planes keeps each block's input in cache
  while its k³ products are reduced (the loop body is also small to compile).
  """
  spatial = x.shape[1:4]
  pads = [same_padding(n, k, stride) for n in spatial]
  od, oh, ow = g.shape[1:4]
  bs = min(block, od)
  nb = -(-od // bs)
  extra = nb * bs - od  # zero output planes: they add nothing
  g = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0), (0, 0)))
  xp = jnp.pad(x, ((0, 0), (pads[0][0], pads[0][1] + stride * extra), pads[1], pads[2], (0, 0)))
  slab = stride * (bs - 1) + k
  n, c = x.shape[0], x.shape[4]
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)

  def one_block(i):
    xs = lax.dynamic_slice_in_dim(xp, i * bs * stride, slab, axis=1)
    gs = lax.dynamic_slice_in_dim(g, i * bs, bs, axis=1)
    out = []
    for a in range(k):
      for b in range(k):
        for cc in range(k):
          win = lax.slice(xs, (0, a, b, cc, 0),
                          (n, a + stride * (bs - 1) + 1, b + stride * (oh - 1) + 1,
                           cc + stride * (ow - 1) + 1, c), (1, stride, stride, stride, 1))
          out.append(jnp.sum((win * gs).astype(acc_dtype), axis=(0, 1, 2, 3)))
    return jnp.stack(out)

  return jnp.sum(lax.map(one_block, jnp.arange(nb)), axis=0).reshape(k, k, k, c)


def _shift_forward(x, kernel, stride):
  k = kernel.shape[0]
  spatial = x.shape[1:4]
  pads = [same_padding(n, k, stride) for n in spatial]
  out_shape = [-(-n // stride) for n in spatial]
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  kernel = kernel.astype(x.dtype)
  out = None
  for a in range(k):
    for b in range(k):
      for c in range(k):
        starts = (0, a, b, c, 0)
        limits = (x.shape[0],
                  a + stride * (out_shape[0] - 1) + 1,
                  b + stride * (out_shape[1] - 1) + 1,
                  c + stride * (out_shape[2] - 1) + 1,
                  x.shape[4])
        window = lax.slice(xp, starts, limits, (1, stride, stride, stride, 1))
        term = lax.mul(window, _tap_weight(kernel, (a, b, c), window.shape))
        out = term if out is None else lax.add(out, term)
  return out


def _tap_weight(kernel, tap, shape):
  """kernel[tap] (C,) broadcast to `shape` (..., C), in lax primitives.

  The k³-tap loops below are traced once per conv in every train step;
  `jnp` indexing and operators cost ~10× more Python per op than these
  primitives (tracing the default train step: ~31k jnp ops), while the
  computation — and so every value — is the same.
  """
  a, b, c = tap
  w = lax.squeeze(lax.slice(kernel, (a, b, c, 0), (a + 1, b + 1, c + 1, kernel.shape[3])),
                  (0, 1, 2))
  return lax.broadcast_in_dim(w, shape, (len(shape) - 1,))


def depthwise_conv3d_fused(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """`shift`'s forward with a backward pass written for XLA's CPU backend.

  - Input gradient: itself a depthwise conv, written as k³ shifted
    multiply-adds over the padded cotangent (stride 1: the flipped kernel;
    stride 2: the cotangent dilated by zeros), evaluated in a loop over blocks
    (`_taps_blocked`) so that the padded cotangent is written once. Autodiff
    of `shift` instead pads each of the k³ slices' cotangents to full size
    and adds k³ full-size tensors.
  - Kernel gradient: elementwise accumulation into plane-sized accumulators
    (`_kernel_grad_acc`), not k³ reductions to a few values.
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
  return _shift_forward(_concat(parts), kernel, stride)


def _concat(parts):
  return parts[0] if len(parts) == 1 else lax.concatenate(list(parts), 4)


def _taps_blocked(xp, kernel, out_shape, stride, seed, block=_BLOCK):
  """`_taps` over blocks of (one batch element, `block` output depth planes), in a loop.

  The loop is what makes XLA write the padded input once: given the k³ slices
  directly, in a train step it fuses the input's producer (a norm's backward
  pass, an activation, ...) into each slice and materializes k³ full-size
  tensors (seen in the train step's profile; an optimization barrier does not
  stop it on CPU). Each block's slab of the input also stays in cache. Each
  block is written in place into the (B, D', H', W', C) result.
  """
  k = kernel.shape[0]
  n, c = xp.shape[0], xp.shape[4]
  od = out_shape[0]
  bs = max(1, min(block, od))
  nb = -(-od // bs)
  if n * nb < 2:  # a one-trip loop would be inlined
    bs = max(1, -(-od // 2))
    nb = -(-od // bs)
  extra = nb * bs - od
  if extra:
    xp = jnp.pad(xp, ((0, 0), (0, stride * extra), (0, 0), (0, 0), (0, 0)))
  slab = stride * (bs - 1) + k

  def body(i, out):
    xs = lax.dynamic_slice(xp, (i // nb, (i % nb) * bs * stride, 0, 0, 0),
                           (1, slab) + xp.shape[2:])
    blk = _taps(xs, kernel, (bs, out_shape[1], out_shape[2]), stride)
    return lax.dynamic_update_slice(out, blk, (i // nb, (i % nb) * bs, 0, 0, 0))

  # The output buffer's initial value is never read (every block is written),
  # but it is computed from `seed`, a value of this loop's own input (not a
  # padding zero, which XLA would fold): a constant zero buffer of the same
  # shape is shared by XLA among all such loops of a train step, copied once
  # per loop, and those copies were live long before their loops ran
  # (BENCHMARKS.md "Host memory").
  init = lax.broadcast(lax.mul(seed, jnp.zeros((), xp.dtype)),
                       (n, nb * bs, out_shape[1], out_shape[2], c))
  out = lax.fori_loop(0, n * nb, body, init)
  return out[:, :od] if extra else out


def _taps(xp, kernel, out_shape, stride):
  """Σ_(a,b,c) xp[:, s·o + (a, b, c)] · kernel[a, b, c] for output positions o."""
  k = kernel.shape[0]
  n, c = xp.shape[0], xp.shape[4]
  out = None
  for a in range(k):
    for b in range(k):
      for cc in range(k):
        window = lax.slice(
            xp, (0, a, b, cc, 0),
            (n, a + stride * (out_shape[0] - 1) + 1, b + stride * (out_shape[1] - 1) + 1,
             cc + stride * (out_shape[2] - 1) + 1, c), (1, stride, stride, stride, 1))
        term = lax.mul(window, _tap_weight(kernel, (a, b, cc), window.shape))
        out = term if out is None else lax.add(out, term)
  return out


def _fused_fwd(parts, kernel, stride):
  # The forward's k³ slices are fused well as they are (blocking it measured
  # no faster in the train step); only the backward needs the loops.
  return _shift_forward(_concat(parts), kernel, stride), (parts, kernel)


def _fused_bwd(stride, res, g):
  parts, kernel = res
  dx = _input_grad(g, kernel, parts[0].shape[1:4], stride)
  k = kernel.shape[0]
  if len(parts) == 1:
    return (dx.astype(parts[0].dtype),), _kernel_grad_acc(parts[0], g, k, stride).astype(
        kernel.dtype)
  dparts, planes, start = [], [], 0
  for p in parts:  # per channel, so each part's kernel gradient is its own
    stop = start + p.shape[4]
    dparts.append(lax.slice_in_dim(dx, start, stop, axis=4).astype(p.dtype))
    planes.append(_kernel_grad_planes(p, lax.slice_in_dim(g, start, stop, axis=4), k, stride))
    start = stop
  # The parts' accumulators are joined before the one reduction, whose
  # summation order depends on the channel count: so the same bits as one
  # conv over the concatenation (tested), not only the same values.
  return tuple(dparts), _reduce_planes(lax.concatenate(planes, 3), k).astype(kernel.dtype)


_fused_conv.defvjp(_fused_fwd, _fused_bwd)


def _input_grad(g, kernel, spatial, stride):
  """dL/dx of the 'SAME' depthwise conv: Σ_a g[(i + lo - a) / s] · w[a] (integer indices).

  The cotangent is dilated by `stride - 1` zeros and padded so that this is a
  stride-1 correlation with the flipped kernel.
  """
  k = kernel.shape[0]
  cfg = [(0, 0, 0)]
  for n, m in zip(spatial, g.shape[1:4]):
    lo, _ = same_padding(n, k, stride)
    low = k - 1 - lo
    high = n + k - 1 - low - (stride * (m - 1) + 1)
    cfg.append((low, high, stride - 1))
  cfg.append((0, 0, 0))
  gp = lax.pad(g, jnp.zeros((), g.dtype), cfg)
  seed = lax.reshape(lax.slice(g, (0,) * 5, (1,) * 5), ())
  return _taps_blocked(gp, kernel[::-1, ::-1, ::-1].astype(g.dtype), spatial, 1, seed)


def _kernel_grad_acc(x, g, k, stride, terms=16):
  """dL/dkernel with elementwise accumulation: no large reductions in the loop.

  XLA's CPU reductions to a few values are slow (one thread, poorly
  vectorized), so instead of k³ reductions per block, a loop over blocks of
  output depth planes adds each tap's products over the block's batch
  elements and planes (`terms` of them, unrolled) into k³ plane-sized
  accumulators (H', W', C) — elementwise work that XLA vectorizes and
  parallelizes. One small reduction over (H', W') ends it (`_reduce_planes`).
  """
  return _reduce_planes(_kernel_grad_planes(x, g, k, stride, terms), k)


def _reduce_planes(acc, k):
  """The k³ accumulators (k³, H', W', C) → the kernel gradient (k, k, k, C).

  One (H', W', C) → (C,) reduction per tap, in a loop: one small program
  shared by every tap, where k³ reductions written out were k³ kernels for
  XLA to compile. (One `jnp.sum` of the whole array over (H', W') sums in
  another order for some shapes: other bits than the per-tap reductions.)
  """
  def one(t, out):
    s = lax.dynamic_index_in_dim(acc, t, 0, keepdims=False)
    return lax.dynamic_update_index_in_dim(out, jnp.sum(s, axis=(0, 1)), t, 0)
  out = lax.fori_loop(0, k ** 3, one, jnp.zeros((k ** 3, acc.shape[-1]), acc.dtype))
  return out.reshape(k, k, k, acc.shape[-1])


def _kernel_grad_planes(x, g, k, stride, terms=16):
  """`_kernel_grad_acc`'s k³ plane-sized accumulators (k³, H', W', C), before the reduction.

  Output volumes up to `_LOOPED_TAPS_MAX` voxels loop over the k³ taps
  instead of unrolling them: a ~27× smaller loop body, which XLA compiles
  faster; slower to run, but at the small levels that costs nothing
  measurable (BENCHMARKS.md "Compile"). The same bits either way (tested).
  """
  n, c = x.shape[0], x.shape[4]
  pads = [same_padding(s, k, stride) for s in x.shape[1:4]]
  od, oh, ow = g.shape[1:4]
  bs = max(1, min(terms // n, od))
  nb = -(-od // bs)
  if nb < 2 and od > 1:  # a one-trip loop would be inlined
    bs = -(-od // 2)
    nb = -(-od // bs)
  extra = nb * bs - od
  g = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0), (0, 0)))
  slab = stride * (bs - 1) + k
  x_slab = _padded_slabs(x, pads, slab, bs * stride, stride * extra)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  looped = od * oh * ow <= _LOOPED_TAPS_MAX
  size = (1, 1, stride * (oh - 1) + 1, stride * (ow - 1) + 1, c)

  # In lax primitives, each (batch element, plane) of the cotangent sliced
  # once per block rather than once per tap: see `_tap_weight`.
  def tap(xs, planes, a, b, cc):  # a, b, cc: ints, or traced when looped
    total = None
    for i in range(n):
      for j in range(bs):
        start = (i, a + stride * j, b, cc, 0)
        if looped:
          win = lax.dynamic_slice(xs, start, size)
          win = lax.slice(win, (0,) * 5, size, (1, 1, stride, stride, 1))
        else:
          win = lax.slice(xs, start, tuple(p + q for p, q in zip(start, size)),
                          (1, 1, stride, stride, 1))
        term = lax.mul(lax.squeeze(win, (0, 1)), planes[i][j])
        if term.dtype != acc_dtype:
          term = lax.convert_element_type(term, acc_dtype)
        total = term if total is None else lax.add(total, term)
    return total

  def block(blk):
    gs = lax.dynamic_slice_in_dim(g, blk * bs, bs, axis=1)
    planes = [[lax.squeeze(lax.slice_in_dim(lax.slice_in_dim(gs, i, i + 1, axis=0),
                                            j, j + 1, axis=1), (0, 1))
               for j in range(bs)] for i in range(n)]
    return x_slab(blk), planes

  if looped:  # acc (k³, H', W', C)
    def looped_body(blk, acc):
      xs, planes = block(blk)

      def one_tap(t, acc):
        total = tap(xs, planes, t // (k * k), (t // k) % k, t % k)
        cur = lax.dynamic_index_in_dim(acc, t, 0, keepdims=False)
        return lax.dynamic_update_index_in_dim(acc, lax.add(cur, total), t, 0)
      return lax.fori_loop(0, k ** 3, one_tap, acc)

    return lax.fori_loop(0, nb, looped_body, jnp.zeros((k ** 3, oh, ow, c), acc_dtype))

  def body(blk, acc):
    xs, planes = block(blk)
    taps = [(a, b, cc) for a in range(k) for b in range(k) for cc in range(k)]
    return tuple(lax.add(s, tap(xs, planes, *t)) for s, t in zip(acc, taps))

  zero = tuple(jnp.zeros((oh, ow, c), acc_dtype) for _ in range(k ** 3))
  return jnp.stack(lax.fori_loop(0, nb, body, zero))


def _padded_slabs(x, pads, slab, step, extra):
  """blk ↦ depth rows [blk·step, blk·step + slab) of x zero-padded by `pads` (+ `extra` at the end).

  The same values as slicing `jnp.pad(x, ...)`, without the full-size padded
  copy: given that, XLA shares it with the forward pass's padded input and
  keeps it alive from the forward to the backward — at the top level 400 MB
  of the `cpu` preset's train step beside `x` itself (BENCHMARKS.md "Host
  memory"). Here each loop trip slices `slab` depth planes of x (the start
  clamped into the volume), pads them, and shifts the clamped rows back into
  place with a second slice, so rows outside the volume are zeros.
  """
  depth = x.shape[1]
  lo = pads[0][0]
  if depth < slab:  # small volumes: one padded copy is small too
    xp = jnp.pad(x, ((0, 0), (lo, pads[0][1] + extra), pads[1], pads[2], (0, 0)))
    return lambda blk: lax.dynamic_slice_in_dim(xp, blk * step, slab, axis=1)
  cfg = [(0, 0, 0), (slab, slab, 0), (*pads[1], 0), (*pads[2], 0), (0, 0, 0)]

  def x_slab(blk):
    first = blk * step - lo  # first row of x this slab needs (may be < 0 or run past the end)
    start = jnp.clip(first, 0, depth - slab)
    rows = lax.pad(lax.dynamic_slice_in_dim(x, start, slab, axis=1),
                   jnp.zeros((), x.dtype), cfg)
    return lax.dynamic_slice_in_dim(rows, slab + first - start, slab, axis=1)
  return x_slab


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
  x = _concat(parts)
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
