"""k³ shifted multiply-adds: the arithmetic shared by the 'shift' and 'fused' convs.

A 'SAME' 3D conv with a k³ kernel is a sum over the k³ taps (a, b, c) of the
zero-padded input, shifted by the tap and (for stride s) subsampled, times
the tap's weight. Written this way XLA fuses the k³ slices into one loop nest
on CPU. `depthwise.py` (forward passes) and `depthwise_backward.py` (the
'fused' backward, whose input gradient is the same sum over the padded
cotangent) use these; `dense.py` the padding.

Layout: x `(B, D, H, W, C)`, kernel `(k, k, k, C)`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) zero padding of XLA's 'SAME' for one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def shift_forward(x, kernel, stride):
  """The 'SAME' depthwise conv (B, D, H, W, C) → (B, D', H', W', C) as k³ shifted multiply-adds."""
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
        term = lax.mul(window, tap_weight(kernel, (a, b, c), window.shape))
        out = term if out is None else lax.add(out, term)
  return out


def tap_weight(kernel, tap, shape):
  """kernel[tap] (C,) broadcast to `shape` (..., C), in lax primitives.

  The k³-tap loops are traced once per conv in every train step;
  `jnp` indexing and operators cost ~10× more Python per op than these
  primitives (tracing the default train step: ~31k jnp ops), while the
  computation — and so every value — is the same.
  """
  a, b, c = tap
  w = lax.squeeze(lax.slice(kernel, (a, b, c, 0), (a + 1, b + 1, c + 1, kernel.shape[3])),
                  (0, 1, 2))
  return lax.broadcast_in_dim(w, shape, (len(shape) - 1,))


def tap_sum(xp, kernel, out_shape, stride):
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
        term = lax.mul(window, tap_weight(kernel, (a, b, cc), window.shape))
        out = term if out is None else lax.add(out, term)
  return out


def concat(parts):
  """The (B, D, H, W, C_i) parts joined along channels (one part: itself)."""
  return parts[0] if len(parts) == 1 else lax.concatenate(list(parts), 4)
