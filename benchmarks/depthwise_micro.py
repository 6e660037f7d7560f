r"""Depthwise 3³ conv implementations side by side, forward and forward+backward.

Usage:
  python benchmarks/depthwise_micro.py [--impls=shift,fused] [--repeats=7]
      [--shapes=2x64x64x64x16:1,2x64x64x64x16:2]

For each shape (B x D x H x W x C : stride) and implementation, times the
forward pass and the gradient with respect to input and kernel (a weighted
sum as the loss), alternating implementations round by round so that load
from other processes hits all of them alike; prints the medians in ms. The
default shapes are the cpu preset's level-0 and level-1 depthwise convs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from u2net_jax.model import depthwise

DEFAULT_SHAPES = "2x64x64x64x16:1,2x64x64x64x32:1,2x64x64x64x16:2,2x32x32x32x32:1"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--impls", default="shift,fused")
  ap.add_argument("--shapes", default=DEFAULT_SHAPES)
  ap.add_argument("--repeats", type=int, default=7)
  args = ap.parse_args()
  impls = args.impls.split(",")
  for spec in args.shapes.split(","):
    dims, stride = spec.split(":")
    shape = tuple(int(v) for v in dims.split("x"))
    stride = int(stride)
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, shape[-1]), jnp.float32)
    out_shape = (shape[0], *[-(-n // stride) for n in shape[1:4]], shape[-1])
    cot = jax.random.normal(jax.random.key(2), out_shape, jnp.float32)
    fns = {}
    for impl in impls:
      fwd = jax.jit(lambda x, w, impl=impl: depthwise.depthwise_conv3d(x, w, stride, impl))
      grad = jax.jit(jax.grad(
          lambda x, w, cot, impl=impl: jnp.sum(
              depthwise.depthwise_conv3d(x, w, stride, impl) * cot),
          argnums=(0, 1)))
      t0 = time.perf_counter()
      jax.block_until_ready(fwd(x, w))
      jax.block_until_ready(grad(x, w, cot))
      fns[impl] = (fwd, grad, time.perf_counter() - t0)
    times = {(i, k): [] for i in impls for k in ("fwd", "grad")}
    for _ in range(args.repeats):
      for impl in impls:
        for k, fn, fargs in zip(("fwd", "grad"), fns[impl][:2], ((x, w), (x, w, cot))):
          t0 = time.perf_counter()
          jax.block_until_ready(fn(*fargs))
          times[(impl, k)].append(time.perf_counter() - t0)
    for impl in impls:
      print(f"{spec:<22} {impl:<8} fwd {1e3 * statistics.median(times[(impl, 'fwd')]):8.1f} ms"
            f"  fwd+bwd {1e3 * statistics.median(times[(impl, 'grad')]):8.1f} ms"
            f"  (compile {fns[impl][2]:.1f} s)", flush=True)


if __name__ == "__main__":
  main()
