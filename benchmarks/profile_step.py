r"""Per-op time of the benchmark's train step (or forward) on CPU.

Usage:
  python benchmarks/profile_step.py --preset=cpu [--impl=auto] [--what=train|infer]
      [--steps=3] [--top=40] [--hlo=FILE]

Traces `--steps` steps with `jax.profiler`, then sums the host trace events
(XLA CPU runs one event per thunk: a fusion, a convolution, a dot, a while
loop, ...) by name and prints the `--top` most expensive, with each one's
share of the traced time. `--hlo` writes the optimized HLO, to see what a
fusion holds.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from benchmarks import presets  # pylint: disable=g-import-not-at-top
from u2net_jax import host_memory
from u2net_jax.train import train


def _hlo_sources(text: str) -> dict[str, str]:
  """{instruction name: 'fwd|bwd function:line'} from the HLO's stack-frame tables.

  The location is the innermost frame in this project's package.
  """
  section, files, funcs, locs, frames = None, {}, {}, {}, {}
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    m = re.match(r"^(\d+) (.*)$", line)
    if not m or section is None:
      if not line.strip():
        continue
      section = None if not m else section
      continue
    i, rest = int(m.group(1)), m.group(2)
    if section == "FileNames":
      files[i] = rest.strip('"')
    elif section == "FunctionNames":
      funcs[i] = rest.strip('"')
    elif section == "FileLocations":
      f = re.search(r"file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", rest)
      locs[i] = (files.get(int(f.group(1)), "?"), funcs.get(int(f.group(2)), "?"), int(f.group(3)))
    elif section == "StackFrames":
      f = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", rest)
      frames[i] = (int(f.group(1)), int(f.group(2)))

  def source(frame_id):
    seen = set()
    while frame_id in frames and frame_id not in seen:
      seen.add(frame_id)
      loc_id, parent = frames[frame_id]
      path, func, line = locs.get(loc_id, ("?", "?", 0))
      if "u2net_jax" in path:
        return f"{os.path.basename(path)}:{func}:{line}"
      frame_id = parent
    return "?"

  out = {}
  for m in re.finditer(r"^\s+(?:ROOT )?%([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\""
                       r"(?: stack_frame_id=(\d+))?", text, re.M):
    name, op, frame = m.group(1), m.group(2), m.group(3)
    phase = "bwd" if "transpose(" in op else "fwd"
    out[name] = f"{phase} {source(int(frame)) if frame else '?'}"
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="cpu", choices=sorted(presets.PRESETS))
  ap.add_argument("--impl", default="auto")
  ap.add_argument("--what", default="train", choices=("train", "infer"))
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--top", type=int, default=40)
  ap.add_argument("--hlo", default="")
  ap.add_argument("--no_hugepages", action="store_true",
                  help="keep the environment's malloc (default: huge pages, as run.py)")
  ap.add_argument("--hugepages", action="store_true", help="the default; kept for old commands")
  args = ap.parse_args()
  if not args.no_hugepages:
    host_memory.restart_with_hugepages()

  p = presets.PRESETS[args.preset]
  config = presets.make_config(args.preset, args.impl)
  mesh = train.make_mesh(1)
  config.train.batch_size = p["batch_per_device"]
  patch = (p["patch"],) * 3
  model, parts, state, tx_s, tx_d = train.build_train_state(
      config, presets.domain_specs(p["patch"]), mesh)
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.standard_normal((config.train.batch_size, *patch, 1), np.float32))
  label = jnp.asarray((rng.random((config.train.batch_size, *patch)) < 0.3).astype(np.int32))
  lr = jnp.float32(3e-4)
  if args.what == "train":
    fn = jax.jit(train.make_train_step(parts, model, config, tx_s, tx_d), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = fn.lower(state, {"image": image, "label": label, "domain": jnp.int32(0)},
                        lr, lr).compile()
    holder = [state]

    def once(i):
      holder[0], out = compiled(holder[0], {"image": image, "label": label,
                                            "domain": jnp.int32(i % 5)}, lr, lr)
      return out["loss"]
  else:
    fwd = jax.jit(lambda prm, x, d: parts.merge(prm)(x, d))
    t0 = time.perf_counter()
    compiled = fwd.lower(state["params"], image, jnp.int32(0)).compile()
    once = lambda i: compiled(state["params"], image, jnp.int32(i % 5))
  print(f"compile {time.perf_counter() - t0:.1f} s", flush=True)
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(compiled.as_text())
  jax.block_until_ready(once(0))
  logdir = tempfile.mkdtemp(prefix="u2net_prof_")
  t0 = time.perf_counter()
  with jax.profiler.trace(logdir):
    for i in range(args.steps):
      jax.block_until_ready(once(i + 1))
  wall = (time.perf_counter() - t0) / args.steps
  path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  totals = collections.Counter()
  counts = collections.Counter()
  for plane in data.planes:
    if "host" not in plane.name.lower() and "cpu" not in plane.name.lower():
      continue
    for line in plane.lines:
      for ev in line.events:
        totals[ev.name] += ev.duration_ns / 1e9 / args.steps
        counts[ev.name] += 1
  groups = collections.Counter()
  for name, t in totals.items():
    if not name.startswith(("$", "ThunkExecutor", "PjitFunction")):
      groups[re.sub(r"\.\d+$", "", name)] += t
  print("by kind (s per step): " + ", ".join(f"{k} {v:.3f}" for k, v in groups.most_common(12)))
  if args.hlo:
    by_src = collections.Counter()
    where = _hlo_sources(compiled.as_text())
    for name, t in totals.items():
      if name in where:
        by_src[where[name]] += t
    print("by source (s per step; bwd = in the backward pass):")
    for src, t in by_src.most_common(args.top):
      print(f"{t:8.4f}  {100 * t / wall:5.1f}%  {src}")
  print(f"wall per step {wall:.3f} s; top events (s per step, may nest):")
  where = _hlo_sources(compiled.as_text()) if args.hlo else {}
  for name, t in totals.most_common(args.top):
    print(f"{t:8.4f}  {100 * t / wall:5.1f}%  x{counts[name] // args.steps:<4d} {name[:60]}"
          f"  {where.get(name, '')}")


if __name__ == "__main__":
  main()
