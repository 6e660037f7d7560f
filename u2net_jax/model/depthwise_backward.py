"""The 'fused' depthwise conv's backward pass, written for XLA's CPU backend.

`depthwise.depthwise_conv3d_fused` keeps `shift`'s forward and computes the
gradients here (why each piece has the form it has: BENCHMARKS.md):

  - input gradient (`input_grad`): itself a depthwise conv of the cotangent
    with the flipped kernel, k³ shifted multiply-adds evaluated in a loop
    over blocks of output planes (`taps_blocked`);
  - kernel gradient (`kernel_grad_acc`): each tap's products accumulated
    elementwise into plane-sized accumulators over blocks of the input
    (`kernel_grad_planes`, sliced per block by `padded_slabs`), then one
    small reduction per tap (`reduce_planes`);
  - `kernel_grad`: the 'shift' impl's kernel gradient (k³ reductions per
    block), kept for that impl and for comparison.

Shapes: x `(B, D, H, W, C)`, cotangent g `(B, D', H', W', C)`, kernel
`(k, k, k, C)`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from u2net_jax.model.shift_taps import same_padding, tap_sum

# Output depth planes per block in the 'fused' backward loops (measured: 4).
BLOCK = 4
# Output voxels per sample up to which 'fused''s kernel gradient loops over
# its taps rather than unrolling them (measured: 16³ — BENCHMARKS.md "Compile").
LOOPED_TAPS_MAX = 16 ** 3


def kernel_grad(x, g, k, stride, block=4):
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


def taps_blocked(xp, kernel, out_shape, stride, seed, block=BLOCK):
  """`tap_sum` over blocks of (one batch element, `block` output depth planes), in a loop.

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
    blk = tap_sum(xs, kernel, (bs, out_shape[1], out_shape[2]), stride)
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


def input_grad(g, kernel, spatial, stride):
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
  return taps_blocked(gp, kernel[::-1, ::-1, ::-1].astype(g.dtype), spatial, 1, seed)


def kernel_grad_acc(x, g, k, stride, terms=16):
  """dL/dkernel with elementwise accumulation: no large reductions in the loop.

  XLA's CPU reductions to a few values are slow (one thread, poorly
  vectorized), so instead of k³ reductions per block, a loop over blocks of
  output depth planes adds each tap's products over the block's batch
  elements and planes (`terms` of them, unrolled) into k³ plane-sized
  accumulators (H', W', C) — elementwise work that XLA vectorizes and
  parallelizes. One small reduction over (H', W') ends it (`reduce_planes`).
  """
  return reduce_planes(kernel_grad_planes(x, g, k, stride, terms), k)


def reduce_planes(acc, k):
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


def kernel_grad_planes(x, g, k, stride, terms=16):
  """`kernel_grad_acc`'s k³ plane-sized accumulators (k³, H', W', C), before the reduction.

  Output volumes up to `LOOPED_TAPS_MAX` voxels loop over the k³ taps
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
  x_slab = padded_slabs(x, pads, slab, bs * stride, stride * extra)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  looped = od * oh * ow <= LOOPED_TAPS_MAX
  size = (1, 1, stride * (oh - 1) + 1, stride * (ow - 1) + 1, c)

  # In lax primitives, each (batch element, plane) of the cotangent sliced
  # once per block rather than once per tap: see `shift_taps.tap_weight`.
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


def padded_slabs(x, pads, slab, step, extra):
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
