r"""Why does the separable model trail the dense settings at equal steps? Variants of it.

The paper table (`experiments/paper_table.py`) trains every setting for 500
steps with the same optimizer (official updates, Adam 2e-2, poly decay). This
script trains the separable model again with one change per variant, same
seeds, steps, evaluations along the way and final evaluation as the table, and
puts each variant's mean Dice (final, all validation cases; curve on the
first 3 cases every 100 steps) beside the table's separable and dense rows.
Writes `<results_dir>/gap_ablation.{json,md}`.

  python experiments/paper_table.py            # first: the table's runs
  python experiments/gap_ablation.py           # every variant, seeds 0,1,2

Variants:
  wide_f16          features_root 16 instead of 8: ~4× the weights (capacity).
  dense_downsample  the official code's dense stride-2 downsampling convs:
                    more shared weights where the resolution changes.
Each run trains in `<workdir>/<variant>/seed<k>` and is not retrained once its
summary exists; the table lists every variant's complete runs, whichever
`--variants` this invocation trains.
"""

from __future__ import annotations

import os
import statistics
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from experiments import ablation_runs  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {
    "wide_f16": {"model.features_root": "16"},
    "dense_downsample": {"model.downsample": "dense"},
}
TABLE_ROWS = ("separable", "independent", "shared", "series_adapter", "parallel_adapter")
STEPS, EVAL_EVERY, CURVE_CASES = 500, 100, 3

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a script (tests import this module beside paper_table.py)."""
  flags.DEFINE_list("variants", list(VARIANTS), "Variants to run, of " + ",".join(VARIANTS))
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
  flags.DEFINE_string("table_workdir", "runs/paper_table", "The paper table's runs.")
  flags.DEFINE_string("workdir", "runs/gap_ablation", "Where the variants' runs go.")
  flags.DEFINE_string("results_dir", "results", "Where gap_ablation.{json,md} go.")


def variant_config(name: str, seed: int):
  """The table's separable config (paper_table.py's settings) plus the variant."""
  from experiments import five_domain, settings  # pylint: disable=g-import-not-at-top
  c = settings.setting_config(five_domain, "", "separable", STEPS,
                              [f"{k}={v}" for k, v in VARIANTS[name].items()])
  c.seed = seed
  c.train.eval_every = EVAL_EVERY
  c.eval.during_training_max_cases = CURVE_CASES
  return c


def run_result(run_dir: str) -> dict | None:
  """{"final", "dice", "params", "curve": [(step, mean Dice)]} of a complete run, else None."""
  run = ablation_runs.read_run(run_dir)
  if run is None or int(run[0].get("step", 0)) < STEPS:
    return None
  summary, points = run
  dice = {n: d["mean_dice"] for n, d in summary["domains"].items()}
  return {"final": sum(dice.values()) / len(dice), "dice": dice,
          "params": summary.get("params", {}).get("total"),
          "curve": [[p["step"], p["mean_dice"]] for p in points]}


def render(rows: dict, meta: dict) -> str:
  seeds = meta["seeds"]
  lines = ["# Separable vs dense at equal steps: what closes the gap", "",
           f"Command: `{meta['command']}`  ",
           f"Machine: {meta['machine']}; date {meta['date']}; {STEPS} steps per run (the "
           f"table's budget), seeds {', '.join(map(str, seeds))}.", "",
           "Mean Dice over the five domains: final = all validation cases (mean ± sample sd "
           f"over the complete seeds); curve = mean over seeds on the first {CURVE_CASES} "
           f"validation cases, every {EVAL_EVERY} steps.", "",
           "| run | overrides | params | seeds | final mean Dice | curve (step: Dice) |",
           "|---|---|---|---|---|---|"]
  for name, r in rows.items():
    done = [v for v in r["seeds"].values() if v]
    finals = [v["final"] for v in done]
    curve = ""
    if done:
      steps = [s for s, _ in done[0]["curve"]]
      curve = ", ".join(f"{s}: {statistics.mean(v['curve'][i][1] for v in done):.3f}"
                        for i, s in enumerate(steps) if all(len(v["curve"]) > i for v in done))
    params = f"{done[0]['params']:,}" if done and done[0]["params"] else "-"
    ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
    lines.append(f"| {name} | {ov} | {params} | {len(finals)}/{len(seeds)} | "
                 f"{ablation_runs.mean_sd(finals, ' (one seed)')} "
                 f"| {curve} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  from u2net_jax import logging_utils  # pylint: disable=g-import-not-at-top
  logging_utils.quiet_library_logs()
  bad = [v for v in FLAGS.variants if v not in VARIANTS]
  if bad:
    print(f"error: unknown variants {bad}; choose from {list(VARIANTS)}", file=sys.stderr)
    sys.exit(2)
  seeds = [int(s) for s in FLAGS.seeds]
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.abspath(os.path.join(FLAGS.table_workdir, "jax_cache")))
  rows = {f"table: {row}": {"overrides": {}, "seeds": {s: run_result(os.path.join(
      FLAGS.table_workdir, row, f"seed{s}")) for s in seeds}} for row in TABLE_ROWS}
  for name in VARIANTS:  # every variant's complete runs; train those asked for
    rows[name] = {"overrides": VARIANTS[name], "seeds": {}}
    for seed in seeds:
      run_dir = os.path.join(FLAGS.workdir, name, f"seed{seed}")
      if name in FLAGS.variants:
        ablation_runs.train_once(name, seed, run_dir, variant_config(name, seed),
                                 lambda d: run_result(d) is not None)
      rows[name]["seeds"][seed] = run_result(run_dir)
  info = ablation_runs.meta("gap_ablation.py", seeds, STEPS)
  ablation_runs.write(FLAGS.results_dir, "gap_ablation", info, rows, render(rows, info))


if __name__ == "__main__":
  define_flags()
  app.run(main)
