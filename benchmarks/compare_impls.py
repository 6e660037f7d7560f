r"""Train steps (and forwards) of several depthwise impls, interleaved in one process.

Usage:
  python benchmarks/compare_impls.py --preset=cpu --impls=shift,fused [--rounds=5]
  python benchmarks/compare_impls.py --impls=fused/autodiff_norm,fused

An impl 'NAME/autodiff_norm' builds NAME with InstanceNorm differentiated by
autodiff instead of by its hand-written backward; 'NAME@DENSE' also sets the
dense-conv impl (the input conv), e.g. `--impls=fused@lax,fused@shift`.

On a shared machine, absolute times drift with the load of other processes;
alternating the implementations step by step in one process exposes them to
the same load, so their ratio is meaningful even when the times are not.
Prints, per impl: compile time, median train step and forward (s), and the
ratio to the first impl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from benchmarks import presets  # pylint: disable=g-import-not-at-top
from u2net_jax import host_memory
from u2net_jax.train import train


def _autodiff_norm(x, scale, bias, eps=1e-5, act=False):
  """InstanceNorm (+ LeakyReLU) as plain jax.numpy, differentiated by autodiff."""
  from u2net_jax.model import layers  # pylint: disable=g-import-not-at-top
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=(1, 2, 3), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(1, 2, 3), keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale + bias
  return (layers.leaky_relu(y) if act else y).astype(x.dtype)


def build(preset: str, impl: str):
  p = presets.PRESETS[preset]
  impl, _, dense_impl = impl.partition("@")
  config = presets.make_config(preset, impl, dense_impl or "auto")
  config.train.batch_size = p["batch_per_device"]
  mesh = train.make_mesh(1)
  model, parts, state, tx_s, tx_d = train.build_train_state(
      config, presets.domain_specs(p["patch"]), mesh)
  rng = np.random.default_rng(0)
  patch = (p["patch"],) * 3
  b = config.train.batch_size
  image = jnp.asarray(rng.standard_normal((b, *patch, 1), np.float32))
  label = jnp.asarray((rng.random((b, *patch)) < 0.3).astype(np.int32))
  lr = jnp.float32(3e-4)
  t0 = time.perf_counter()
  step = jax.jit(train.make_train_step(parts, model, config, tx_s, tx_d), donate_argnums=(0,))
  step = step.lower(state, {"image": image, "label": label, "domain": jnp.int32(0)},
                    lr, lr).compile()
  compile_s = time.perf_counter() - t0
  fwd = jax.jit(lambda prm, x, d: parts.merge(prm)(x, d))
  fwd = fwd.lower(state["params"], image, jnp.int32(0)).compile()
  holder = {"state": state}

  def train_once(i):
    holder["state"], out = step(holder["state"], {"image": image, "label": label,
                                                  "domain": jnp.int32(i % 5)}, lr, lr)
    return out["loss"]

  def infer_once(i):
    return fwd(holder["state"]["params"], image, jnp.int32(i % 5))

  return compile_s, train_once, infer_once


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="cpu", choices=sorted(presets.PRESETS))
  ap.add_argument("--impls", default="shift,fused")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no_hugepages", action="store_true",
                  help="keep the environment's malloc (default: huge pages, as run.py)")
  ap.add_argument("--hugepages", action="store_true", help="the default; kept for old commands")
  args = ap.parse_args()
  if not args.no_hugepages:
    host_memory.restart_with_hugepages()
  impls = args.impls.split(",")
  built = {}
  from u2net_jax.model import layers  # pylint: disable=g-import-not-at-top
  fast_norm = layers.instance_norm
  for impl in impls:
    # 'IMPL/autodiff_norm': the same with InstanceNorm differentiated by
    # autodiff instead of its hand-written backward (what it replaced).
    name, _, variant = impl.partition("/")
    layers.instance_norm = _autodiff_norm if variant == "autodiff_norm" else fast_norm
    built[impl] = build(args.preset, name)
    layers.instance_norm = fast_norm
    print(f"{impl}: compiled in {built[impl][0]:.1f} s", flush=True)
    jax.block_until_ready(built[impl][1](0))
    jax.block_until_ready(built[impl][2](0))
  times = {(i, k): [] for i in impls for k in ("train", "infer")}
  for r in range(args.rounds):
    for impl in impls:
      for k, fn in (("train", built[impl][1]), ("infer", built[impl][2])):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(r + 1))
        times[(impl, k)].append(time.perf_counter() - t0)
  base = {k: statistics.median(times[(impls[0], k)]) for k in ("train", "infer")}
  for impl in impls:
    tr = statistics.median(times[(impl, "train")])
    inf = statistics.median(times[(impl, "infer")])
    print(f"{impl:<20} compile {built[impl][0]:6.1f} s  train {tr:7.3f} s "
          f"({base['train'] / tr:4.2f}x)  infer {inf:7.3f} s ({base['infer'] / inf:4.2f}x)  "
          f"train all {[round(t, 2) for t in times[(impl, 'train')]]}", flush=True)
  print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
  main()
