"""experiments/paper_table.py: seeds, curves, resume/fill, and the pure table helpers."""

import json
import os
import statistics

import pytest


import smoke_workdir  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import paper_curves  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import paper_table, paper_table_report  # pylint: disable=g-import-not-at-top,wrong-import-position

SETTINGS = ["independent", "shared", "series_adapter", "parallel_adapter", "separable"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_paper_table_smoke_writes_a_well_formed_table(tmp_path, tmp_path_factory):
  # One real run (one seed of the separable setting, 2 steps) through the
  # whole command: training, curves, table, plot. Seeds, every row, the
  # new-domain rows (their configs and aggregation) and the training order are
  # covered with a fake trainer below; the extension training itself by
  # tests/test_extend.py.
  results = tmp_path / "results"
  cmd = ["experiments/paper_table.py", "--preset=smoke", "--steps=2",
         "--eval_every=1", "--seeds=0", "--settings=separable", "--nonew_domain",
         f"--workdir={tmp_path / 'runs'}", f"--results_dir={results}",
         f"--config_overrides=data.data_dir={smoke_workdir.data_dir(tmp_path_factory)},"
         "eval.max_cases=1"]
  # One device, as the session's trained smoke run (smoke_workdir.trained) and
  # tests/test_extend.py: the same train and evaluation programs, compiled once.
  proc = smoke_workdir.run(cmd, env={"JAX_NUM_CPU_DEVICES": "1"}, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads((results / "paper_table.json").read_text())
  assert table["seeds"] == [0] and table["incomplete_runs"] == []
  assert [r["setting"] for r in table["rows"]] == ["separable"]
  assert table["rows"][0]["params"] > 0
  assert table["rows"][0]["params_pct_of_independent"] is None  # no independent row
  for r in table["rows"]:
    assert r["seeds_complete"] == [0] and r["n_complete"] == 1 and r["steps"] == 2
    assert sorted(r["dice"]) == ["heart", "prostate"]
    for stat in [*r["dice"].values(), r["mean_dice"]]:
      assert stat["n"] == 1 and 0.0 <= stat["mean"] <= 1.0 and stat["sd"] is None
    assert sorted(r["per_seed"]) == ["0"]
    assert (tmp_path / "runs" / r["setting"] / "seed0" / "eval" / "summary.json").exists()
  assert not table.get("new_domain")
  curves = json.loads((results / "paper_curves.json").read_text())
  assert set(curves["rows"]) == {"separable"}
  for entry in curves["rows"].values():
    assert entry["seeds"]["0"]["complete"] and len(entry["seeds"]["0"]["points"]) >= 2
    assert entry["mean"] and all(p["n"] == 1 for p in entry["mean"])
  assert (results / "paper_curves.png").read_bytes()[:8] == PNG_MAGIC
  md = (results / "paper_table.md").read_text()
  assert "| separable | 1/1 | 2 |" in md
  assert "All runs complete." in md and "python experiments/paper_table.py" in md
  assert "ddof=1" in md and "CPU vector flags" in md
  assert md.count("\n| ") == 2  # header + separable


# ----------------------------------------------------------------------------
# Pure helpers.

def test_mean_sd_is_the_sample_sd():
  vals = [0.5, 0.7, 0.9]
  s = paper_curves.mean_sd(vals)
  assert s["n"] == 3 and s["mean"] == pytest.approx(0.7)
  assert s["sd"] == pytest.approx(statistics.stdev(vals))  # ddof=1
  assert paper_curves.mean_sd([0.4]) == {"mean": 0.4, "sd": None, "n": 1}
  assert paper_curves.mean_sd([None]) == {"mean": None, "sd": None, "n": 0}


def _write_run(run_dir, val, final=None):
  """A fake metrics.jsonl (val records {step: {domain: dice}}) and summary.json."""
  os.makedirs(run_dir / "eval", exist_ok=True)
  with open(run_dir / "metrics.jsonl", "w") as f:
    for step, dice in val.items():
      f.write(json.dumps({"step": step, "time": 0.0, "loss": 0.5}) + "\n")
      f.write(json.dumps({"step": step, "time": 0.0,
                          "val/mean_dice": sum(dice.values()) / len(dice),
                          **{f"val/{n}": v for n, v in dice.items()}}) + "\n")
    f.write('{"step": 99, "val/mean')  # cut off by a kill
  if final is not None:
    step, dice = final
    (run_dir / "eval" / "summary.json").write_text(json.dumps(
        {"step": step, "domains": {n: {"mean_dice": v} for n, v in dice.items()},
         "params": {"total": 10}, "train_seconds": 6.0}))


def test_curve_points_from_metrics_and_summary(tmp_path):
  _write_run(tmp_path / "a", {2: {"heart": 0.2, "liver": 0.4}, 4: {"heart": 0.1, "liver": 0.1}},
             final=(6, {"heart": 0.8, "liver": 0.6}))
  # A resumed run logs step 4 again: the last record wins.
  with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
    f.write("\n" + json.dumps({"step": 4, "val/mean_dice": 0.5, "val/heart": 0.4,
                               "val/liver": 0.6}) + "\n")
  summary = json.loads((tmp_path / "a" / "eval" / "summary.json").read_text())
  pts = paper_curves.run_points(paper_curves.read_metrics(str(tmp_path / "a" / "metrics.jsonl")),
                                summary)
  assert [p["step"] for p in pts] == [2, 4, 6]
  assert pts[0] == {"step": 2, "mean_dice": pytest.approx(0.3),
                    "dice": {"heart": 0.2, "liver": 0.4}}
  assert pts[1]["mean_dice"] == 0.5 and pts[2]["mean_dice"] == pytest.approx(0.7)
  assert paper_curves.run_points([], None) == []
  other = [{"step": 2, "mean_dice": 0.5, "dice": {"heart": 0.6}},
           {"step": 6, "mean_dice": 0.9, "dice": {"heart": 1.0}}]
  agg = paper_curves.aggregate({0: pts, 1: other})
  assert [(p["step"], p["n"]) for p in agg] == [(2, 2), (4, 1), (6, 2)]
  assert agg[0]["mean"] == pytest.approx(0.4)
  assert agg[0]["sd"] == pytest.approx(statistics.stdev([0.3, 0.5]))
  assert agg[1]["sd"] is None
  by_domain = paper_curves.aggregate({0: pts, 1: other}, domains=["heart"])
  assert by_domain[2]["mean"] == pytest.approx(0.9)  # heart 0.8 and 1.0
  entry = paper_curves.curve_entry({0: pts, 1: other}, complete=[0])
  assert entry["seeds"]["1"]["complete"] is False and all(p["n"] == 1 for p in entry["mean"])


def _summary(step, dice, params, seconds=60.0, extension=None):
  s = {"step": step, "domains": {n: {"mean_dice": v} for n, v in dice.items()},
       "params": {"total": params}, "train_seconds": seconds}
  if extension:
    s["extension"] = {"new_domains": extension}
  return s


def test_build_table_aggregates_complete_seeds_and_renders_dashes():
  by_row = {
      "independent": {"kind": "setting", "steps": 10, "summaries": {
          0: _summary(10, {"heart": 0.6, "liver": 0.8}, 1000, 60.0),
          1: _summary(10, {"heart": 0.8, "liver": 1.0}, 1000, 120.0), 2: None}},
      "separable": {"kind": "setting", "steps": 10, "summaries": {
          0: _summary(10, {"heart": 0.5, "liver": 0.7}, 50), 1: None, 2: None}},
      "shared": {"kind": "setting", "steps": 10, "summaries": {0: None, 1: None, 2: None}},
      "separable_add_spleen": {"kind": "added", "steps": 3, "summaries": {
          0: _summary(3, {"heart": 0.5, "spleen": 0.4}, 60, extension={
              "spleen": {"params_added": 10, "params_added_pct_of_independent": 5.0}}),
          1: _summary(3, {"heart": 0.5, "spleen": 0.6}, 60, extension={
              "spleen": {"params_added": 10, "params_added_pct_of_independent": 5.0}}),
          2: None}},
      "independent_spleen": {"kind": "independent", "steps": 3, "summaries": {
          0: _summary(3, {"spleen": 0.9}, 200), 1: None, 2: None}},
  }
  meta = {"preset": "x", "command": "c", "machine": "m", "cpu_vector_flags": ["avx"],
          "date": "d", "seeds": [0, 1, 2], "incomplete_runs": ["independent/seed2"]}
  table = paper_table_report.build_table(by_row, ["spleen"], meta)
  rows = {r["setting"]: r for r in table["rows"]}
  assert [r["setting"] for r in table["rows"]] == ["independent", "shared", "separable"]
  ind = rows["independent"]
  assert ind["n_complete"] == 2 and ind["seeds_complete"] == [0, 1]
  assert ind["dice"]["heart"]["mean"] == pytest.approx(0.7)
  assert ind["dice"]["heart"]["sd"] == pytest.approx(statistics.stdev([0.6, 0.8]))
  assert ind["mean_dice"]["mean"] == pytest.approx(0.8)  # seeds' means 0.7 and 0.9
  assert ind["train_seconds"] == pytest.approx(90.0)
  assert rows["separable"]["params_pct_of_independent"] == pytest.approx(5.0)
  assert rows["separable"]["mean_dice"] == {"mean": pytest.approx(0.6), "sd": None, "n": 1}
  assert rows["shared"]["n_complete"] == 0 and rows["shared"]["params"] is None
  # The new-domain row pairs seeds where both runs are complete: seed 0 only.
  nd = table["new_domain"]
  assert nd["seeds_complete"] == [0]
  assert nd["domains"]["spleen"]["added"]["mean"] == pytest.approx(0.4)
  assert nd["domains"]["spleen"]["independent"]["mean"] == pytest.approx(0.9)
  md = paper_table_report.render_markdown(table)
  assert "| independent | 3/3 |" not in md and "| independent | 2/3 | 10 | 1.5 min |" in md
  assert "0.700 ± 0.141" in md and "**0.800 ± 0.141**" in md
  assert "| shared | 0/3 | 10 | - | - | - | - | - | - |" in md
  assert "| spleen | 1/3 | 3 | 0.400 | 0.900 | 10 | 5.00 % |" in md
  assert "Incomplete runs (1, not in the means): `independent/seed2`" in md
  assert "avx (no avx2, avx512f)" in md


def test_config_overrides_set_new_options_and_reject_unknown_keys():
  from experiments import add_domain, five_domain
  from u2net_jax.errors import U2NetError
  c = paper_table.setting_config(five_domain, "smoke", "shared", 0, [
      "train.update_scaling=param_rms", "train.domain_updates=official",
      "data.synthetic.shape=8x8x8", "model.deep_supervision=false", "train.lr=0.5"])
  assert c.train.update_scaling == "param_rms" and c.train.domain_updates == "official"
  assert c.data.synthetic.shape == (8, 8, 8) and c.model.deep_supervision is False
  assert c.train.lr == 0.5 and c.model.mode == "shared"
  # extend.* reaches the new domain's config only.
  assert paper_table.setting_config(five_domain, "smoke", "shared", 0,
                                    ["extend.init=similar"]).extend.init == "scratch"
  c = paper_table.setting_config(add_domain, "smoke", "separable", 0, ["extend.init=similar"])
  assert c.extend.init == "similar"
  for item, named in (("train.no_such_key=1", "train.no_such_key"),
                      ("nope.lr=1", "'nope'"), ("train.lr.x=1", "train.lr.x"),
                      ("train.steps=many", "train.steps")):
    with pytest.raises(U2NetError, match=named):
      paper_table.setting_config(five_domain, "smoke", "shared", 0, [item])


# ----------------------------------------------------------------------------
# The invocation, with a fake trainer.

def _main(args, expect_exit=None):
  paper_table.FLAGS(["paper_table.py", *args])
  try:
    if expect_exit is None:
      paper_table.main([])
      return None
    with pytest.raises(SystemExit) as exit_info:
      paper_table.main([])
    assert exit_info.value.code == expect_exit
    return exit_info
  finally:
    paper_table.FLAGS.unparse_flags()


def _fake_trainer(root, started):
  """Writes what train_and_evaluate would: metrics.jsonl and eval/summary.json."""

  def fake(config, workdir):
    started.append({"rel": os.path.relpath(workdir, root), "seed": int(config.seed),
                    "steps": int(config.train.steps), "eval_every": int(config.train.eval_every),
                    "init_from": config.get("init_from", ""),
                    "compare": config.get("extend", {}).get("compare_independent")})
    tasks = config.data.tasks.split(",")
    steps, every = int(config.train.steps), int(config.train.eval_every)
    base = 0.1 + config.seed / 10
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      for s in range(every, steps, every):
        f.write(json.dumps({"step": s, "val/mean_dice": base * s / steps,
                            **{f"val/{t}": base * s / steps for t in tasks}}) + "\n")
    summary = {"step": steps, "domains": {t: {"mean_dice": base + i / 100}
                                          for i, t in enumerate(tasks)},
               "params": {"total": 1000 if config.model.mode == "independent" else 100},
               "train_seconds": 30.0}
    if config.get("init_from", ""):
      summary["extension"] = {"new_domains": {"spleen": {
          "mean_dice": summary["domains"]["spleen"]["mean_dice"], "params_added": 7,
          "params_added_pct_of_independent": 3.5}}}
    with open(os.path.join(workdir, "eval", "summary.json"), "w") as f:
      json.dump(summary, f)
    return summary

  return fake


SEED_ORDER = ["separable", "separable_equal_time", "separable_add_spleen",
              "separable_add_spleen/{}/independent_spleen", "independent", "shared",
              "series_adapter", "parallel_adapter"]


def test_max_runs_fills_the_table_over_invocations(tmp_path, monkeypatch):
  from u2net_jax.train import train
  started = []
  monkeypatch.setattr(train, "train_and_evaluate", _fake_trainer(str(tmp_path / "w"), started))
  results = tmp_path / "r"
  args = ["--preset=smoke", "--seeds=0,1", "--steps=10", "--equal_time_steps=15",
          f"--workdir={tmp_path / 'w'}", f"--results_dir={results}"]
  order = [r.format(f"seed{k}") if "{" in r else f"{r}/seed{k}" for k in (0, 1)
           for r in SEED_ORDER]

  _main(args + ["--max_runs=1"])
  assert [s["rel"] for s in started] == ["separable/seed0"]
  table = json.loads((results / "paper_table.json").read_text())
  assert table["incomplete_runs"] == order[1:]
  assert [r["setting"] for r in table["rows"]] == [*SETTINGS, "separable_equal_time"]
  assert {r["setting"]: r["n_complete"] for r in table["rows"]}["separable"] == 1
  md = (results / "paper_table.md").read_text()
  assert "| separable | 1/2 | 10 |" in md and "| shared | 0/2 | 10 | - |" in md
  assert "Incomplete runs (15, not in the means): `separable_equal_time/seed0`" in md
  assert (results / "paper_curves.png").read_bytes()[:8] == PNG_MAGIC

  _main(args)  # fills in the rest, in seed-major order
  assert [s["rel"] for s in started] == order
  by = {s["rel"]: s for s in started}
  assert by["separable_add_spleen/seed1"]["init_from"] == str(tmp_path / "w/separable/seed1")
  assert by["separable_add_spleen/seed1"]["compare"] is False
  assert by["separable_add_spleen/seed1"]["steps"] == 2  # max(10 // 4, 2)
  assert by["separable_equal_time/seed0"]["steps"] == 15
  assert all(s["seed"] == int(s["rel"].split("seed")[1][0]) for s in started)
  assert by["shared/seed0"]["eval_every"] == 2
  assert by["separable_equal_time/seed1"]["eval_every"] == 3
  table = json.loads((results / "paper_table.json").read_text())
  assert table["incomplete_runs"] == [] and table["seeds"] == [0, 1]
  for r in table["rows"]:
    assert r["n_complete"] == 2
    assert r["mean_dice"]["mean"] == pytest.approx(0.155)  # seeds 0.105 and 0.205
    assert r["mean_dice"]["sd"] == pytest.approx(statistics.stdev([0.105, 0.205]))
  assert table["new_domain"]["domains"]["spleen"]["independent"]["mean"] == pytest.approx(0.15)
  curves = json.loads((results / "paper_curves.json").read_text())
  assert curves["new_domain"] == {"domains": ["spleen"], "added": "separable_add_spleen",
                                  "independent": "independent_spleen"}
  sep = curves["rows"]["separable"]
  assert [p["step"] for p in sep["seeds"]["0"]["points"]] == [2, 4, 6, 8, 10]
  assert [p["n"] for p in sep["mean"]] == [2] * 5
  assert "All runs complete." in (results / "paper_table.md").read_text()

  _main(args + ["--table_only"])
  assert len(started) == len(order)  # nothing retrained


def test_sigterm_in_one_run_ends_the_table_run(tmp_path, monkeypatch):
  # A preempted run has saved its checkpoint; the table run must stop there
  # (rerun resumes it), not go on to the next run or write a table.
  from u2net_jax.train import train
  started = []

  def preempted(config, workdir):
    started.append(os.path.relpath(workdir, tmp_path))
    return {"preempted": True, "step": 3}

  monkeypatch.setattr(train, "train_and_evaluate", preempted)
  _main(["--preset=smoke", f"--workdir={tmp_path}", f"--results_dir={tmp_path / 'r'}"],
        expect_exit=143)
  assert started == ["separable/seed0"]
  assert not (tmp_path / "r").exists()


def test_an_unknown_override_key_exits_2_without_training(tmp_path, monkeypatch, capsys):
  from u2net_jax.train import train
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
  _main(["--preset=smoke", "--config_overrides=train.no_such_key=1", f"--workdir={tmp_path}",
         f"--results_dir={tmp_path / 'r'}"], expect_exit=2)
  assert "train.no_such_key" in capsys.readouterr().err
  assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_paper_table_rejects_an_unknown_setting(tmp_path):
  proc = smoke_workdir.run(["experiments/paper_table.py", "--settings=separable,bogus",
                           f"--workdir={tmp_path}", f"--results_dir={tmp_path / 'r'}"],
                          timeout=300)
  assert proc.returncode == 2
  assert "bogus" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "r").exists()


def test_msd_independent_row_is_the_authors_per_task_runs(tmp_path, monkeypatch):
  # :msd trains the independent baseline as the official code does: one run
  # per task, its own patch (not resized), batch and anisotropic pooling
  # (u2net_torch_src/config.py L61–67); the row merges the five.
  from u2net_jax.train import train
  started, configs = [], {}
  fake = _fake_trainer(str(tmp_path / "w"), started)

  def capture(config, workdir):
    configs[os.path.relpath(workdir, tmp_path / "w")] = config
    return fake(config, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", capture)
  results = tmp_path / "r"
  _main(["--preset=msd", "--seeds=0", "--steps=10", "--equal_time_steps=0",
         "--settings=independent,separable", "--nonew_domain",
         f"--workdir={tmp_path / 'w'}", f"--results_dir={results}"])
  tasks = ["heart", "liver", "hippocampus", "prostate", "pancreas"]
  assert [s["rel"] for s in started] == ["separable/seed0",
                                         *[f"independent/seed0/{t}" for t in tasks]]
  official = {"heart": ((80, 192, 128), 2, (4, 5, 5), 6),
              "hippocampus": ((40, 56, 40), 9, (3, 3, 3), 4),
              "prostate": ((20, 192, 192), 4, (2, 5, 5), 6)}
  for t, (patch, batch, pools, levels) in official.items():
    c = configs[f"independent/seed0/{t}"]
    assert (tuple(c.data.patch_size), c.train.batch_size, tuple(c.model.pool_per_axis),
            c.model.num_levels, c.data.tasks, c.data.source_patch, c.model.mode) == (
                patch, batch, pools, levels, t, "", "independent")
  sep = configs["separable/seed0"]
  assert tuple(sep.data.patch_size) == (128,) * 3 and "prostate:20x192x192" in sep.data.source_patch
  table = json.loads((results / "paper_table.json").read_text())
  row = {r["setting"]: r for r in table["rows"]}["independent"]
  assert row["n_complete"] == 1 and row["params"] == 5 * 1000  # five models together
  assert set(row["dice"]) == set(tasks)
  assert row["per_seed"]["0"]["train_seconds"] == pytest.approx(5 * 30.0)
  curve = json.loads((results / "paper_curves.json").read_text())["rows"]["independent"]
  assert [p["step"] for p in curve["seeds"]["0"]["points"]] == [2, 4, 6, 8, 10]


def test_a_run_stopped_at_the_lr_floor_is_complete(tmp_path):
  run = paper_table.Run("shared", 0, "shared/seed0", str(tmp_path), None, 100)
  os.makedirs(tmp_path / "eval")
  summary = {"step": 40, "domains": {}, "stopped_by_lr_floor": False}
  (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary))
  assert paper_table.run_summary(run) is None
  summary["stopped_by_lr_floor"] = True
  (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary))
  assert paper_table.run_summary(run)["step"] == 40
  assert paper_table.merge_task_summaries([summary, None]) is None
