r"""The `cpu` preset's train step under memory/compile variants, each in a fresh process.

Usage:
  python benchmarks/step_memory.py [--variants=default,remat_level,remat_unit,terms8,terms4,terms2]
      [--out FILE]
  XLA_FLAGS=--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE python benchmarks/step_memory.py

Variants (everything else as `bench.py --preset=cpu`, `fused` depthwise and
`shift` dense convolutions fixed, so that the autotuner does not run):
  default       the model as trained.
  remat_level   `model.remat=true` (each encoder/decoder level under nnx.remat).
  remat_unit    every `ConvUnit` under nnx.remat (an experiment, not an option).
  termsN        `fused`'s kernel gradient with N unrolled terms per loop trip
                (`depthwise_backward.kernel_grad_acc`, default 16).
  tap_loop, depth_tap_loop  (only when named) the kernel gradient's taps in
                a loop: all k³, or the k depth offsets with k² taps unrolled.
  tap_loop_uptoN  (only when named) all taps looped where the conv's output
                has ≤ N³ voxels, unrolled elsewhere (written before the model
                adopted N = 16 as `depthwise_backward.LOOPED_TAPS_MAX`; run on that
                code it loops ≤ max(N, 16)³).
Per variant, one JSON line: compile seconds (cold: no persistent cache),
XLA's memory analysis of the step (`temp_size_in_bytes` = its temporaries),
the median of 3 train steps after 2 warm-up steps, the final loss, the peak
RSS, and the RSS before the compile (interpreter, JAX, train state), after
it, and at the end once the compiled step is deleted (with glibc's heap in
use / free at those two points). Each variant runs in its own process (a
fresh compiler heap; huge-page malloc as run.py unless --no_hugepages);
XLA_FLAGS from the environment apply to every variant.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

from benchmarks import fresh_process
from u2net_jax import host_memory

VARIANTS = ("default", "remat_level", "remat_unit", "terms8", "terms4", "terms2")
# Not run by default (measured once, 2026-12-01; BENCHMARKS.md): the kernel
# gradient's k³ taps in a loop rather than unrolled (smaller program).
LOOP_VARIANTS = ("tap_loop", "depth_tap_loop")


def _apply(variant: str) -> bool:
  """Patches the model code for `variant`; returns whether model.remat is on."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import depthwise_backward, layers  # pylint: disable=g-import-not-at-top
  if variant.startswith("terms"):
    depthwise_backward.kernel_grad_acc.__defaults__ = (int(variant[len("terms"):]),)
  elif variant == "remat_unit":
    plain = layers.ConvUnit.__call__

    def call(self, x, sel, *args, **kw):
      return nnx.remat(lambda mod, y: plain(mod, y, sel, *args, **kw))(self, x)
    layers.ConvUnit.__call__ = call
  elif variant in LOOP_VARIANTS:
    depthwise_backward.kernel_grad_acc = functools.partial(
        _kernel_grad_tap_loop, over_depth_only=variant == "depth_tap_loop")
  elif variant.startswith("tap_loop_upto"):  # tap_loop_uptoN: looped where the output ≤ N³
    unrolled = depthwise_backward.kernel_grad_acc
    edge = int(variant[len("tap_loop_upto"):])

    def by_size(x, g, k, stride, terms=16):
      if g.shape[1] * g.shape[2] * g.shape[3] <= edge ** 3:
        return _kernel_grad_tap_loop(x, g, k, stride, terms)
      return unrolled(x, g, k, stride, terms)
    depthwise_backward.kernel_grad_acc = by_size
  elif variant not in ("default", "remat_level"):
    raise SystemExit(
        f"unknown variant {variant!r}; one of {VARIANTS + LOOP_VARIANTS} or termsN")
  return variant == "remat_level"


def _kernel_grad_tap_loop(x, g, k, stride, terms=16, *, over_depth_only=False):
  """`depthwise_backward.kernel_grad_acc` with its k³ taps in an inner loop, not unrolled.

  `over_depth_only`: loop over the depth offset a only (k trips, the k² (b, c)
  taps unrolled); else over all k³ taps (dynamic offsets in every axis).
  Same blocks, terms and accumulation into plane-sized accumulators.
  """
  from jax import lax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import depthwise_backward, shift_taps  # pylint: disable=g-import-not-at-top
  n, c = x.shape[0], x.shape[4]
  pads = [shift_taps.same_padding(s, k, stride) for s in x.shape[1:4]]
  od, oh, ow = g.shape[1:4]
  bs = max(1, min(terms // n, od))
  nb = -(-od // bs)
  if nb < 2 and od > 1:
    bs = -(-od // 2)
    nb = -(-od // bs)
  extra = nb * bs - od
  g = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0), (0, 0)))
  slab = stride * (bs - 1) + k
  x_slab = depthwise_backward.padded_slabs(x, pads, slab, bs * stride, stride * extra)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  hs, ws = stride * (oh - 1) + 1, stride * (ow - 1) + 1

  def products(xs, planes, a, b, cc):  # Σ over the block's (sample, plane) pairs of one tap
    total = None
    for i in range(n):
      for j in range(bs):
        win = lax.dynamic_slice(xs, (i, a + stride * j, b, cc, 0), (1, 1, hs, ws, c))
        win = lax.slice(win, (0,) * 5, win.shape, (1, 1, stride, stride, 1))
        term = lax.mul(lax.squeeze(win, (0, 1)), planes[i][j]).astype(acc_dtype)
        total = term if total is None else lax.add(total, term)
    return total

  def body(blk, acc):
    xs = x_slab(blk)
    gs = lax.dynamic_slice_in_dim(g, blk * bs, bs, axis=1)
    planes = [[gs[i, j] for j in range(bs)] for i in range(n)]
    if over_depth_only:  # acc (k, k², H', W', C)
      def step(a, acc):
        taps = jnp.stack([products(xs, planes, a, b, cc) for b in range(k) for cc in range(k)])
        return lax.dynamic_update_index_in_dim(
            acc, lax.add(lax.dynamic_index_in_dim(acc, a, 0, keepdims=False), taps), a, 0)
      return lax.fori_loop(0, k, step, acc)

    def step(t, acc):  # acc (k³, H', W', C)
      tap = products(xs, planes, t // (k * k), (t // k) % k, t % k)
      return lax.dynamic_update_index_in_dim(
          acc, lax.add(lax.dynamic_index_in_dim(acc, t, 0, keepdims=False), tap), t, 0)
    return lax.fori_loop(0, k ** 3, step, acc)

  shape = (k, k * k) if over_depth_only else (k ** 3,)
  acc = lax.fori_loop(0, nb, body, jnp.zeros(shape + (oh, ow, c), acc_dtype))
  return jnp.sum(acc, axis=(-3, -2)).reshape(k, k, k, c)


def measure(variant: str) -> dict:
  """Compiles and runs the cpu preset's train step under `variant` (in this process)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import paper_analyze, presets  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import train

  model, state, step_fn, mesh, batch, patch, tcfg = presets.cpu_step(remat=_apply(variant))
  host_memory.release_free_memory()
  rss_state = host_memory.rss_mb()  # interpreter, JAX, the train state
  t0 = time.perf_counter()
  step, _ = train.compile_train_step(step_fn, mesh, batch, state, patch, model.max_in_channels,
                                     0, 1.0, tcfg)
  compile_s = time.perf_counter() - t0
  rss_compiled = host_memory.rss_mb()
  heap_compiled = host_memory.malloc_mb()
  memory = paper_analyze.memory_summary(step.fn)
  rng = np.random.default_rng(0)
  image = jax.device_put(rng.standard_normal((batch, *patch, 1), np.float32))
  label = jax.device_put((rng.random((batch, *patch)) < 0.3).astype(np.int32))
  leaves = jax.tree.leaves(state)
  del state
  lr = jnp.float32(3e-4)
  times = []
  for i in range(5):
    t0 = time.perf_counter()
    leaves, out = step.fn(leaves, {"image": image, "label": label, "domain": jnp.int32(i % 5)},
                          lr, lr)
    jax.block_until_ready(out["loss"])
    times.append(time.perf_counter() - t0)
  loss = float(out["loss"])
  del out
  peak = host_memory.peak_rss_mb()
  step = None  # the compiled executable: what deleting it gives back
  host_memory.release_free_memory()
  rss_no_executable = host_memory.rss_mb()
  heap_no_executable = host_memory.malloc_mb()
  return {
      "variant": variant,
      "compile_s": round(compile_s, 2),
      "temp_mb": round(memory["temp_size_in_bytes"] / 2 ** 20, 1),
      "train_step_s": round(statistics.median(times[2:]), 4),
      "train_step_s_all": [round(t, 4) for t in times[2:]],
      "final_loss": loss,
      "rss_before_compile_mb": rss_state,
      "rss_after_compile_mb": rss_compiled,
      "rss_without_executable_mb": rss_no_executable,
      "peak_rss_mb": peak,
      # glibc's heap (MB in use / free in its arenas) after the compile and
      # without the executable: what the compile leaves resident.
      "malloc_after_compile_mb": heap_compiled,
      "malloc_without_executable_mb": heap_no_executable,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # the child process's variant
  ap.add_argument("--out", default="", help="also append the JSON lines to this file")
  ap.add_argument("--no_hugepages", action="store_true",
                  help="keep the environment's malloc (default: huge pages, as run.py)")
  args = ap.parse_args()
  if args.one:
    print(json.dumps(measure(args.one)), flush=True)
    return
  if not args.no_hugepages:
    host_memory.restart_with_hugepages()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cold compile every time
  fresh_process.run_variants(os.path.abspath(__file__), args.variants.split(","), env,
                             args.out)

if __name__ == "__main__":
  main()
