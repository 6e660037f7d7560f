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

`--analyze` compiles and does not run (see `analyze`): XLA's cost and memory
analysis of the one-device train step and of one sliding-window batch, with a
roofline projection for accelerators this machine does not have
(`HARDWARE`). Implementations default to XLA's convolutions there (`lax`, what
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
import datetime
import json
import os
import platform
import resource
import statistics
import time
from typing import Callable, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import five_domain
from u2net_jax import host_memory
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
    "paper": dict(features_root=16, num_levels=6, patch=128, batch_per_device=2,
                  compute_dtype="bfloat16", window_volume=256),
}

# The MSD tasks' (input channels, classes): what the paper's five domains need.
MSD_SHAPES = {"heart": (1, 2), "liver": (1, 3), "hippocampus": (1, 3), "prostate": (2, 3),
              "pancreas": (1, 3)}

REQUIRED_KEYS = ("preset", "platform", "device_kind", "jax_version", "params", "train_step_s",
                 "train_voxels_per_s", "infer_step_s", "infer_voxels_per_s", "compile_s",
                 "peak_rss_mb", "flops_per_step", "achieved_gflops")


def make_config(preset: str, impl: str, dense_impl: str = "auto", remat: bool = False):
  """The five-domain config with the preset's model and a plain-Adam, CE step.

  `paper`: the `msd` preset's model and train settings (its loss, optimizer,
  dense downsampling), with the preset's sizes and bfloat16 compute.
  """
  p = PRESETS[preset]
  if preset == "paper":
    c = five_domain.get_config("msd")
    c.model.features_root = p["features_root"]
    c.model.num_levels = p["num_levels"]
    c.model.compute_dtype = p["compute_dtype"]
    c.model.depthwise_impl = impl
    c.model.dense_impl = dense_impl
    c.model.remat = remat
    c.data.patch_size = (p["patch"],) * 3
    return c
  c = five_domain.get_config("")
  c.model.mode = "separable"
  # The PyTorch reference's model (torch_reference.py): separable downsampling
  # (the default preset's is dense since 2026-12-01).
  c.model.downsample = "separable"
  c.model.features_root = p["features_root"]
  c.model.num_levels = p["num_levels"]
  c.model.compute_dtype = p["compute_dtype"]
  c.model.depthwise_impl = impl
  c.model.dense_impl = dense_impl
  c.model.remat = remat
  c.data.patch_size = (p["patch"],) * 3
  c.train.loss = "ce"
  # Plain Adam (no weight decay, no clipping), as in the PyTorch reference.
  c.train.weight_decay = 0.0
  c.train.weight_decay_domain = -1.0
  c.train.weight_decay_mode = "l2"
  c.train.grad_clip = 0.0
  c.train.grad_accum = 1
  return c


def domain_specs(patch: int, preset: str = "") -> tuple[DomainSpec, ...]:
  """Five domains of 1 channel and 2 classes; `paper`: the MSD tasks' counts (MSD_SHAPES)."""
  shapes = MSD_SHAPES if preset == "paper" else {n: (1, 2) for n in DOMAINS}
  return tuple(DomainSpec(name=n, channel_names=tuple(f"ch{i}" for i in range(shapes[n][0])),
                          class_names=("background",) + tuple(
                              f"class{k}" for k in range(1, shapes[n][1])),
                          patch_size=(patch,) * 3) for n in DOMAINS)


class CpuStep(NamedTuple):
  """The `cpu` preset's train step before compilation (for step_memory / compile_profile)."""
  model: models.U2Net
  state: dict
  step_fn: Callable
  mesh: object
  batch: int
  patch: tuple[int, int, int]
  tcfg: object  # config.train


def cpu_step(remat: bool = False) -> CpuStep:
  """The `cpu` preset's model, train state and step with `fused` / `shift` convolutions fixed."""
  config = make_config("cpu", "fused", "shift", remat=remat)
  mesh = train.make_mesh(0)
  batch, patch = 2, (64, 64, 64)
  config.train.batch_size = batch
  model, parts, state, tx_s, tx_d = train.build_train_state(
      config, domain_specs(patch[0], "cpu"), mesh)
  return CpuStep(model, state, train.make_train_step(parts, model, config, tx_s, tx_d), mesh,
                 batch, patch, config.train)


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

  holder = {"leaves": jax.tree.leaves(state)}  # `state`'s arrays are donated on the first step
  losses = []

  def train_once(i):
    batch_i = {"image": image, "label": label, "domain": domains[i % len(DOMAINS)]}
    holder["leaves"], out = step.fn(holder["leaves"], batch_i, lr, lr)
    losses.append(out["loss"])
    return out["loss"]

  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  train_s, train_all = _median_time(train_once, steps, warmup)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (steps + warmup)
  rss_trained = host_memory.peak_rss_mb()
  if not all(np.isfinite(float(l)) for l in losses):
    raise RuntimeError("the benchmark's train step produced a non-finite loss")

  @jax.jit
  def forward(params, x, d):
    return parts.merge(params)(x, d)

  params = jax.tree.unflatten(step.treedef, holder["leaves"])["params"]
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
      # ru_maxrss is a running peak: after the compile, after the train
      # steps; `rss_after_compile_mb` is the resident set once the compiler's
      # freed heap went back to the OS (u2net_jax/host_memory.py).
      "peak_rss_after_compile_mb": rss_compiled,
      "rss_after_compile_mb": rss_resident,
      "peak_rss_after_train_mb": rss_trained,
      "train_memory": memory_summary(step.fn),
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
                                    p["batch_per_device"], dev, channels=model.max_in_channels,
                                    num_classes=model.max_num_classes))
  out["peak_device_mb"] = _device_peak_mb(dev)
  out["peak_rss_mb"] = host_memory.peak_rss_mb()
  return out


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


# -- compile-only analysis (--analyze) ---------------------------------------

ANALYZE_KEYS = ("preset", "mode", "flops_per_step", "bytes_accessed_per_step",
                "peak_memory_bytes", "projected_step_s", "train", "window", "hardware", "fits",
                "caveats")
ANALYSIS_KEYS = ("flops_per_step", "bytes_accessed_per_step", "peak_memory_bytes", "memory",
                 "compile_s", "projected_step_s", "bound")

GiB = 2 ** 30
# Peak dense bfloat16 FLOP/s, HBM bandwidth (bytes/s) and HBM capacity (bytes)
# from the vendors' public datasheets (NVIDIA quotes bf16 "with sparsity":
# dense is half). V100 has no bfloat16: its fp16 tensor-core peak stands in.
HARDWARE = {
    "V100": dict(name="NVIDIA V100 SXM2 16 GB", peak_flops=125e12, hbm_bytes_per_s=900e9,
                 memory_bytes=16 * GiB,
                 source="NVIDIA Tesla V100 GPU datasheet: 125 TFLOP/s tensor (fp16; no bf16), "
                        "900 GB/s HBM2, 16 GB (the paper's GPU)"),
    "H100": dict(name="NVIDIA H100 SXM5 80 GB", peak_flops=989e12, hbm_bytes_per_s=3.35e12,
                 memory_bytes=80 * GiB,
                 source="NVIDIA H100 Tensor Core GPU datasheet (SXM): 1,979 TFLOP/s bf16 with "
                        "sparsity = 989 TFLOP/s dense, 3.35 TB/s HBM3, 80 GB"),
    "H200": dict(name="NVIDIA H200 SXM 141 GB", peak_flops=989e12, hbm_bytes_per_s=4.8e12,
                 memory_bytes=141e9,
                 source="NVIDIA H200 Tensor Core GPU datasheet (SXM): 1,979 TFLOP/s bf16 with "
                        "sparsity = 989 TFLOP/s dense, 4.8 TB/s HBM3e, 141 GB"),
    "TPU v5e": dict(name="Google Cloud TPU v5e (one chip)", peak_flops=197e12,
                    hbm_bytes_per_s=819e9, memory_bytes=16 * GiB,
                    source="Google Cloud TPU v5e documentation (system architecture): "
                           "197 TFLOP/s bf16, 819 GB/s HBM2, 16 GiB per chip"),
    "TPU v5p": dict(name="Google Cloud TPU v5p (one chip)", peak_flops=459e12,
                    hbm_bytes_per_s=2765e9, memory_bytes=95 * GiB,
                    source="Google Cloud TPU v5p documentation (system architecture): "
                           "459 TFLOP/s bf16, 2,765 GB/s HBM2e, 95 GiB per chip"),
}
# A program "fits" when XLA's peak is at most this fraction of the capacity
# (runtime, cuDNN workspaces and fragmentation take the rest).
FIT_FRACTION = 0.9

CAVEATS = (
    "Compiled by XLA:CPU on this machine, not run: the memory figures are XLA:CPU's buffer "
    "assignment and the byte counts its fusion's; the GPU/TPU compilers fuse and assign "
    "buffers differently (and keep bfloat16 where XLA:CPU may widen to float32), so both "
    "are estimates of theirs.",
    "flops_per_step is XLA:CPU's count after its passes: it rewrites the depthwise "
    "filter gradient (a batch-grouped convolution) as a dense one, C times the work, so the "
    "train step's count is several times the model's (compare the forward-only window "
    "batch's unoptimized_flops and flops_per_step, which agree). The projections here are "
    "bandwidth-bound either way.",
    "projected_step_s is a roofline lower bound, max(flops / peak bf16 FLOP/s, bytes / HBM "
    "bandwidth): depthwise 3³ convolutions and instance norms do not reach peak tensor-core "
    "throughput, so a measured step will be slower.",
    "V100 has no bfloat16; its fp16 tensor-core peak stands in for the projection.",
    f"fits: peak_memory_bytes ≤ {FIT_FRACTION} × the device's memory (JAX on GPU "
    "preallocates 75 % by default: set XLA_PYTHON_CLIENT_MEM_FRACTION=.95 near the limit).",
)


def _cost_analysis(compiled) -> dict:
  """XLA's cost analysis of a compiled program: {"flops", "bytes accessed", ...} ({} if none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except — not every backend implements it
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def memory_summary(compiled) -> dict:
  """XLA's memory analysis of a compiled program, bytes.

  peak_memory_bytes = arguments + outputs + temporaries + generated code −
  aliased (donated arguments reused as outputs). `xla_peak_memory_bytes` is
  the backend's own `peak_memory_in_bytes`, kept for reference: XLA:CPU's
  (jax 0.10) leaves the temporaries out, so it is not used.
  """
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats is None:
    return {"available": False, "peak_memory_bytes": 0}
  names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
           "generated_code_size_in_bytes", "alias_size_in_bytes", "peak_memory_in_bytes")
  comp = {n: int(getattr(stats, n, 0) or 0) for n in names}
  total = (comp["argument_size_in_bytes"] + comp["output_size_in_bytes"]
           + comp["temp_size_in_bytes"] + comp["generated_code_size_in_bytes"]
           - comp["alias_size_in_bytes"])
  return {"available": True, "peak_memory_bytes": total,
          "xla_peak_memory_bytes": comp.pop("peak_memory_in_bytes"), **comp}


def roofline(flops: float, bytes_accessed: float) -> tuple[dict, dict]:
  """({hardware: seconds}, {hardware: 'compute' | 'memory'}) for HARDWARE's devices."""
  times, bound = {}, {}
  for key, hw in HARDWARE.items():
    tc, tm = flops / hw["peak_flops"], bytes_accessed / hw["hbm_bytes_per_s"]
    times[key], bound[key] = max(tc, tm), "compute" if tc >= tm else "memory"
  return times, bound


def _analysis(lowered) -> dict:
  """Compiles `lowered`; its cost, memory and roofline (ANALYSIS_KEYS).

  `unoptimized_flops` is XLA's count on the program before any backend pass
  (`lowered.cost_analysis()`): no backend rewrite, but every cumsum counted as
  an O(n²) reduce-window (the Lovász loss's: a gross overcount there).
  """
  try:
    unoptimized = float(_cost_analysis(lowered).get("flops", 0.0))
  except Exception:  # pylint: disable=broad-except
    unoptimized = 0.0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = _cost_analysis(compiled)
  flops = float(cost.get("flops", 0.0))
  nbytes = float(cost.get("bytes accessed", 0.0))
  mem = memory_summary(compiled)
  times, bound = roofline(flops, nbytes)
  return {"flops_per_step": flops, "bytes_accessed_per_step": nbytes,
          "unoptimized_flops": unoptimized,
          "arithmetic_intensity": flops / nbytes if nbytes else None,
          "peak_memory_bytes": mem["peak_memory_bytes"], "memory": mem,
          "compile_s": compile_s, "projected_step_s": times, "bound": bound}


def _train_lowered(config, specs, mesh, batch: int, patch):
  """(model, parts, params, lowered train step) on abstract inputs (no data, no run)."""
  model, parts, state, tx_shared, tx_domain = train.build_train_state(config, specs, mesh)
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  example = {
      "image": jax.ShapeDtypeStruct((batch, *patch, model.max_in_channels), jnp.float32,
                                    sharding=data),
      "label": jax.ShapeDtypeStruct((batch, *patch), jnp.int32, sharding=data),
      "domain": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
  lr = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  step_fn = train.make_train_step(parts, model, config, tx_shared, tx_domain)
  jit_step = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))
  lowered = jit_step.lower(state, example, lr, lr)
  return model, parts, state["params"], lowered


def fits(peaks: dict) -> dict:
  """{hardware: {program: bool}}: XLA's peak ≤ FIT_FRACTION × the device's memory."""
  return {key: {name: (None if not peak else peak <= FIT_FRACTION * hw["memory_bytes"])
                for name, peak in peaks.items()}
          for key, hw in HARDWARE.items()}


def analyze(preset: str, impl: str = "lax", dense_impl: str = "lax",
            remat: bool = False) -> dict:
  """Compiles (does not run) one device's train step and sliding-window batch.

  Returns XLA's FLOPs, bytes accessed and memory of each program, roofline
  times on HARDWARE, and which devices they fit (`fits`); with `remat` also
  the train step with `model.remat` ("train_remat"). The top-level
  flops/bytes/peak/projected keys are the train step's.
  """
  from u2net_jax.infer import sliding_window  # pylint: disable=g-import-not-at-top

  p = PRESETS[preset]
  mesh = train.make_mesh(1)
  batch = p["batch_per_device"]
  patch = (p["patch"],) * 3
  specs = domain_specs(p["patch"], preset)
  config = make_config(preset, impl, dense_impl)
  config.train.batch_size = batch

  model, parts, params, lowered = _train_lowered(config, specs, mesh, batch, patch)
  train_a = _analysis(lowered)
  del lowered
  counts = models.param_counts(model)
  out_remat = None
  if remat:
    config_r = make_config(preset, impl, dense_impl, remat=True)
    config_r.train.batch_size = batch
    out_remat = _analysis(_train_lowered(config_r, specs, mesh, batch, patch)[3])

  # One sliding-window batch: the predict program (softmax of the logits).
  @jax.jit
  def predict(prm, x, dom):
    return jax.nn.softmax(parts.merge(prm)(x, dom), axis=-1)

  size = p["window_volume"] or 2 * p["patch"]
  x = jax.ShapeDtypeStruct((batch, *patch, model.max_in_channels), jnp.float32)
  window_a = _analysis(predict.lower(params, x, jax.ShapeDtypeStruct((), jnp.int32)))
  n_windows = sliding_window.num_windows((size,) * 3, patch)
  n_batches = -(-n_windows // batch)
  window_a.update(
      window_volume=[size] * 3, window_count=n_windows, window_batch=batch,
      batches_per_volume=n_batches,
      projected_volume_s={k: t * n_batches for k, t in window_a["projected_step_s"].items()})

  peaks = {"train": train_a["peak_memory_bytes"], "window": window_a["peak_memory_bytes"]}
  if out_remat:
    peaks["train_remat"] = out_remat["peak_memory_bytes"]
  m = config.model
  out = {
      "preset": preset,
      "mode": "analyze",
      "flops_per_step": train_a["flops_per_step"],
      "bytes_accessed_per_step": train_a["bytes_accessed_per_step"],
      "peak_memory_bytes": train_a["peak_memory_bytes"],
      "projected_step_s": train_a["projected_step_s"],
      "train": train_a,
      "window": window_a,
      **({"train_remat": out_remat} if out_remat else {}),
      "hardware": HARDWARE,
      "fit_fraction": FIT_FRACTION,
      "fits": fits(peaks),
      "caveats": list(CAVEATS),
      "model": {"mode": m.mode, "downsample": m.downsample, "features": list(model.features),
                "num_levels": m.num_levels, "compute_dtype": m.compute_dtype,
                "depthwise_impl": impl, "dense_impl": dense_impl, "params": counts["total"],
                "deep_supervision": m.deep_supervision},
      "train_settings": {"loss": config.train.loss, "domain_updates": config.train.domain_updates,
                         "weight_decay_mode": config.train.weight_decay_mode,
                         "grad_clip": config.train.grad_clip},
      "batch": batch,
      "patch": list(patch),
      "domains": {s.name: [s.in_channels, s.num_classes] for s in specs},
      "backend": jax.devices()[0].platform,
      "jax_version": jax.__version__,
      "python_version": platform.python_version(),
      "cpu_model": cpu_info.cpu_model(),
      "cpu_vector_flags": cpu_info.cpu_vector_flags(),
      "cpu_count": os.cpu_count(),
      "peak_rss_mb": host_memory.peak_rss_mb(),
      "date": datetime.date.today().isoformat(),
  }
  return out


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
    result = analyze(args.preset, impl=args.impl or "lax", dense_impl=args.dense_impl or "lax",
                     remat=args.remat)
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
