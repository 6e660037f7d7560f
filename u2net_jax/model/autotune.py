"""Autotuned convolution implementations: `model.depthwise_impl=auto` / `dense_impl=auto`.

Which implementation of a 3D conv is fastest depends on the backend, the
device and the shapes: on XLA:CPU grouped convolutions are ~100× slower than
shifted multiply-adds, on GPU cuDNN's grouped-conv path for 3D depthwise
convs is a known slow spot, and nothing here has been measured on a TPU.
So instead of a fixed rule, `tune` measures:

  1. the model's actual conv calls are recorded by tracing its forward pass
     on the training batch shape (`depthwise.SHAPES`, `dense.SHAPES`), no
     compute;
  2. for each kind (depthwise, dense) whose impl is 'auto', every available
     implementation is compiled and timed (forward + backward: input and
     kernel gradients; one warm-up run, then the median of `reps`) on the
     model's costliest conv shape; those within `CLOSE` of the fastest are
     then timed on one program holding every distinct recorded shape.
     Staged because compiling is what costs: on XLA:CPU each shape's 'fused'
     program compiles in ~5 s (its kernel gradient), so timing every
     implementation on every shape would add ~100 s to a first run. An
     implementation whose warm-up is > `CUTOFF`× the best so far is not
     timed further (grouped convs on CPU: seconds per call);
  3. the fastest is used, and the choice and timings are cached in a JSON
     file beside JAX's compilation cache, keyed by backend, device kind, the
     shapes, dtype and the jax version, so the next run with the same key
     reuses it without timing anything (it logs "reused").

The training loop records the result in `<workdir>/autotune.json` and
resumes with it, so a resumed run never changes implementation. All
implementations give the same values up to float rounding (tests compare
them), so the choice changes speed, not results beyond rounding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from u2net_jax import config as config_lib
from u2net_jax import io
from u2net_jax.domains import DomainSpec
from u2net_jax.model import dense, depthwise, models

CACHE_FILE = "u2net_autotune.json"
# Implementations timed per kind ('auto' resolved to one of them).
CANDIDATES = {"depthwise": ("lax", "shift", "fused"), "dense": ("lax", "shift")}
_CONV = {"depthwise": depthwise.depthwise_conv3d, "dense": dense.conv3d}
_FIELD = {"depthwise": "depthwise_impl", "dense": "dense_impl"}
CLOSE = 1.25  # stage 2 times the impls within this factor of stage 1's fastest
CUTOFF = 3.0  # a warm-up this many times slower than the best so far ends an impl's timing


def record_shapes(specs: Sequence[DomainSpec], model_cfg, batch: int,
                  patch: Sequence[int]) -> dict[str, list]:
  """{"depthwise": [...], "dense": [...]}: distinct (x shape, kernel shape, stride, dtype).

  Traced (shapes only) for one batch of `batch` patches `patch` (D, H, W) with
  a traced domain index, as the train step calls the model.
  """
  m = config_lib.model_config(model_cfg)
  # The fixed-rule impls: the recorded shapes do not depend on the impl.
  m = dataclasses.replace(m, depthwise_impl="lax", dense_impl="lax")
  model = models.abstract_model(specs, m)
  x = jax.ShapeDtypeStruct((batch, *patch, model.max_in_channels), jnp.float32)
  graphdef, state = nnx.split(model)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, jnp.int32(0))

  depthwise.SHAPES, dense.SHAPES = [], []
  try:
    jax.eval_shape(forward, state, x)
    found = {"depthwise": depthwise.SHAPES, "dense": dense.SHAPES}
  finally:
    depthwise.SHAPES, dense.SHAPES = None, None
  return {k: sorted(set(v), key=str) for k, v in found.items()}


def _program(kind: str, impl: str, shapes: list) -> tuple[Callable, list]:
  """(jitted fn, its arguments): forward + both gradients of every shape, one program."""
  conv = _CONV[kind]
  rng = np.random.default_rng(0)
  args = []
  for xs, ks, _, dtype in shapes:
    args.append((jnp.asarray(rng.standard_normal(xs), dtype),
                 jnp.asarray(rng.standard_normal(ks) * 0.1, dtype)))

  def fn(args):
    out = []
    for (x, k), (_, _, stride, _) in zip(args, shapes):
      st = tuple(stride) if isinstance(stride, (tuple, list)) else stride
      loss = lambda x, k, st=st: jnp.sum(conv(x, k, st, impl).astype(jnp.float32) ** 2)
      out.append(jax.grad(loss, argnums=(0, 1))(x, k))
    return out

  return jax.jit(fn), args


def time_impls(kind: str, shapes: list, impls: Sequence[str], *, reps: int = 3,
               log=print) -> dict[str, dict]:
  """{impl: {"seconds": median, "compile_seconds", "runs"}}: forward+backward of `shapes`."""
  out = {}
  for impl in impls:
    fn, args = _program(kind, impl, shapes)
    t0 = time.perf_counter()
    compiled = fn.lower(args).compile()
    compile_s = time.perf_counter() - t0
    t = time.perf_counter()
    jax.block_until_ready(compiled(args))  # warm-up
    times = [time.perf_counter() - t]
    best = min((o["seconds"] for o in out.values()), default=None)
    if best is None or times[0] <= CUTOFF * best:
      times = []
      for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(args))
        times.append(time.perf_counter() - t)
    out[impl] = {"seconds": statistics.median(times), "compile_seconds": compile_s,
                 "runs": len(times)}
    log(f"autotune {kind}: {impl} {1e3 * out[impl]['seconds']:.1f} ms forward+backward "
        f"({len(shapes)} shape(s); compiled in {compile_s:.1f} s)")
  return out


def _cost(kind: str, shape) -> int:
  """Multiply-adds of one conv call (the stage-1 shape is the costliest)."""
  x, k, stride, _ = shape
  st = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
  out = np.prod([-(-n // s) for n, s in zip(x[1:4], st)]) * x[0]
  return int(out * np.prod(k))  # depthwise k³·C, dense k³·C_in·C_out per output voxel


def choose(kind: str, shapes: list, *, reps: int = 3, log=print) -> dict:
  """{"choice", "stage1": timings on the costliest shape, "stage2": on all (or None)}."""
  top = max(shapes, key=lambda s: _cost(kind, s))
  stage1 = time_impls(kind, [top], CANDIDATES[kind], reps=reps, log=log)
  fastest = min(stage1[i]["seconds"] for i in stage1)
  close = [i for i in CANDIDATES[kind] if stage1[i]["seconds"] <= CLOSE * fastest]
  stage2 = None
  if len(close) > 1 and len(shapes) > 1:
    stage2 = time_impls(kind, shapes, close, reps=reps, log=log)
    choice = min(stage2, key=lambda i: stage2[i]["seconds"])
  else:
    choice = close[0] if len(close) == 1 else min(stage1, key=lambda i: stage1[i]["seconds"])
  return {"choice": choice, "stage1": stage1, "stage2": stage2,
          "stage1_shape": [list(top[0]), list(top[1])], "shapes": len(shapes)}


def cache_key(kind: str, shapes: list) -> str:
  dev = jax.devices()[0]
  return json.dumps({"kind": kind, "backend": jax.default_backend(),
                     "device_kind": dev.device_kind, "jax": jax.__version__,
                     "shapes": [[list(x), list(k), s if isinstance(s, int) else list(s), d]
                                for x, k, s, d in shapes]}, sort_keys=True)


def default_cache_dir() -> str:
  """Beside JAX's persistent compilation cache, else ~/.cache/u2net_jax."""
  jax_dir = jax.config.jax_compilation_cache_dir
  return jax_dir or os.path.join(os.path.expanduser("~"), ".cache", "u2net_jax")


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      data = json.load(f)
    return data if isinstance(data, dict) else {}
  except (OSError, ValueError):
    return {}  # a missing or damaged cache is only a cache: measure again


def tune(specs: Sequence[DomainSpec], model_cfg, batch: int, patch: Sequence[int], *,
         cache_dir: str | None = None, reps: int = 3, log=print):
  """(ModelConfig with every 'auto' impl resolved, report) for this model and batch.

  The report: {kind: {"choice", "cached", "stage1", "stage2", ...}} for each tuned kind
  (empty when no impl is 'auto').
  """
  m = config_lib.model_config(model_cfg)
  kinds = [k for k in ("depthwise", "dense") if getattr(m, _FIELD[k]) == "auto"]
  if not kinds:
    return m, {}
  shapes = record_shapes(specs, m, batch, patch)
  path = os.path.join(cache_dir or default_cache_dir(), CACHE_FILE)
  cache = _read(path)
  report, changes = {}, {}
  for kind in kinds:
    if not shapes[kind]:
      continue  # e.g. no depthwise conv outside the separable model
    key = cache_key(kind, shapes[kind])
    entry = cache.get(key)
    if entry and entry.get("choice") in CANDIDATES[kind]:
      log(f"autotune {kind}: reused {entry['choice']!r} from {path}")
      report[kind] = {**entry, "cached": True}
    else:
      entry = choose(kind, shapes[kind], reps=reps, log=log)
      log(f"autotune {kind}: chose {entry['choice']!r}")
      cache[key] = entry
      report[kind] = {**entry, "cached": False}
    changes[_FIELD[kind]] = report[kind]["choice"]
  if any(not r["cached"] for r in report.values()):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io.write_json(path, cache)
  return dataclasses.replace(m, **changes), report
