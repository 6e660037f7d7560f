r"""Which update rule lets the universal model learn at the dense baselines' pace?

Short runs of the default preset (`five_domain.py`) from the previous default's
optimizer (BASELINE: isolated updates, plain Adam 1e-2), one per variant of
`train.update_scaling`, `train.domain_updates`, `train.lr` and
`model.downsample`, evaluated on the first `--max_cases` validation cases per
domain; writes `<results_dir>/optimizer_ablation.{json,md}`.

  python experiments/optimizer_ablation.py                       # all variants
  python experiments/optimizer_ablation.py --variants=as_shipped,param_rms_lr0.03

Each variant trains in `<workdir>/<variant>/seed<k>` and is not retrained once
its summary exists (rerun to fill in). One variant is ~3.5 min on a 2-core
AVX2 CPU (compile ~100 s, 300 steps at ~0.3 s, evaluation).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: train/model overrides.
VARIANTS = {
    "as_shipped": {},
    "official_updates": {"train.domain_updates": "official"},
    "dense_downsample": {"model.downsample": "dense"},
    "param_rms_lr0.03": {"train.update_scaling": "param_rms", "train.lr": 0.03},
    "param_rms_lr0.1": {"train.update_scaling": "param_rms", "train.lr": 0.1},
    "trust_ratio_lr0.03": {"train.update_scaling": "trust_ratio", "train.lr": 0.03},
    "trust_ratio_lr0.1": {"train.update_scaling": "trust_ratio", "train.lr": 0.1},
    "param_rms_lr0.3": {"train.update_scaling": "param_rms", "train.lr": 0.3},
    "param_rms_lr1.0": {"train.update_scaling": "param_rms", "train.lr": 1.0},
    "param_rms_lr0.3_domain_lr1.5": {"train.update_scaling": "param_rms", "train.lr": 0.3,
                                     "train.lr_domain": 1.5},
    "param_rms_lr0.1_official": {"train.update_scaling": "param_rms", "train.lr": 0.1,
                                 "train.domain_updates": "official"},
    "param_rms_lr0.3_official": {"train.update_scaling": "param_rms", "train.lr": 0.3,
                                 "train.domain_updates": "official"},
}

flags.DEFINE_list("variants", list(VARIANTS), "Variants to run, of " + ",".join(VARIANTS))
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_integer("steps", 300, "Train steps per run.")
flags.DEFINE_integer("max_cases", 4, "Validation cases per domain (0 = all).")
flags.DEFINE_string("workdir", "runs/optimizer_ablation", "Where the runs go.")
flags.DEFINE_string("results_dir", "results", "Where optimizer_ablation.{json,md} go.")
FLAGS = flags.FLAGS


# Every variant starts from the previous default (isolated updates, plain Adam
# 1e-2), so the table stays the same whatever five_domain.py's defaults become.
BASELINE = {"train.domain_updates": "isolated", "train.update_scaling": "none",
            "train.lr": 0.01, "train.lr_domain": 0.0,
            "eval.postprocess": "none",  # the network's output, as measured
            "eval.overlap": 0.5,
            "model.downsample": "separable"}


def variant_config(name: str, seed: int, steps: int, max_cases: int):
  from experiments import five_domain  # pylint: disable=g-import-not-at-top
  c = five_domain.get_config("")
  for key, value in BASELINE.items():
    section, leaf = key.split(".")
    c[section][leaf] = value
  c.seed = seed
  c.train.steps = steps
  c.train.checkpoint_every = 0
  c.eval.max_cases = max_cases
  for key, value in VARIANTS[name].items():
    section, leaf = key.split(".")
    c[section][leaf] = value
  return c


def main(argv):
  del argv
  from u2net_jax import logging_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import train  # pylint: disable=g-import-not-at-top
  logging_utils.quiet_library_logs()
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.abspath(os.path.join(FLAGS.workdir, "jax_cache")))
  bad = [v for v in FLAGS.variants if v not in VARIANTS]
  if bad:
    print(f"error: unknown variants {bad}; choose from {list(VARIANTS)}", file=sys.stderr)
    sys.exit(2)
  rows = []
  for name in FLAGS.variants:
    for seed in map(int, FLAGS.seeds):
      run_dir = os.path.join(FLAGS.workdir, name, f"seed{seed}")
      path = os.path.join(run_dir, "eval", "summary.json")
      if not os.path.exists(path):
        print(f"== {name} seed {seed}", flush=True)
        t0 = time.time()
        train.train_and_evaluate(variant_config(name, seed, FLAGS.steps, FLAGS.max_cases),
                                 run_dir)
        print(f"== {name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
      with open(path) as f:
        s = json.load(f)
      dice = {n: d["mean_dice"] for n, d in s["domains"].items()}
      rows.append({"variant": name, "seed": seed, "overrides": VARIANTS[name], "dice": dice,
                   "mean_dice": sum(dice.values()) / len(dice), "steps": s["step"]})
  meta = {"command": "python experiments/optimizer_ablation.py" + "".join(
      f" {a}" for a in sys.argv[1:]), "machine": logging_utils.machine_description(),
      "date": time.strftime("%Y-%m-%d"), "steps": FLAGS.steps, "max_cases": FLAGS.max_cases}
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  with open(os.path.join(FLAGS.results_dir, "optimizer_ablation.json"), "w") as f:
    json.dump({**meta, "rows": rows}, f, indent=2)
  domains = list(rows[0]["dice"]) if rows else []
  lines = ["# Update-rule ablation (default preset)", "",
           f"Command: `{meta['command']}`  ",
           f"Machine: {meta['machine']}; date {meta['date']}; {meta['steps']} steps, first "
           f"{meta['max_cases'] or 'all'} validation cases per domain.", "",
           "| variant | seed | overrides | " + " | ".join(domains) + " | mean |",
           "|---|---|---|" + "---|" * (len(domains) + 1)]
  for r in rows:
    ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
    lines.append(f"| {r['variant']} | {r['seed']} | {ov} | "
                 + " | ".join(f"{r['dice'][d]:.3f}" for d in domains)
                 + f" | **{r['mean_dice']:.3f}** |")
  with open(os.path.join(FLAGS.results_dir, "optimizer_ablation.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
