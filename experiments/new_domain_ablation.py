r"""Why does the added spleen trail an independent spleen model? Variants of the extension.

The paper table's new-domain row (`experiments/paper_table.py`) adds spleen to
the 500-step separable model of each seed (`runs/paper_table/separable/seed<k>`)
for 125 steps: only spleen's weights train (isolated updates, shared weights
frozen), with the table's optimizer (Adam 2e-2, poly decay). This script reruns
that extension with one change per variant, on the same base runs and seeds, and
puts each variant's spleen Dice (final: all validation cases; curve: every 25
steps on the first 3 cases) beside the table's own added and independent
spleen runs. Writes `<results_dir>/new_domain_ablation.{json,md}`.

  python experiments/paper_table.py                 # first: the base runs and the table row
  python experiments/new_domain_ablation.py         # every variant, seeds 0,1,2
  python experiments/new_domain_ablation.py --variants=lr0.1 --seeds=0

Variants:
  lr0.1             Adam 1e-1 instead of 2e-2: the new depthwise kernels (rms 0.27
                    at init) turn at the rate a dense kernel does at 2e-2.
  init_similar      spleen starts from the most similar trained domain's weights
                    (`extend.init=similar`) instead of a fresh initialization.
  shared_trainable  the shared weights train too (`extend.train=all`, spleen still
                    the only domain sampled; old domains' own weights untouched):
                    what freezing the shared weights costs.
  base_2000         the base is the 2,000-step separable run (`separable_equal_time`):
                    do better-trained frozen shared weights serve spleen better?
                    Seeds whose base run is not complete are listed as missing.
Each run trains in `<workdir>/<variant>/seed<k>` and is not retrained once its
summary exists; the tables list every variant's complete runs, whichever
`--variants` this invocation trains. One run is ~4 min on a quiet 2-core AVX2
CPU (compile, 125 steps, evaluations of all six domains).
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
    "lr0.1": {"train.lr": "0.1"},
    "init_similar": {"extend.init": "similar"},
    "shared_trainable": {"extend.train": "all", "train.domain_weights": "0,0,0,0,0,1"},
    # The base trained 2,000 steps (the table's separable_equal_time run).
    "base_2000": {"base": "separable_equal_time"},
}
BASE_ROW = "separable"  # the table's row whose runs are the default base
TABLE_ROWS = {"table: added (Adam 2e-2)": "separable_add_spleen",
              "table: independent spleen model":
                  "separable_add_spleen/seed{seed}/independent_spleen"}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a script: tests import this module beside paper_table.py,
  whose flags have the same names."""
  flags.DEFINE_list("variants", list(VARIANTS), "Variants to run, of " + ",".join(VARIANTS))
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (the base runs of these seeds must exist).")
  flags.DEFINE_string("table_workdir", "runs/paper_table", "The paper table's runs.")
  flags.DEFINE_string("workdir", "runs/new_domain_ablation", "Where the variants' runs go.")
  flags.DEFINE_string("results_dir", "results", "Where new_domain_ablation.{json,md} go.")

STEPS, EVAL_EVERY, CURVE_CASES, DOMAIN = 125, 25, 3, "spleen"


def base_row(name: str) -> str:
  return VARIANTS[name].get("base", BASE_ROW)


def variant_config(name: str, seed: int, base_dir: str):
  """The paper table's extension config (experiments/paper_table.py) plus the variant."""
  from experiments import add_domain, settings  # pylint: disable=g-import-not-at-top
  c = settings.setting_config(add_domain, "", "separable", STEPS,
                              [f"{k}={v}" for k, v in VARIANTS[name].items() if k != "base"])
  c.seed = seed
  c.init_from = base_dir
  c.extend.compare_independent = False
  c.train.eval_every = EVAL_EVERY
  c.eval.during_training_max_cases = CURVE_CASES
  return c


def spleen_result(run_dir: str) -> dict | None:
  """{"final", "curve": [(step, Dice)]} of a complete run's spleen, else None."""
  run = ablation_runs.read_run(run_dir)
  if run is None:
    return None
  summary, points = run
  return {"final": summary["domains"][DOMAIN]["mean_dice"], "step": summary["step"],
          "curve": [[p["step"], p["dice"][DOMAIN]] for p in points if DOMAIN in p["dice"]]}


def render(rows: dict, meta: dict) -> str:
  seeds = meta["seeds"]
  lines = ["# New domain (spleen): what limits the extension", "",
           f"Command: `{meta['command']}`  ",
           f"Machine: {meta['machine']}; date {meta['date']}; {STEPS} steps per run, "
           f"seeds {', '.join(map(str, seeds))}; base: the paper table's 500-step separable "
           "run of each seed (`base_2000`: its 2,000-step `separable_equal_time` run).", "",
           "Spleen Dice: final = all validation cases (mean ± sample sd over seeds); curve = "
           f"mean over seeds on the first {CURVE_CASES} validation cases, every {EVAL_EVERY} "
           "steps.", "",
           "| run | overrides | seeds | final Dice | curve (step: Dice) |", "|---|---|---|---|---|"]
  for name, r in rows.items():
    finals = [v["final"] for v in r["seeds"].values() if v]
    curves = [v["curve"] for v in r["seeds"].values() if v]
    curve = ""
    if curves:
      steps = [s for s, _ in curves[0]]
      curve = ", ".join(f"{s}: {statistics.mean(c[i][1] for c in curves):.3f}"
                        for i, s in enumerate(steps) if all(len(c) > i for c in curves))
    ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
    lines.append(f"| {name} | {ov} | {len(finals)}/{len(seeds)} | "
                 f"{ablation_runs.mean_sd(finals)} | {curve} |")
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
  missing = [s for s in seeds if spleen_result(
      os.path.join(FLAGS.table_workdir, "separable_add_spleen", f"seed{s}")) is None]
  if missing:
    print(f"error: the paper table's new-domain runs of seeds {missing} are not complete in "
          f"{FLAGS.table_workdir}; run `python experiments/paper_table.py` first.",
          file=sys.stderr)
    sys.exit(2)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.abspath(os.path.join(FLAGS.table_workdir, "jax_cache")))
  rows = {}
  for name, rel in TABLE_ROWS.items():
    rows[name] = {"overrides": {}, "seeds": {s: spleen_result(os.path.join(
        FLAGS.table_workdir, rel.format(seed=s) if "{" in rel else f"{rel}/seed{s}"))
        for s in seeds}}
  for name in VARIANTS:
    rows[name] = {"overrides": VARIANTS[name], "seeds": {}}
    for seed in seeds:
      run_dir = os.path.join(FLAGS.workdir, name, f"seed{seed}")
      base = os.path.join(FLAGS.table_workdir, base_row(name), f"seed{seed}")
      if name in FLAGS.variants and spleen_result(run_dir) is None:
        if not os.path.exists(os.path.join(base, "eval", "summary.json")):
          print(f"== {name} seed {seed}: its base {base} is not complete; skipped", flush=True)
          continue
        ablation_runs.train_once(name, seed, run_dir, variant_config(name, seed, base),
                                 lambda d: spleen_result(d) is not None)
      rows[name]["seeds"][seed] = spleen_result(run_dir)
  info = ablation_runs.meta("new_domain_ablation.py", seeds, STEPS)
  ablation_runs.write(FLAGS.results_dir, "new_domain_ablation", info, rows, render(rows, info))


if __name__ == "__main__":
  define_flags()
  app.run(main)
