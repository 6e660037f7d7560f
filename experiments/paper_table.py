r"""Reproduce the 3D U²-Net paper's comparison (Table 2) with one command.

Trains the five settings — independent models, one shared model, series and
parallel residual adapters, and the separable universal model — on the same
domains with the same step budget and seed, then adds a new domain (spleen)
to the separable model (`experiments/add_domain.py`), and writes
`<results_dir>/paper_table.{md,json}`: per setting the total parameters, their
% of the five independent models, per-domain mean Dice and the mean over
domains, plus the new-domain row.

  python experiments/paper_table.py                  # synthetic, 2-core CPU
  python experiments/paper_table.py --preset=smoke   # tiny, for tests
  python experiments/paper_table.py --preset=msd --config_overrides=data.manual_dir=/MSD

Each setting trains in `<workdir>/<setting>` and resumes there if interrupted;
a finished setting (summary present) is not retrained.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

SETTINGS = ("independent", "shared", "series_adapter", "parallel_adapter", "separable")

flags.DEFINE_string("preset", "", "five_domain.py preset: '' (synthetic), 'smoke' or 'msd'.")
flags.DEFINE_string("workdir", None, "Where the runs go (default runs/paper_table[_<preset>]).")
flags.DEFINE_string("results_dir", "results", "Where paper_table.{md,json} are written.")
# The default preset's table budget: 500 steps per setting keeps all five
# settings, the new domain and the evaluations within ~1 hour on a 2-core CPU
# (the dense 3³ settings take ~0.8 s per step there; README). The presets'
# own budgets (five_domain.py) are used for 'smoke' and 'msd'.
TABLE_STEPS = {"": 500}
# An extra row: the separable model given the CPU time of one dense setting.
# On this CPU a separable step is ~4× cheaper than a dense one (0.15 vs
# 0.65–0.9 s), so at equal steps the comparison is at unequal compute.
EQUAL_TIME_STEPS = {"": 2000}

flags.DEFINE_integer("steps", 0, "Train steps per setting (0 = 500 for the default preset, "
                     "the preset's own for the others).")
flags.DEFINE_list("settings", list(SETTINGS), "Settings to train, of " + ",".join(SETTINGS))
flags.DEFINE_bool("new_domain", True, "Also add spleen to the separable model.")
flags.DEFINE_integer("equal_time_steps", -1,
                     "Also train the separable model for this many steps (a row "
                     "'separable_equal_time'); -1 = 2000 for the default preset (about "
                     "the CPU time of one dense setting's budget), none for the others; "
                     "0 = no such row.")
flags.DEFINE_list("config_overrides", [], "key.path=value items applied to every config.")
FLAGS = flags.FLAGS


def _set(config, dotted: str, value) -> None:
  node = config
  *parents, leaf = dotted.split(".")
  for p in parents:
    node = node[p]
  old = node[leaf]
  if isinstance(value, str) and not isinstance(old, str) and old is not None:
    if isinstance(old, bool):
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(old, tuple):
      value = tuple(type(old[0])(v) for v in value.replace("x", ",").split(","))
    else:
      value = type(old)(value)
  node[leaf] = value


def setting_config(module, preset: str, mode: str, steps: int, overrides) -> object:
  """The preset's config for one setting, with the shared budget and overrides."""
  c = module.get_config(preset)
  c.model.mode = mode
  if steps:
    c.train.steps = steps
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      from u2net_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
      raise ConfigError(f"--config_overrides item {item!r} is not key.path=value.")
    _set(c, key.strip(), value.strip())
  return c


def _summary(workdir: str) -> dict | None:
  path = os.path.join(workdir, "eval", "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _stop_if_preempted(result: dict, run_dir: str) -> None:
  """A SIGTERM saves the setting's checkpoint and ends the whole table run."""
  if result.get("preempted"):
    print(f"== SIGTERM: {run_dir} saved at step {result['step']}; rerun the same command "
          "to resume.", flush=True)
    sys.exit(143)


def build_table(summaries: dict, new_domain: dict | None, meta: dict) -> dict:
  """The JSON table from each setting's summary.json."""
  indep = summaries.get("independent")
  indep_total = indep["params"]["total"] if indep else None
  rows = []
  for mode, s in summaries.items():
    dice = {n: d["mean_dice"] for n, d in s["domains"].items()}
    rows.append({
        "setting": mode, "params": s["params"]["total"],
        "params_pct_of_independent": (100.0 * s["params"]["total"] / indep_total
                                      if indep_total else None),
        "dice": dice, "mean_dice": sum(dice.values()) / len(dice),
        "train_seconds": s.get("train_seconds"), "steps": s["step"]})
  return {**meta, "rows": rows, "new_domain": new_domain}


def render_markdown(table: dict) -> str:
  """results/paper_table.md."""
  domains = list(table["rows"][0]["dice"]) if table["rows"] else []
  head = ["setting", "steps", "train time", "params", "% of independent", *domains, "mean"]
  lines = [f"# 3D U²-Net comparison ({table['preset']} preset)", "",
           f"Command: `{table['command']}`  ",
           f"Machine: {table['machine']}; date {table['date']}; "
           f"{table['steps']} steps per setting, seed {table['seed']}.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in table["rows"]:
    pct = "-" if r["params_pct_of_independent"] is None else f"{r['params_pct_of_independent']:.2f} %"
    secs = r.get("train_seconds")
    lines.append("| " + " | ".join([r["setting"], f"{r['steps']:,}",
                                    "-" if secs is None else f"{secs / 60:.1f} min",
                                    f"{r['params']:,}", pct,
                                    *[f"{r['dice'][d]:.3f}" for d in domains],
                                    f"**{r['mean_dice']:.3f}**"]) + " |")
  lines += ["", "Train time: the training loop alone (no compile, no evaluation); Dice: mean "
            "over each domain's validation cases and classes."]
  if any(r["setting"] == "separable_equal_time" for r in table["rows"]):
    lines += ["`separable_equal_time`: the separable model trained for more steps, in "
              "about the CPU time one dense setting needs for the shared budget."]
  nd = table.get("new_domain")
  if nd:
    lines += ["", "New domain added to the separable model (shared weights and old domains "
              "frozen; old domains' predictions bit-identical):", "",
              "| domain | Dice (added) | Dice (independent model, same steps) | params added "
              "| % of one independent model |", "|---|---|---|---|---|"]
    for n, r in nd["new_domains"].items():
      ind = r.get("independent_mean_dice")
      lines.append(f"| {n} | {r['mean_dice']:.3f} | "
                   f"{'-' if ind is None else f'{ind:.3f}'} | {r['params_added']:,} | "
                   f"{r['params_added_pct_of_independent']:.2f} % |")
  return "\n".join(lines) + "\n"


def _machine() -> str:
  import platform  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  dev = jax.devices()[0]
  return f"{dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores, {cpu}, jax {jax.__version__}"


def main(argv):
  del argv
  from experiments import add_domain, five_domain  # pylint: disable=g-import-not-at-top
  from u2net_jax import logging_utils, train  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  if not FLAGS["verbosity"].present:
    logging_utils.quiet_library_logs()
  preset = FLAGS.preset
  workdir = FLAGS.workdir or os.path.join("runs", "paper_table" + (f"_{preset}" if preset else ""))
  try:
    bad = [s for s in FLAGS.settings if s not in SETTINGS]
    if bad:
      raise U2NetError(f"--settings {bad} not in {SETTINGS}.")
    summaries, seed, steps = {}, None, None
    budget = FLAGS.steps or TABLE_STEPS.get(preset, 0)
    for mode in FLAGS.settings:
      cfg = setting_config(five_domain, preset, mode, budget, FLAGS.config_overrides)
      seed, steps = int(cfg.seed), int(cfg.train.steps)
      run_dir = os.path.join(workdir, mode)
      s = _summary(run_dir)
      if s is None or s["step"] < steps:
        print(f"== {mode}: training {steps} steps in {run_dir}", flush=True)
        t0 = time.time()
        _stop_if_preempted(train.train_and_evaluate(cfg, run_dir), run_dir)
        print(f"== {mode}: {time.time() - t0:.0f} s", flush=True)
        s = _summary(run_dir)
      summaries[mode] = s
    extra = (FLAGS.equal_time_steps if FLAGS.equal_time_steps >= 0
             else EQUAL_TIME_STEPS.get(preset, 0))
    if extra and "separable" in FLAGS.settings:
      cfg = setting_config(five_domain, preset, "separable", extra, FLAGS.config_overrides)
      run_dir = os.path.join(workdir, "separable_equal_time")
      s = _summary(run_dir)
      if s is None or s["step"] < extra:
        print(f"== separable_equal_time: training {extra} steps in {run_dir}", flush=True)
        t0 = time.time()
        _stop_if_preempted(train.train_and_evaluate(cfg, run_dir), run_dir)
        print(f"== separable_equal_time: {time.time() - t0:.0f} s", flush=True)
        s = _summary(run_dir)
      summaries["separable_equal_time"] = s
    new_domain = None
    if FLAGS.new_domain and "separable" in summaries:
      cfg = setting_config(add_domain, preset, "separable", 0, FLAGS.config_overrides)
      cfg.init_from = os.path.join(workdir, "separable")
      if budget:  # the same share of the budget as add_domain.py's default
        cfg.train.steps = max(budget // 4, 1)
      run_dir = os.path.join(workdir, "separable_add_spleen")
      s = _summary(run_dir)
      if s is None or "extension" not in s:
        print(f"== new domain: training {cfg.train.steps} steps in {run_dir}", flush=True)
        _stop_if_preempted(train.train_and_evaluate(cfg, run_dir), run_dir)
        s = _summary(run_dir)
      new_domain = s["extension"]
    command = "python experiments/paper_table.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    table = build_table(summaries, new_domain, {
        "preset": preset or "default", "command": command, "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"), "steps": steps, "seed": seed})
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    for name, text in (("paper_table.json", json.dumps(table, indent=2)),
                       ("paper_table.md", render_markdown(table))):
      path = os.path.join(FLAGS.results_dir, name)
      with open(path + ".tmp", "w") as f:
        f.write(text)
      os.replace(path + ".tmp", path)
    print(render_markdown(table))
  except U2NetError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
