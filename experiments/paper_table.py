r"""Reproduce the 3D U²-Net paper's comparison (Table 2) over seeds, with curves.

Trains the five settings — independent models, one shared model, series and
parallel residual adapters, and the separable universal model — on the same
domains with the same step budget, the separable model again for more steps
(`separable_equal_time`, about the CPU time of one dense setting), and adds a
new domain (spleen) to the separable model of the same seed
(`experiments/add_domain.py`), next to an independent spleen model with the
same steps. Every run is repeated for each of `--seeds` (`config.seed`), and
evaluates along the way (`--eval_every`). Writes to `--results_dir`:

  paper_table.{md,json}  per row: mean ± sd across the complete seeds of each
                         domain's Dice and of the mean over domains, parameters
                         and their % of the five independent models, steps,
                         train time per run; the new-domain row (spleen added vs
                         an independent spleen model); which runs are incomplete.
  paper_curves.{json,png} validation Dice vs step per run, and per row the
                         mean ± sd across the complete seeds at each step.

sd is the sample standard deviation (ddof=1); one complete seed shows its value.

  python experiments/paper_table.py                  # synthetic, 2-core CPU, seeds 0,1,2
  python experiments/paper_table.py --max_runs=4     # train 4 runs, write a partial table
  python experiments/paper_table.py --table_only     # no training: table of what is done
  python experiments/paper_table.py --preset=smoke --steps=2 --seeds=0,1   # tiny, for tests
  python experiments/paper_table.py --preset=msd --config_overrides=data.manual_dir=/MSD
  python experiments/paper_table.py --config_overrides=train.domain_updates=official

Layout: `<workdir>/<row>/seed<k>/` for the rows `independent`, `shared`,
`series_adapter`, `parallel_adapter`, `separable`, `separable_equal_time` and
`separable_add_spleen` (initialized from `<workdir>/separable/seed<k>`), whose
independent spleen model trains in `separable_add_spleen/seed<k>/independent_spleen/`
(a run of its own rather than inside the add run via
`extend.compare_independent`, so that it resumes and stops on SIGTERM like the
others; the new-domain row pairs the seeds where both are complete). The new
domain trains max(steps // 4, 2) steps. That is 8 runs per seed. With
`--preset=msd` the `independent` row is the authors' baseline: one run per
task in `independent/seed<k>/<task>/` with the task's official patch (not
resized), batch and anisotropic pooling (`five_domain.official_independent`);
the row is complete when all five are, with their parameters and train times
summed and their curves joined at the steps all of them evaluated.
Compiled programs are cached in `<workdir>/jax_cache` (unless
JAX_COMPILATION_CACHE_DIR is set), so later seeds skip most compilation.

Resume: a run whose `eval/summary.json` has `step >= steps` is complete and is
not retrained; an interrupted one resumes from its checkpoints. Runs train
seed-major (every row of seed 0, then seed 1, ...; within a seed: separable,
separable_equal_time, the new domain and its independent model, then
independent, shared, series_adapter, parallel_adapter), so a partial table has
whole seeds. `--max_runs=N` trains at most N incomplete runs, then writes the
table and curves of what is complete and exits 0: rerun the same command to
fill the table in over several invocations. A SIGTERM saves the current run's
checkpoint and ends the invocation with exit status 143, without a table.

Budget (default preset, 2-core CPU): the four dense settings dominate (500
steps each); the evaluations along the way use the first `--curve_cases` (3)
validation cases per domain, the final one all of them. Measured times are in
README ("The paper's comparison").
The table's train time is train.py's `train_seconds` (the steps and
checkpoint saves; not the evaluations along the way).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, NamedTuple

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from u2net_jax import io  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import paper_curves  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.settings import setting_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.paper_table_report import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    ROWS, SETTINGS, VECTOR_FLAGS, build_table, render_markdown)


flags.DEFINE_string("preset", "", "five_domain.py preset: '' (synthetic), 'smoke' or 'msd'.")
flags.DEFINE_string("workdir", None, "Where the runs go (default runs/paper_table[_<preset>]).")
flags.DEFINE_string("results_dir", "results",
                    "Where paper_table.{md,json} and paper_curves.{json,png} are written.")
# The default preset's table budget: 500 steps per setting keeps all five
# settings, the new domain and the evaluations of one seed within ~1 hour on
# a 2-core CPU (the dense 3³ settings take ~0.8 s per step there; README).
# The presets' own budgets (five_domain.py) are used for 'smoke' and 'msd'.
TABLE_STEPS = {"": 500}
# An extra row: the separable model given the CPU time of one dense setting.
# On this CPU a separable step is ~4× cheaper than a dense one (0.15 vs
# 0.65–0.9 s), so at equal steps the comparison is at unequal compute.
EQUAL_TIME_STEPS = {"": 2000}

flags.DEFINE_integer("steps", 0, "Train steps per setting (0 = 500 for the default preset, "
                     "the preset's own for the others).")
flags.DEFINE_list("settings", list(SETTINGS), "Settings to train, of " + ",".join(SETTINGS))
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed); every run trains once per seed.")
flags.DEFINE_bool("new_domain", True, "Also add spleen to the separable model (needs the "
                  "separable setting).")
flags.DEFINE_integer("equal_time_steps", -1,
                     "Also train the separable model for this many steps (a row "
                     "'separable_equal_time'); -1 = 2000 for the default preset (about "
                     "the CPU time of one dense setting's budget), none for the others; "
                     "0 = no such row.")
flags.DEFINE_integer("eval_every", 0, "Evaluate every this many steps for the curves "
                     "(0 = each run's steps // 5: 4 points along the way + the final one).")
flags.DEFINE_integer("curve_cases", 3, "Validation cases per domain for the evaluations "
                     "along the way (0 = all); the final evaluation always uses all.")
flags.DEFINE_integer("max_runs", 0, "Train at most this many incomplete runs, then write the "
                     "table of what is complete (0 = no limit).")
flags.DEFINE_bool("table_only", False, "Train nothing; write the table and curves of the "
                  "complete runs.")
flags.DEFINE_list("config_overrides", [], "key.path=value items applied to every config "
                  "(extend.* only to the new domain's); an unknown key is an error.")
FLAGS = flags.FLAGS


class Run(NamedTuple):
  """One training run of the table: a row's model for one seed."""
  row: str
  seed: int
  rel: str        # run_dir relative to the workdir (messages, the incomplete list)
  run_dir: str
  config: Any
  steps: int
  kind: str = "setting"   # setting | added (the new domain) | independent (its model)
  needs: Any = None       # a Run that must be complete first (the new domain's base)
  part: str = ""          # one task of a row trained as per-task runs (msd independent)


def list_runs(workdir, seeds, settings, *, preset, budget, extra, new_domain, overrides,
              eval_every, independent_config, curve_cases=0) -> list[Run]:
  """Every run of the table, in training order (seed-major; see the docstring)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from experiments import add_domain, five_domain  # pylint: disable=g-import-not-at-top
  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top
  runs = []
  for seed in seeds:
    def add(row, cfg, kind="setting", rel=None, needs=None, seed=seed, part=""):
      cfg.seed = seed
      steps = int(cfg.train.steps)
      cfg.train.eval_every = eval_every or max(steps // 5, 1)
      cfg.eval.during_training_max_cases = curve_cases
      rel = rel or os.path.join(row, f"seed{seed}", part)
      runs.append(Run(row, seed, rel.rstrip(os.sep), os.path.join(workdir, rel).rstrip(os.sep),
                      cfg, steps, kind, needs, part))
      return runs[-1]
    if "separable" in settings:
      base = add("separable", setting_config(five_domain, preset, "separable", budget,
                                             overrides))
      if extra:
        add("separable_equal_time",
            setting_config(five_domain, preset, "separable", extra, overrides))
      if new_domain:
        cfg = setting_config(add_domain, preset, "separable", 0, overrides)
        cfg.init_from = base.run_dir
        if budget:  # the share of the budget of add_domain.py's default, ≥ 2 for a curve
          cfg.train.steps = max(budget // 4, 2)
        new = "_".join(config_utils.split_names(cfg.extend.new_domains))
        # The independent model trains as its own run (resumable, SIGTERM-safe),
        # in the folder where extend.compare_independent would put it.
        compare = bool(cfg.extend.compare_independent)
        cfg.extend.compare_independent = False
        added = add(f"separable_add_{new}", cfg, "added", needs=base)
        if compare:
          # (a ConfigDict again: `add` sets the seed and evaluation on it)
          sub = ml_collections.ConfigDict(independent_config(cfg).to_dict())
          add(f"independent_{new}", sub, "independent",
              rel=os.path.join(added.rel, f"independent_{new}"))
    for mode in SETTINGS:
      if mode == "independent" and mode in settings and preset == "msd":
        # As the authors trained it: one run per task with its own patch,
        # batch and anisotropic pooling (five_domain.official_independent).
        cfg = setting_config(five_domain, preset, mode, budget, overrides)
        for task in config_utils.split_names(cfg.data.tasks):
          add(mode, five_domain.official_independent(cfg, task), part=task)
      elif mode in settings and mode != "separable":
        add(mode, setting_config(five_domain, preset, mode, budget, overrides))
  return runs


def _summary(workdir: str) -> dict | None:
  path = os.path.join(workdir, "eval", "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_summary(run: Run) -> dict | None:
  """The run's summary.json if the run is complete, else None."""
  s = _summary(run.run_dir)
  # Complete: the step budget, or the loss-plateau rule's lr floor before it.
  if s is None or (int(s.get("step", -1)) < run.steps and not s.get("stopped_by_lr_floor")):
    return None
  if run.kind == "added" and "extension" not in s:
    return None
  return s


def _stop_if_preempted(result: dict, run_dir: str) -> None:
  """A SIGTERM saves the run's checkpoint and ends the whole table run."""
  if result.get("preempted"):
    print(f"== SIGTERM: {run_dir} saved at step {result['step']}; rerun the same command "
          "to resume.", flush=True)
    sys.exit(143)


def train_missing(runs: list[Run], max_runs: int, train_fn) -> int:
  """Trains the incomplete runs in order (at most `max_runs` if > 0); returns how many."""
  trained = 0
  for run in runs:
    if run_summary(run) is not None:
      continue
    if run.needs is not None and run_summary(run.needs) is None:
      print(f"== {run.rel}: skipped, {run.needs.rel} is not complete", flush=True)
      continue
    if max_runs and trained >= max_runs:
      print(f"== --max_runs={max_runs} reached; rerun to train the others", flush=True)
      break
    print(f"== {run.rel}: training {run.steps} steps (seed {run.seed}) in {run.run_dir}",
          flush=True)
    t0 = time.time()
    trained += 1
    _stop_if_preempted(train_fn(run.config, run.run_dir), run.run_dir)
    print(f"== {run.rel}: {time.time() - t0:.0f} s", flush=True)
  return trained


def collect(runs: list[Run]) -> tuple[dict, list[str]]:
  """({row: {kind, steps, summaries: {seed: summary|None}, points: {seed: [...]}}},
  the incomplete runs' relative dirs), read from the workdir."""
  by_row, incomplete, parts = {}, [], {}
  for run in runs:
    s = run_summary(run)
    if s is None:
      incomplete.append(run.rel)
    e = by_row.setdefault(run.row, {"kind": run.kind, "steps": run.steps, "summaries": {},
                                    "points": {}})
    records = paper_curves.read_metrics(os.path.join(run.run_dir, "metrics.jsonl"))
    points = paper_curves.run_points(records, s)
    if run.part:  # one task of a per-task row: merged once every task is read
      parts.setdefault((run.row, run.seed), []).append((s, points))
      continue
    e["summaries"][run.seed] = s
    e["points"][run.seed] = points
  for (row, seed), got in parts.items():
    by_row[row]["summaries"][seed] = merge_task_summaries([s for s, _ in got])
    by_row[row]["points"][seed] = merge_task_points([p for _, p in got])
  return by_row, incomplete


def merge_task_summaries(summaries: list) -> dict | None:
  """One summary for a row trained as per-task runs: None until all are complete.

  Domains from each task's run; parameters and train time summed (the five
  models together); `step` the smallest (a run may stop at the lr floor).
  """
  if not summaries or any(s is None for s in summaries):
    return None
  return {"step": min(int(s["step"]) for s in summaries),
          "domains": {n: d for s in summaries for n, d in s["domains"].items()},
          "params": {"total": sum(int(s["params"]["total"]) for s in summaries)},
          "train_seconds": sum(float(s.get("train_seconds") or 0.0) for s in summaries)}


def merge_task_points(per_task: list) -> list[dict]:
  """Curves of per-task runs as one: the steps every task evaluated, domains joined."""
  steps = set.intersection(*[{p["step"] for p in pts} for pts in per_task]) if per_task else set()
  out = []
  for step in sorted(steps):
    dice = {n: v for pts in per_task for p in pts if p["step"] == step
            for n, v in p["dice"].items()}
    out.append({"step": step, "mean_dice": sum(dice.values()) / len(dice), "dice": dice})
  return out


# ----------------------------------------------------------------------------
# The invocation.

def _machine() -> str:
  from u2net_jax import logging_utils  # pylint: disable=g-import-not-at-top
  return logging_utils.machine_description()


def _cpu_vector_flags() -> list[str]:
  """Which of avx, avx2, avx512f /proc/cpuinfo lists."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          present = set(line.split(":", 1)[1].split())
          return [v for v in VECTOR_FLAGS if v in present]
  except OSError:
    pass
  return []


def _write(path: str, text: str) -> None:
  io.write_text(path, text)


def write_outputs(runs: list[Run], new_domains, meta: dict, results_dir: str) -> dict:
  """paper_table.{json,md} and paper_curves.{json,png} from the complete runs."""
  by_row, incomplete = collect(runs)
  order = sorted(by_row, key=lambda r: ROWS.index(r) if r in ROWS else len(ROWS))  # stable
  by_row = {r: by_row[r] for r in order}
  table = build_table(by_row, new_domains, {**meta, "incomplete_runs": incomplete})
  curves = paper_curves.build_curves(by_row, new_domains, meta["seeds"])
  os.makedirs(results_dir, exist_ok=True)
  _write(os.path.join(results_dir, "paper_table.json"), json.dumps(table, indent=2))
  _write(os.path.join(results_dir, "paper_table.md"), render_markdown(table))
  _write(os.path.join(results_dir, "paper_curves.json"), json.dumps(curves, indent=2))
  paper_curves.plot(curves, os.path.join(results_dir, "paper_curves.png"),
                    title=f"{meta['preset']} preset")
  return table


def _seeds(values) -> list[int]:
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise U2NetError(f"--seeds {values} are not integers.") from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise U2NetError(f"--seeds {values}: give distinct non-negative integers.")
  return seeds


@contextlib.contextmanager
def _compilation_cache(workdir: str):
  """One persistent compilation cache for all runs (unless the user set one)."""
  key = "JAX_COMPILATION_CACHE_DIR"
  old = os.environ.get(key)
  if old is None:
    os.environ[key] = os.path.abspath(os.path.join(workdir, "jax_cache"))
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(key, None)


def _check_flags() -> None:
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  bad = [s for s in FLAGS.settings if s not in SETTINGS]
  if bad:
    raise U2NetError(f"--settings {bad} not in {SETTINGS}.")
  if FLAGS.eval_every < 0 or FLAGS.max_runs < 0 or FLAGS.curve_cases < 0:
    raise U2NetError("--eval_every, --curve_cases and --max_runs must be ≥ 0.")


def main(argv):
  del argv
  from u2net_jax import config_utils, logging_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import train  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  if not FLAGS["verbosity"].present:
    logging_utils.quiet_library_logs()
  preset = FLAGS.preset
  workdir = FLAGS.workdir or os.path.join("runs", "paper_table" + (f"_{preset}" if preset else ""))
  try:
    seeds = _seeds(FLAGS.seeds)
    _check_flags()
    budget = FLAGS.steps or TABLE_STEPS.get(preset, 0)
    extra = (FLAGS.equal_time_steps if FLAGS.equal_time_steps >= 0
             else EQUAL_TIME_STEPS.get(preset, 0))
    runs = list_runs(workdir, seeds, FLAGS.settings, preset=preset, budget=budget,
                     extra=extra, new_domain=FLAGS.new_domain,
                     overrides=FLAGS.config_overrides, eval_every=FLAGS.eval_every,
                     curve_cases=FLAGS.curve_cases,
                     independent_config=train.independent_config)
    added = [r for r in runs if r.kind == "added"]
    new_domains = (config_utils.split_names(added[0].config.extend.new_domains)
                   if added else [])
    if not FLAGS.table_only:
      with _compilation_cache(workdir):
        train_missing(runs, FLAGS.max_runs, train.train_and_evaluate)
    command = "python experiments/paper_table.py" + "".join(f" {a}" for a in sys.argv[1:])
    table = write_outputs(runs, new_domains, {
        "preset": preset or "default", "command": command, "machine": _machine(),
        "cpu_vector_flags": _cpu_vector_flags(), "date": time.strftime("%Y-%m-%d"),
        "seeds": seeds}, FLAGS.results_dir)
    print(render_markdown(table))
  except U2NetError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
