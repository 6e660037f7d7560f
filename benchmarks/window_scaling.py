r"""Sliding-window inference time and peak memory against volume size.

Usage:
  python benchmarks/window_scaling.py [--sizes=64,128,192] [--preset=cpu] [--out FILE]

For each size S it runs, in a fresh child process (so that each peak RSS is
its own), the production sliding window (`sliding_window.predict_labels`: 50 %
overlap, Gaussian weights, arg-max labels, bounded host memory) of the
preset's model (`bench.py`'s presets; random weights — time does not depend
on them) over an S³ volume, after a one-window warm-up that compiles. Prints
one line per size and a JSON list (`--out` also writes it): windows, seconds,
voxels/s, seconds per window, the child's peak RSS. Linear scaling means
constant seconds per window (the window count grows with the volume).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(preset: str, size: int) -> dict:
  """One size, in this process: returns the measurement dict."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np
  from flax import nnx

  from benchmarks import presets
  from u2net_jax.model import models
  from u2net_jax.infer import sliding_window

  p = presets.PRESETS[preset]
  config = presets.make_config(preset, "auto")
  patch = (p["patch"],) * 3
  specs = presets.domain_specs(p["patch"])
  graphdef, state = nnx.split(models.build_model(specs, config.model, seed=0))
  name = specs[0].name

  @jax.jit
  def predict(state, x):
    return jax.nn.softmax(nnx.merge(graphdef, state)(x, name), axis=-1)

  fn = lambda x: np.asarray(predict(state, x))
  vol = np.random.default_rng(1).standard_normal((size,) * 3 + (1,), np.float32)
  kw = dict(overlap=0.5, batch_size=p["batch_per_device"])
  sliding_window.predict_labels(vol[:patch[0], :patch[1], :patch[2]], fn, patch, 2, **kw)  # compile
  t0 = time.perf_counter()
  labels, _ = sliding_window.predict_labels(vol, fn, patch, 2, **kw)
  dt = time.perf_counter() - t0
  assert labels.shape == (size,) * 3
  windows = sliding_window.num_windows(vol.shape[:3], patch)
  return {"preset": preset, "size": size, "voxels": size ** 3, "windows": windows,
          "seconds": dt, "voxels_per_s": size ** 3 / dt, "seconds_per_window": dt / windows,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "input_mb": vol.nbytes / 2 ** 20, "load_avg_1m": os.getloadavg()[0]}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="64,128,192")
  ap.add_argument("--preset", default="cpu")
  ap.add_argument("--out", default="")
  ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print(json.dumps(measure(args.preset, args.child)))
    return
  rows = []
  for size in (int(s) for s in args.sizes.split(",")):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--preset={args.preset}",
                           f"--child={size}"], capture_output=True, text=True, check=False)
    if proc.returncode:
      sys.exit(f"size {size}: child failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append(r)
    print(f"{size:4d}³  {r['windows']:4d} windows  {r['seconds']:7.2f} s  "
          f"{r['voxels_per_s'] / 1e3:8.0f}k vox/s  {r['seconds_per_window']:.3f} s/window  "
          f"peak RSS {r['peak_rss_mb']:7.0f} MB (input {r['input_mb']:.0f} MB)", flush=True)
  text = json.dumps(rows)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
