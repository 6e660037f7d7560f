"""`bench.py --analyze`: the paper-scale programs compiled, not run, and projected.

XLA's cost analysis (FLOPs, bytes accessed) and memory analysis (arguments +
outputs + temporaries) of the one-device train step and of one
sliding-window batch, with a roofline projection of the step time for
accelerators this machine does not have (`HARDWARE`, with each number's
source) and whether each program fits their memory (`fits`). Results and
their reading: BENCHMARKS.md, "Paper scale without the hardware".
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import cpu_info
from benchmarks.presets import PRESETS, domain_specs, make_config
from u2net_jax import host_memory
from u2net_jax.model import models
from u2net_jax.train import train


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
