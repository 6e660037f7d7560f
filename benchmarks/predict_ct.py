r"""Time and peak memory of `run.py --mode=predict` on one 512×512×300 CT volume.

Usage:
  python benchmarks/predict_ct.py [--workdir runs/bench_predict_liver] [--out FILE]

1. If the workdir has no checkpoint, trains the default preset's liver model
   for 2 steps (`--config=experiments/five_domain.py --config.data.tasks=liver`):
   the architecture and patch of a real run; the weights do not change the
   cost of prediction.
2. Writes a synthetic abdominal CT: int16 Hounsfield units, 512×512×300
   voxels of 0.78×0.78×1.5 mm (x, y, z), an oblique affine, air outside a body
   ellipse, a liver-like blob.
3. Runs `python run.py --mode=predict --postprocess=on --save_probabilities`
   on it in a child process and reports its wall time and peak resident
   memory (ru_maxrss of the child), plus the model grid and window count.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_ct(path: str, shape=(512, 512, 300), zooms=(0.78, 0.78, 1.5)) -> None:
  """Synthetic (i, j, k) int16 CT in HU with an oblique affine."""
  rng = np.random.default_rng(0)
  i, j = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
  body = (i / 0.85) ** 2 + (j / 0.65) ** 2 < 1
  liver = ((i - 0.3) / 0.35) ** 2 + ((j + 0.1) / 0.3) ** 2 < 1
  data = np.full(shape, -1000, np.int16)
  for k in range(shape[2]):
    sl = np.where(body, 40, -1000).astype(np.int16)
    if shape[2] // 4 < k < 3 * shape[2] // 4:
      sl[liver] = 100
    sl += rng.normal(0, 15, shape[:2]).astype(np.int16) * body
    data[:, :, k] = sl
  c, s = np.cos(np.deg2rad(8)), np.sin(np.deg2rad(8))
  affine = np.eye(4)
  affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(
      [-zooms[0], -zooms[1], zooms[2]])
  img = nib.Nifti1Image(data, affine)
  img.set_qform(affine, 1)
  img.set_sform(affine, 1)
  nib.save(img, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/bench_predict_liver")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
    subprocess.run([sys.executable, "run.py", "--config=experiments/five_domain.py",
                    "--config.data.tasks=liver", "--config.train.steps=2",
                    f"--workdir={args.workdir}"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
  with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "ct.nii.gz")
    make_ct(src)
    out = os.path.join(tmp, "out")
    log_path = os.path.join(tmp, "log.txt")
    t0 = time.time()
    with open(log_path, "w") as log:
      child = subprocess.Popen(
          [sys.executable, "run.py", "--mode=predict", f"--workdir={args.workdir}",
           "--domain=liver", f"--input={src}", f"--output={out}", "--postprocess=on",
           "--save_probabilities", "--noprogress"],
          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
      _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory
      child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    with open(log_path) as f:
      lines = f.read().strip().splitlines()
    if child.returncode:
      sys.exit("\n".join(lines[-30:]))
    peak_mib = usage.ru_maxrss / 1024
    label = nib.load(os.path.join(out, "ct.nii.gz"))
    sys.path.insert(0, ROOT)
    from u2net_jax.data import plans  # pylint: disable=g-import-not-at-top
    from u2net_jax.infer import sliding_window  # pylint: disable=g-import-not-at-top
    from u2net_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    plan = plans.read(args.workdir)["liver"]
    grid = preprocess.target_shape((300, 512, 512), (1.5, 0.78, 0.78), plan.target_spacing)
    result = {
        "input_shape_ijk": [512, 512, 300], "input_spacing_xyz_mm": [0.78, 0.78, 1.5],
        "output_shape": list(label.shape), "model_grid_dhw": list(grid),
        "patch": list(plan.patch_size),
        "windows": sliding_window.num_windows(grid, plan.patch_size),
        "wall_s": round(wall, 1), "peak_rss_mib": round(peak_mib),
        "cpu_count": os.cpu_count(),
        "log": lines[-1],
    }
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
