r"""Train-step and inference benchmark of the universal model (one JSON object).

Usage:
  python benchmarks/bench.py --preset=cpu [--out FILE] [--impl=auto|lax|shift|...]
  python benchmarks/bench.py --preset=gpu        # or tpu: paper scale + 256³ sliding window
  python benchmarks/bench.py --preset=smoke      # tiny, seconds (used by tests)

Presets (fixed, so results compare over time and against other frameworks):
  cpu    separable model, F0 = 16, 4 levels (features 16, 32, 64, 128), five
         domains each with 1 input channel and 2 classes, patch 64³, batch 2,
         float32, Adam, cross-entropy.
  gpu    paper scale: F0 = 16, 6 levels, patch 128³, batch 2 per device,
  tpu    bfloat16 compute (float32 weights), plus sliding-window inference
         over a 256³ volume (50 % overlap, Gaussian weights).
  smoke  F0 = 4, 3 levels, 16³, batch 2, and a 32³ sliding window.

What is timed is what training runs: the model, optimizer and step come from
`u2net_jax.train` (`build_train_state`, `make_train_step`: one jitted program
for every domain, the domain a traced int32, state donated). A train step is
forward + backward + Adam on one domain, domains round-robin; inference is the
forward pass (logits) of the same batch. Each reported time is the median of
`--steps` timed steps after `--warmup` untimed ones. voxels/s = batch × patch
voxels / median time. `flops_per_step` is XLA's cost analysis of the compiled
train step; `achieved_gflops` = flops_per_step / train_step_s. `compile_s` is
tracing + lowering + compiling the train step (no persistent cache).
With `--hugepages` the script restarts itself with glibc's malloc using
transparent huge pages (see `reexec_with_hugepages`).
"""

from __future__ import annotations

from benchmarks import cpu_info  # pylint: disable=g-import-not-at-top,wrong-import-position

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import five_domain
from u2net_jax.model import dense, depthwise, models
from u2net_jax.train import train
from u2net_jax.domains import DomainSpec

DOMAINS = ("heart", "liver", "hippocampus", "prostate", "pancreas")

PRESETS = {
    "cpu": dict(features_root=16, num_levels=4, patch=64, batch_per_device=2,
                compute_dtype="float32", window_volume=0),
    "gpu": dict(features_root=16, num_levels=6, patch=128, batch_per_device=2,
                compute_dtype="bfloat16", window_volume=256),
    "tpu": dict(features_root=16, num_levels=6, patch=128, batch_per_device=2,
                compute_dtype="bfloat16", window_volume=256),
    "smoke": dict(features_root=4, num_levels=3, patch=16, batch_per_device=2,
                  compute_dtype="float32", window_volume=32),
}

REQUIRED_KEYS = ("preset", "platform", "device_kind", "jax_version", "params", "train_step_s",
                 "train_voxels_per_s", "infer_step_s", "infer_voxels_per_s", "compile_s",
                 "peak_rss_mb", "flops_per_step", "achieved_gflops")


def make_config(preset: str, impl: str, dense_impl: str = "auto"):
  """The five-domain config with the preset's model and a plain-Adam, CE step."""
  p = PRESETS[preset]
  c = five_domain.get_config("")
  c.model.mode = "separable"
  c.model.features_root = p["features_root"]
  c.model.num_levels = p["num_levels"]
  c.model.compute_dtype = p["compute_dtype"]
  c.model.depthwise_impl = impl
  c.model.dense_impl = dense_impl
  c.data.patch_size = (p["patch"],) * 3
  c.train.loss = "ce"
  # Plain Adam (no weight decay, no clipping), as in the PyTorch reference.
  c.train.weight_decay = 0.0
  c.train.weight_decay_domain = -1.0
  c.train.weight_decay_mode = "l2"
  c.train.grad_clip = 0.0
  c.train.grad_accum = 1
  return c


def domain_specs(patch: int) -> tuple[DomainSpec, ...]:
  return tuple(DomainSpec(name=n, channel_names=("image",), class_names=("background", "fg"),
                          patch_size=(patch,) * 3) for n in DOMAINS)


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
        window: bool = True, seed: int = 0, dense_impl: str = "auto") -> dict:
  """Runs the benchmark; returns the result dict (see REQUIRED_KEYS)."""
  p = PRESETS[preset]
  config = make_config(preset, impl, dense_impl)
  mesh = train.make_mesh(0)
  n_dev = mesh.devices.size
  batch = p["batch_per_device"] * n_dev
  patch = (p["patch"],) * 3
  specs = domain_specs(p["patch"])
  config.train.batch_size = batch

  model, parts, state, tx_shared, tx_domain = train.build_train_state(config, specs, mesh)
  counts = models.param_counts(model)
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))

  rng = np.random.default_rng(seed)
  image = rng.standard_normal((batch, *patch, 1), np.float32)
  label = (rng.random((batch, *patch)) < 0.3).astype(np.int32)
  image = jax.device_put(image, data_sharding)
  label = jax.device_put(label, data_sharding)
  domains = [jax.device_put(jnp.int32(i), replicated) for i in range(len(DOMAINS))]
  lr = jnp.float32(3e-4)

  step_fn = train.make_train_step(parts, model, config, tx_shared, tx_domain)
  jit_step = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))
  example = {"image": image, "label": label, "domain": domains[0]}
  t0 = time.perf_counter()
  lowered = jit_step.lower(state, example, lr, lr)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = _cost(compiled)

  holder = {"state": state}
  losses = []

  def train_once(i):
    batch_i = {"image": image, "label": label, "domain": domains[i % len(DOMAINS)]}
    holder["state"], out = compiled(holder["state"], batch_i, lr, lr)
    losses.append(out["loss"])
    return out["loss"]

  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  train_s, train_all = _median_time(train_once, steps, warmup)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (steps + warmup)
  if not all(np.isfinite(float(l)) for l in losses):
    raise RuntimeError("the benchmark's train step produced a non-finite loss")

  @jax.jit
  def forward(params, x, d):
    return parts.merge(params)(x, d)

  params = holder["state"]["params"]
  t0 = time.perf_counter()
  fwd = forward.lower(params, image, domains[0]).compile()
  infer_compile_s = time.perf_counter() - t0
  infer_flops = _cost(fwd)
  infer_s, infer_all = _median_time(lambda i: fwd(params, image, domains[i % len(DOMAINS)]),
                                    steps, warmup)

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
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "python_version": platform.python_version(),
      "cpu_model": cpu_info.cpu_model(),
      "cpu_vector_flags": cpu_info.cpu_vector_flags(),
      "cpu_count": os.cpu_count(),
      "load_avg_1m": os.getloadavg()[0],
      "date": datetime.date.today().isoformat(),
  }
  holder.clear()  # frees the train state (the closure above keeps `holder`)
  del state
  if window and p["window_volume"]:
    out.update(sliding_window_bench(parts, params, p["window_volume"], patch,
                                    p["batch_per_device"], dev))
  out["peak_device_mb"] = _device_peak_mb(dev)
  out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def sliding_window_bench(parts, params, size: int, patch, window_batch: int, device) -> dict:
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
  vol = np.random.default_rng(1).standard_normal((size,) * 3 + (1,), np.float32)
  kw = dict(overlap=0.5, batch_size=window_batch)
  sliding_window.predict_labels(vol[:patch[0], :patch[1], :patch[2]], fn, patch, 2, **kw)  # compile
  t0 = time.perf_counter()
  labels, _ = sliding_window.predict_labels(vol, fn, patch, 2, **kw)
  dt = time.perf_counter() - t0
  assert labels.shape == (size,) * 3
  return {"window_volume": [size] * 3,
          "window_count": sliding_window.num_windows(vol.shape[:3], patch),
          "window_batch": window_batch, "window_s": dt, "window_voxels_per_s": size ** 3 / dt,
          "window_peak_device_mb": _device_peak_mb(device)}


HUGEPAGES = "glibc.malloc.hugetlb=1"


def reexec_with_hugepages() -> None:
  """Restarts this process with glibc's malloc asking for transparent huge pages.

  XLA's CPU runtime takes fresh memory for a step's buffers every step (for
  the cpu preset's train step ~750k page faults, ~3 GB, each page zeroed by
  the kernel on first touch). With `glibc.malloc.hugetlb=1` (glibc ≥ 2.35,
  transparent huge pages in 'madvise' or 'always' mode) those buffers come in
  2 MiB pages: ~200× fewer faults. glibc reads tunables only at start-up,
  hence the re-exec (with `--hugepages`; by default the environment is used
  as it is, as in a training run).
  """
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if not sys.platform.startswith("linux") or "glibc.malloc.hugetlb" in tunables:
    return
  env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{HUGEPAGES}" if tunables else HUGEPAGES)
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, os.path.abspath(sys.argv[0])] + sys.argv[1:], env)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  ap.add_argument("--impl", default="auto", help=f"depthwise impl, one of {depthwise.IMPLS}")
  ap.add_argument("--dense_impl", default="auto",
                  help=f"dense-conv impl (input conv), one of {dense.IMPLS}")
  ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
  ap.add_argument("--no_window", action="store_true", help="skip the sliding-window benchmark")
  ap.add_argument("--out", default="", help="also write the JSON object to this file")
  ap.add_argument("--hugepages", action="store_true",
                  help="restart with huge-page malloc (see reexec_with_hugepages)")
  args = ap.parse_args(argv)
  if argv is None and args.hugepages:
    reexec_with_hugepages()
  result = run(args.preset, impl=args.impl, steps=args.steps, warmup=args.warmup,
               window=not args.no_window, dense_impl=args.dense_impl)
  text = json.dumps(result)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
