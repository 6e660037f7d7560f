r"""Ways to compute the depthwise kernel gradient on CPU, side by side.

Usage:
  python benchmarks/kernel_grad_variants.py [--shapes=2x64x64x64x16,2x16x16x16x64]

dL/dkernel[a, b, c, ch] = Σ_{n, o} xpad[n, o + (a, b, c), ch] · g[n, o, ch],
stride 1. Variants:
  reduce_full      27 reductions over the whole volume (what autodiff does).
  reduce_bK        `shift`'s backward: a loop over blocks of K output depth
                   planes, 27 reductions per block.
  accT             `fused`'s backward: a loop over blocks, each tap's
                   products over T (sample, plane) pairs added elementwise
                   into a plane-sized accumulator; one small reduction at
                   the end (T = 16 is what `fused` uses).
Prints the median of 5 alternating rounds (ms) and the largest relative
difference to `reduce_full`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from u2net_jax import host_memory
from u2net_jax.model import depthwise_backward


def reduce_full(x, g):
  d, h, w, c = x.shape[1:]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
  out = [jnp.sum(xp[:, a:a + d, b:b + h, cc:cc + w] * g, axis=(0, 1, 2, 3))
         for a in range(3) for b in range(3) for cc in range(3)]
  return jnp.stack(out).reshape(3, 3, 3, c)


VARIANTS = {
    "reduce_full": reduce_full,
    "reduce_b1": lambda x, g: depthwise_backward.kernel_grad(x, g, 3, 1, block=1),
    "reduce_b4": lambda x, g: depthwise_backward.kernel_grad(x, g, 3, 1, block=4),
    "acc8": lambda x, g: depthwise_backward.kernel_grad_acc(x, g, 3, 1, terms=8),
    "acc16": lambda x, g: depthwise_backward.kernel_grad_acc(x, g, 3, 1, terms=16),
    "acc32": lambda x, g: depthwise_backward.kernel_grad_acc(x, g, 3, 1, terms=32),
}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--shapes", default="2x64x64x64x16,2x16x16x16x64")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--no_hugepages", action="store_true",
                  help="keep the environment's malloc (default: huge pages, as run.py)")
  ap.add_argument("--hugepages", action="store_true", help="the default; kept for old commands")
  args = ap.parse_args()
  if not args.no_hugepages:
    host_memory.restart_with_hugepages()
  names = args.variants.split(",")
  for spec in args.shapes.split(","):
    shape = tuple(int(v) for v in spec.split("x"))
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    g = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    fns = {n: jax.jit(VARIANTS[n]) for n in names}
    ref = jax.block_until_ready(jax.jit(reduce_full)(x, g))
    err = {}
    for n, f in fns.items():
      err[n] = float(jnp.abs(f(x, g) - ref).max() / jnp.abs(ref).max())
    times = {n: [] for n in names}
    for _ in range(5):
      for n, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(x, g))
        times[n].append(time.perf_counter() - t0)
    for n in names:
      print(f"{spec:<16} {n:<12} {1e3 * statistics.median(times[n]):8.1f} ms"
            f"  (rel. diff {err[n]:.1e})", flush=True)
  print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
  main()
