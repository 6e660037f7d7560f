r"""Train-step and inference benchmark of the universal model (one JSON object).

Usage:
  python benchmarks/bench.py --preset=cpu [--out FILE] [--impl=auto|lax|shift|...]
  python benchmarks/bench.py --preset=gpu        # or tpu: paper scale + 256³ sliding window
  python benchmarks/bench.py --preset=smoke      # tiny, seconds (used by tests)
  python benchmarks/bench.py --preset=paper --analyze [--remat] --out FILE
                                                 # compile only: XLA cost/memory + roofline

Presets (fixed, so results compare over time and against other frameworks):
  cpu    separable model, F0 = 16, 4 levels (features 16, 32, 64, 128), five
         domains each with 1 input channel and 2 classes, patch 64³, batch 2,
         float32, Adam, cross-entropy.
  gpu    paper scale: F0 = 16, 6 levels, patch 128³, batch 2 per device,
  tpu    bfloat16 compute (float32 weights), plus sliding-window inference
         over a 256³ volume (50 % overlap, Gaussian weights).
  smoke  F0 = 4, 3 levels, 16³, batch 2, and a 32³ sliding window.
  paper  the `msd` preset's model and train step (dense stride-2 downsampling,
         Lovász + focal loss, official single Adam with L2 5e-4) at the gpu
         preset's sizes (F0 16, 6 levels, 128³, batch 2, bfloat16 compute) on
         five MSD-shaped domains (channels and classes of the MSD tasks; no data).

`--analyze` compiles and does not run (`paper_analyze.py`): XLA's cost and
memory analysis of the one-device train step and of one sliding-window
batch, with a roofline projection for accelerators this machine does not
have (`paper_analyze.HARDWARE`). The presets' models and configs:
`presets.py`. Implementations default to XLA's convolutions there (`lax`, what
`auto` picks on GPU/TPU).

What is timed is what training runs: the model, optimizer and step come from
`u2net_jax.train` (`build_train_state`, `make_train_step`, `compile_train_step`:
one compiled program for every domain, the domain a traced int32, the state
passed as its flat leaves and donated, as the training loop calls it). A train step is
forward + backward + Adam on one domain, domains round-robin; inference is the
forward pass (logits) of the same batch. Each reported time is the median of
`--steps` timed steps after `--warmup` untimed ones. voxels/s = batch × patch
voxels / median time. `flops_per_step` is XLA's cost analysis of the compiled
train step; `achieved_gflops` = flops_per_step / train_step_s. `compile_s` is
tracing + lowering + compiling the train step (no persistent cache).
Like `run.py`, the script restarts itself with glibc's malloc using
transparent huge pages (`u2net_jax/host_memory.py`); `--no_hugepages` keeps
the environment as it is.
"""

from __future__ import annotations

from benchmarks import cpu_info  # pylint: disable=g-import-not-at-top,wrong-import-position

import argparse
import json
import os
import resource
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import paper_analyze
from benchmarks.presets import DOMAINS, PRESETS, domain_specs, make_config
from u2net_jax import host_memory
from u2net_jax.model import dense, depthwise, models
from u2net_jax.train import train


REQUIRED_KEYS = ("preset", "platform", "device_kind", "jax_version", "params", "train_step_s",
                 "train_voxels_per_s", "infer_step_s", "infer_voxels_per_s", "compile_s",
                 "peak_rss_mb", "flops_per_step", "achieved_gflops")


def _cost(compiled) -> float:
  """FLOPs of a compiled program from XLA's cost analysis (0 if unavailable)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except — not every backend implements it
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def _median_time(fn, steps: int, warmup: int) -> tuple[float, list[float]]:
  for i in range(warmup):
    jax.block_until_ready(fn(i))
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(warmup + i))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def _device_peak_mb(device) -> float | None:
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except — CPU has none
    return None
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2 ** 20


def run(preset: str, impl: str = "auto", steps: int = 5, warmup: int = 2,
        window: bool = True, seed: int = 0, dense_impl: str = "auto",
        remat: bool = False, keep_heap: bool = False) -> dict:
  """Runs the benchmark; returns the result dict (see REQUIRED_KEYS).

  keep_heap: leave the compiler's freed heap resident (training returns it
  to the OS: u2net_jax/host_memory.py), to measure what that changes.
  """
  p = PRESETS[preset]
  config = make_config(preset, impl, dense_impl, remat)
  mesh = train.make_mesh(0)
  n_dev = mesh.devices.size
  batch = p["batch_per_device"] * n_dev
  patch = (p["patch"],) * 3
  specs = domain_specs(p["patch"], preset)
  config.train.batch_size = batch

  model, parts, state, tx_shared, tx_domain = train.build_train_state(config, specs, mesh)
  counts = models.param_counts(model)
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))

  rng = np.random.default_rng(seed)
  image = rng.standard_normal((batch, *patch, model.max_in_channels), np.float32)
  label = (rng.random((batch, *patch)) < 0.3).astype(np.int32)
  image = jax.device_put(image, data_sharding)
  label = jax.device_put(label, data_sharding)
  domains = [jax.device_put(jnp.int32(i), replicated) for i in range(len(DOMAINS))]
  lr = jnp.float32(3e-4)

  # The step as training compiles and calls it (state as flat leaves, train/step.py).
  step_fn = train.make_train_step(parts, model, config, tx_shared, tx_domain)
  t0 = time.perf_counter()
  step, _ = train.compile_train_step(step_fn, mesh, batch, state, patch, model.max_in_channels,
                                     0, 1.0, config.train, release_memory=not keep_heap)
  compile_s = time.perf_counter() - t0
  rss_compiled = host_memory.peak_rss_mb()
  rss_resident = host_memory.rss_mb()  # after compile_train_step's release_free_memory
  flops = _cost(step.fn)

  # `state`'s arrays are donated on the first step.
  train_s, train_all, faults, losses, leaves = _time_train(
      step, jax.tree.leaves(state), image, label, domains, lr, steps, warmup)
  rss_trained = host_memory.peak_rss_mb()
  params = jax.tree.unflatten(step.treedef, leaves)["params"]
  infer_s, infer_all, infer_compile_s, infer_flops = _time_forward(
      parts, params, image, domains, steps, warmup)

  voxels = batch * int(np.prod(patch))
  dev = jax.devices()[0]
  out = {
      "preset": preset,
      "platform": dev.platform,
      "device_kind": dev.device_kind,
      "jax_version": jax.__version__,
      "params": counts["total"],
      "train_step_s": train_s,
      "train_voxels_per_s": voxels / train_s,
      "infer_step_s": infer_s,
      "infer_voxels_per_s": voxels / infer_s,
      "compile_s": compile_s,
      "peak_rss_mb": None,  # filled in at the end
      # ru_maxrss is a running peak: after the compile, after the train
      # steps; `rss_after_compile_mb` is the resident set once the compiler's
      # freed heap went back to the OS (u2net_jax/host_memory.py).
      "peak_rss_after_compile_mb": rss_compiled,
      "rss_after_compile_mb": rss_resident,
      "peak_rss_after_train_mb": rss_trained,
      "train_memory": paper_analyze.memory_summary(step.fn),
      "flops_per_step": flops,
      "achieved_gflops": flops / train_s / 1e9,
      # Extra context.
      "depthwise_impl": depthwise.resolve_impl(impl),
      "dense_impl": dense.resolve_impl(dense_impl),
      "params_shared": counts["shared"],
      "params_per_domain": counts["per_domain"][DOMAINS[0]],
      "num_devices": n_dev,
      "batch": batch,
      "patch": list(patch),
      "features": list(model.features),
      "compute_dtype": p["compute_dtype"],
      "remat": remat,
      "keep_heap": keep_heap,
      "steps": steps,
      "warmup": warmup,
      "train_step_s_all": [round(t, 4) for t in train_all],
      "infer_step_s_all": [round(t, 4) for t in infer_all],
      "infer_compile_s": infer_compile_s,
      "infer_flops": infer_flops,
      "infer_achieved_gflops": infer_flops / infer_s / 1e9,
      "final_loss": float(losses[-1]),
      # Page faults: XLA's CPU runtime takes fresh memory for a step's
      # buffers; first touches of it cost time too.
      "train_minor_faults_per_step": faults,
      **_machine(),
  }
  del leaves, state  # the train state (params, the window benchmark's weights, stay)
  if window and p["window_volume"]:
    out.update(sliding_window_bench(parts, params, p["window_volume"], patch,
                                    p["batch_per_device"], dev, channels=model.max_in_channels,
                                    num_classes=model.max_num_classes))
  out["peak_device_mb"] = _device_peak_mb(dev)
  out["peak_rss_mb"] = host_memory.peak_rss_mb()
  return out


def _time_train(step, leaves, image, label, domains, lr, steps: int, warmup: int):
  """Median train step: (seconds, all times, minor page faults per step, losses, final leaves)."""
  holder = {"leaves": leaves}
  losses = []

  def train_once(i):
    batch_i = {"image": image, "label": label, "domain": domains[i % len(domains)]}
    holder["leaves"], out = step.fn(holder["leaves"], batch_i, lr, lr)
    losses.append(out["loss"])
    return out["loss"]

  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  train_s, train_all = _median_time(train_once, steps, warmup)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (steps + warmup)
  if not all(np.isfinite(float(l)) for l in losses):
    raise RuntimeError("the benchmark's train step produced a non-finite loss")
  return train_s, train_all, faults, losses, holder.pop("leaves")


def _time_forward(parts, params, image, domains, steps: int, warmup: int):
  """Median forward pass (logits): (seconds, all times, compile seconds, XLA FLOPs)."""
  @jax.jit
  def forward(params, x, d):
    return parts.merge(params)(x, d)

  t0 = time.perf_counter()
  fwd = forward.lower(params, image, domains[0]).compile()
  compile_s = time.perf_counter() - t0
  infer_s, infer_all = _median_time(lambda i: fwd(params, image, domains[i % len(domains)]),
                                    steps, warmup)
  return infer_s, infer_all, compile_s, _cost(fwd)


def _machine() -> dict:
  """Where and how the benchmark ran (CPU model and vector flags: timings differ ~2× by ISA)."""
  return {"glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), **cpu_info.machine()}


def sliding_window_bench(parts, params, size: int, patch, window_batch: int, device,
                         channels: int = 1, num_classes: int = 2) -> dict:
  """Times the production sliding window over a size³ volume on one device.

  `sliding_window.predict_labels` (what evaluation, predict and export run): bounded
  memory, Gaussian-weighted softmax, arg-max labels. One warm-up run on a
  single window compiles first.
  """
  from u2net_jax.infer import sliding_window  # pylint: disable=g-import-not-at-top

  local = jax.device_put(jax.tree.map(lambda a: a.addressable_data(0), params), device)
  d = jnp.int32(0)

  @jax.jit
  def predict(p, x, dom):
    return jax.nn.softmax(parts.merge(p)(x, dom), axis=-1)

  fn = lambda x: np.asarray(predict(local, jax.device_put(x, device), d))
  vol = np.random.default_rng(1).standard_normal((size,) * 3 + (channels,), np.float32)
  kw = dict(overlap=0.5, batch_size=window_batch)
  first = vol[:patch[0], :patch[1], :patch[2]]
  sliding_window.predict_labels(first, fn, patch, num_classes, **kw)  # compiles
  t0 = time.perf_counter()
  labels, _ = sliding_window.predict_labels(vol, fn, patch, num_classes, **kw)
  dt = time.perf_counter() - t0
  assert labels.shape == (size,) * 3
  return {"window_volume": [size] * 3,
          "window_count": sliding_window.num_windows(vol.shape[:3], patch),
          "window_batch": window_batch, "window_s": dt, "window_voxels_per_s": size ** 3 / dt,
          "window_peak_device_mb": _device_peak_mb(device)}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  ap.add_argument("--impl", default=None,
                  help=f"depthwise impl, one of {depthwise.IMPLS} (default auto; lax "
                       "with --analyze)")
  ap.add_argument("--dense_impl", default=None,
                  help=f"dense-conv impl, one of {dense.IMPLS} (default auto; lax with "
                       "--analyze)")
  ap.add_argument("--analyze", action="store_true",
                  help="compile only: XLA cost/memory analysis and roofline projection")
  ap.add_argument("--remat", action="store_true",
                  help="model.remat (with --analyze: also analyze the train step with it)")
  ap.add_argument("--keep_heap", action="store_true",
                  help="do not return the compiler's freed heap to the OS (training does)")
  ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
  ap.add_argument("--no_window", action="store_true", help="skip the sliding-window benchmark")
  ap.add_argument("--out", default="", help="also write the JSON object to this file")
  ap.add_argument("--no_hugepages", action="store_true",
                  help="keep the environment's malloc (default: restart with huge pages, as "
                       "run.py does: u2net_jax/host_memory.py)")
  ap.add_argument("--hugepages", action="store_true", help="the default; kept for old commands")
  args = ap.parse_args(argv)
  if argv is None and not args.no_hugepages:
    host_memory.restart_with_hugepages()
  if args.analyze:
    result = paper_analyze.analyze(args.preset, impl=args.impl or "lax",
                                   dense_impl=args.dense_impl or "lax", remat=args.remat)
  else:
    result = run(args.preset, impl=args.impl or "auto", steps=args.steps, warmup=args.warmup,
                 window=not args.no_window, dense_impl=args.dense_impl or "auto",
                 remat=args.remat, keep_heap=args.keep_heap)
  text = json.dumps(result)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
