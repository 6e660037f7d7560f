"""What the ablation scripts share: train a variant's run once, write the results.

`gap_ablation.py` and `new_domain_ablation.py` each train one run per
(variant, seed) and write `<results_dir>/<stem>.{json,md}`; this module holds
those two steps so the scripts only say what their variants and tables are.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def train_once(name: str, seed: int, run_dir: str, config, is_complete) -> None:
  """Trains `config` in `run_dir` unless `is_complete(run_dir)`; exits 143 if preempted."""
  from u2net_jax.train import train  # pylint: disable=g-import-not-at-top
  if is_complete(run_dir):
    return
  print(f"== {name} seed {seed}", flush=True)
  t0 = time.time()
  result = train.train_and_evaluate(config, run_dir)
  if result.get("preempted"):
    print(f"== {name} seed {seed}: preempted; rerun to resume", flush=True)
    sys.exit(143)
  print(f"== {name} seed {seed}: {time.time() - t0:.0f} s", flush=True)


def read_run(run_dir: str):
  """(eval/summary.json, its evaluation points [{"step", "mean_dice", "dice"}]) or None."""
  from experiments import paper_curves  # pylint: disable=g-import-not-at-top
  path = os.path.join(run_dir, "eval", "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  return summary, paper_curves.run_points(
      paper_curves.read_metrics(os.path.join(run_dir, "metrics.jsonl")), summary)


def meta(script: str, seeds, steps: int) -> dict:
  """Command line, machine (CPU model and vector flags), date, seeds, steps."""
  from u2net_jax import logging_utils  # pylint: disable=g-import-not-at-top
  return {"command": f"python experiments/{script}" + "".join(f" {a}" for a in sys.argv[1:]),
          "machine": logging_utils.machine_description(), "date": time.strftime("%Y-%m-%d"),
          "seeds": list(seeds), "steps": steps}


def write(results_dir: str, stem: str, info: dict, rows: dict, markdown: str) -> None:
  """<results_dir>/<stem>.json (meta + rows) and <stem>.md; prints the markdown."""
  os.makedirs(results_dir, exist_ok=True)
  with open(os.path.join(results_dir, f"{stem}.json"), "w") as f:
    json.dump({**info, "rows": rows}, f, indent=2)
  with open(os.path.join(results_dir, f"{stem}.md"), "w") as f:
    f.write(markdown)
  print(markdown)


def mean_sd(values, one: str = "") -> str:
  """'m ± sd' over seeds (sample sd), one value alone (+ `one`), '-' for none."""
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.3f}{one}"
  return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
