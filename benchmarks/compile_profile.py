r"""Where the `cpu` preset's train-step compile goes: XLA's own trace, per phase and kernel kind.

Usage:
  python benchmarks/compile_profile.py [--variants=default,no_optimizer] [--out FILE]

Compiles (does not run) the train step of `bench.py --preset=cpu` (`fused`
depthwise and `shift` dense convolutions fixed) under `jax.profiler` with
XLA's CPU trace annotations on (`XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true`,
set here), each variant in a fresh process with a cold cache, and prints one
JSON line per variant:
  wall_s          tracing + lowering + compiling, as timed by the caller
                  (the profiler adds ~1 s)
  xla_compile_s   `PjRtCpuClient::Compile` (XLA alone, no tracing/lowering)
  hlo_passes_s    the HLO pipelines before and after layout assignment
  backend_s       `CpuCompiler::RunBackend` (kernel emission, LLVM, thunks)
  kernels         fusions given their own kernel (`FusionCompiler::Compile`
                  events; XLA emits one kernel per distinct fused computation)
  emit_cpu_s      CPU seconds in those (MLIR emitters), summed over threads
  llvm_modules, llvm_cpu_s  LLVM's compile tasks and their CPU seconds,
                  summed over XLA's compile threads (2 on a 2-core CPU)
  top_kernel_kinds  emitter CPU seconds and count per kernel name stem
  code, xla_flags  `git describe --always --dirty` and XLA_FLAGS as run
Variants:
  default       the step as trained.
  no_optimizer  `optim.apply_updates` replaced by the identity (the gradients
                still feed the clipping norm, so all of the backward pass is
                compiled): what the optimizer and the non-finite guard cost.
  opaque_depthwise  (only when named) every depthwise conv replaced by a
                per-channel scale (stride 2: of every other voxel) with the
                same shapes: what the program would cost to compile if the
                depthwise convs were calls of a precompiled kernel (a custom
                call: nothing for XLA to emit) — a bound, not a model.
  opaque_depthwise_no_optimizer  (only when named) both of the above.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import tempfile
import time

from benchmarks import fresh_process

VARIANTS = ("default", "no_optimizer")
BOUND_VARIANTS = ("opaque_depthwise", "opaque_depthwise_no_optimizer")
_PHASES = {
    "xla_compile_s": ("PjRtCpuClient::Compile",),
    "hlo_passes_s": ("HLO passes through layout assignment (jit_flat_step)",
                     "HLO passes after layout assignment (jit_flat_step)"),
    "backend_s": ("CpuCompiler::RunBackend",),
    "emit_cpu_s": ("FusionCompiler::Compile",),
    "llvm_cpu_s": ("TaskDispatcher::dispatch",),
}


def summarize(events: list[dict]) -> dict:
  """Phase sums (seconds) and kernel counts from a Chrome/Perfetto trace's complete events."""
  total, count = collections.Counter(), collections.Counter()
  kinds, kind_n = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    total[e["name"]] += e.get("dur", 0) / 1e6
    count[e["name"]] += 1
    if e["name"] == "FusionCompiler::Compile":
      stem = re.sub(r"(\.\d+)?_kernel_module$", "", e.get("args", {}).get("module", "?"))
      kinds[stem] += e.get("dur", 0) / 1e6
      kind_n[stem] += 1
  out = {k: round(sum(total[n] for n in names), 2) for k, names in _PHASES.items()}
  out["kernels"] = count["FusionCompiler::Compile"]
  out["llvm_modules"] = count["TaskDispatcher::dispatch"]
  out["top_kernel_kinds"] = {k: [round(s, 2), kind_n[k]] for k, s in kinds.most_common(8)}
  return out


def measure(variant: str) -> dict:
  """Compiles the cpu preset's train step under the profiler (in this process)."""
  import jax  # pylint: disable=g-import-not-at-top

  from benchmarks import presets  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import depthwise  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import optim, train  # pylint: disable=g-import-not-at-top

  if variant not in VARIANTS + BOUND_VARIANTS:
    raise SystemExit(f"unknown variant {variant!r}; one of {VARIANTS + BOUND_VARIANTS}")
  if variant.endswith("no_optimizer"):
    optim.apply_updates = lambda params, grads, opt_state, active, **kw: (params, opt_state)
  if variant.startswith("opaque_depthwise"):
    depthwise.depthwise_conv3d = _opaque_depthwise
  model, state, step_fn, mesh, batch, patch, tcfg = presets.cpu_step()
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0  # Python's events would crowd out XLA's (1M-event cap)
  options.host_tracer_level = 3
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True, profiler_options=options)
    t0 = time.perf_counter()
    step, _ = train.compile_train_step(step_fn, mesh, batch, state, patch,
                                       model.max_in_channels, 0, 1.0, tcfg)
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    path = glob.glob(os.path.join(tmp, "plugins/profile/*/perfetto_trace.json.gz"))[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  return {"variant": variant, "wall_s": round(wall, 2),
          "trace_s": round(step.trace_seconds, 2), **summarize(events), "code": _code_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _opaque_depthwise(x, kernel, stride=1, impl="auto"):
  """`depthwise.depthwise_conv3d`'s shapes, not its work: x (parts joined) · kernel[centre]."""
  del impl
  from u2net_jax.model import shift_taps  # pylint: disable=g-import-not-at-top
  x = shift_taps.concat(tuple(x) if isinstance(x, (tuple, list)) else (x,))
  if stride == 2:
    x = x[:, ::2, ::2, ::2]
  k = kernel.shape[0] // 2
  return x * kernel[k, k, k].astype(x.dtype)


def _code_version() -> str:
  """The checkout's commit, with '-dirty' when tracked files are modified ('' outside git)."""
  try:
    out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.abspath(__file__)), check=True)
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # the child process's variant
  ap.add_argument("--out", default="", help="also append the JSON lines to this file")
  args = ap.parse_args()
  if args.one:
    print(json.dumps(measure(args.one)), flush=True)
    return
  flags = os.environ.get("XLA_FLAGS", "")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{flags} --xla_cpu_enable_xprof_traceme=true".strip())
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cold compile every time
  fresh_process.run_variants(os.path.abspath(__file__), args.variants.split(","), env,
                             args.out)

if __name__ == "__main__":
  main()
