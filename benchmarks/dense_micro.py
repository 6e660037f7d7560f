r"""Dense k³ conv implementations side by side: forward, forward+backward, kernel gradient.

Usage:
  python benchmarks/dense_micro.py [--impls=lax,shift] [--repeats=7]
      [--shapes=2x64x64x64x1-16:1,2x32x32x32x8-8:1]

Shapes are B x D x H x W x C_in - C_out : stride (kernel 3³). For each shape
and implementation it times the forward pass, the gradient with respect to
input and kernel, and the gradient with respect to the kernel alone (what an
input conv needs: its input is data), with a weighted sum as the loss,
alternating implementations round by round so that load from other
processes hits all of them alike; prints the medians in ms. The default
shapes are the `cpu` benchmark's input conv and the dense convs of the
paper-table models (F0 = 8, 32³ patches, batch 2): level-0 stride 1, the
level-0 decoder conv after the skip concat, and a stride-2 downsampling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from u2net_jax.model import dense

DEFAULT_SHAPES = ("2x64x64x64x1-16:1,2x32x32x32x1-8:1,2x32x32x32x8-8:1,2x32x32x32x16-8:1,"
                  "2x32x32x32x8-16:2,2x16x16x16x16-16:1")


def _parse(spec: str):
  dims, stride = spec.split(":")
  *lead, cin_cout = dims.split("x")
  cin, cout = cin_cout.split("-")
  return tuple(int(v) for v in lead) + (int(cin),), int(cout), int(stride)


def _programs(impl, stride):
  conv = lambda x, w: dense.conv3d(x, w, stride, impl)
  loss = lambda x, w, cot: jnp.sum(conv(x, w) * cot)
  return {"fwd": jax.jit(conv),
          "fwd+bwd": jax.jit(jax.grad(loss, argnums=(0, 1))),
          "kernel grad": jax.jit(jax.grad(loss, argnums=1))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--impls", default="lax,shift")
  ap.add_argument("--shapes", default=DEFAULT_SHAPES)
  ap.add_argument("--repeats", type=int, default=7)
  args = ap.parse_args()
  impls = args.impls.split(",")
  print(f"# jax {jax.__version__}, {jax.devices()[0].device_kind}, load "
        f"{os.getloadavg()[0]:.2f}; median of {args.repeats}, ms", flush=True)
  for spec in args.shapes.split(","):
    shape, cout, stride = _parse(spec)
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, shape[-1], cout), jnp.float32)
    cot = jax.random.normal(jax.random.key(2), dense.conv3d_lax(x, w, stride).shape)
    inputs = {"fwd": (x, w), "fwd+bwd": (x, w, cot), "kernel grad": (x, w, cot)}
    progs = {impl: _programs(impl, stride) for impl in impls}
    for impl in impls:  # compile and warm up
      for kind, fn in progs[impl].items():
        jax.block_until_ready(fn(*inputs[kind]))
    times = {(i, k): [] for i in impls for k in inputs}
    for _ in range(args.repeats):
      for impl in impls:
        for kind, fn in progs[impl].items():
          t0 = time.perf_counter()
          jax.block_until_ready(fn(*inputs[kind]))
          times[(impl, kind)].append(time.perf_counter() - t0)
    for impl in impls:
      cells = "  ".join(f"{kind} {1e3 * statistics.median(times[(impl, kind)]):8.1f}"
                        for kind in inputs)
      print(f"{spec:<22} {impl:<6} {cells}", flush=True)


if __name__ == "__main__":
  main()
