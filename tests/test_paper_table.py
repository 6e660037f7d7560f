"""experiments/paper_table.py end to end on the smoke preset (five settings + new domain)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ["independent", "shared", "series_adapter", "parallel_adapter", "separable"]


def test_paper_table_smoke_writes_a_well_formed_table(tmp_path):
  results = tmp_path / "results"
  cmd = [sys.executable, "experiments/paper_table.py", "--preset=smoke", "--steps=2",
         f"--workdir={tmp_path / 'runs'}", f"--results_dir={results}",
         f"--config_overrides=data.data_dir={tmp_path / 'tfds'},eval.max_cases=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads((results / "paper_table.json").read_text())
  assert [r["setting"] for r in table["rows"]] == SETTINGS
  by = {r["setting"]: r for r in table["rows"]}
  assert by["independent"]["params_pct_of_independent"] == 100.0
  # The universal models are a small fraction of five independent ones.
  for s in ("shared", "series_adapter", "parallel_adapter", "separable"):
    assert by[s]["params"] < by["independent"]["params"]
  assert by["separable"]["params"] < by["series_adapter"]["params"]
  for r in table["rows"]:
    assert sorted(r["dice"]) == ["heart", "prostate"]
    assert all(0.0 <= v <= 1.0 for v in r["dice"].values())
    assert r["steps"] == 2
  spleen = table["new_domain"]["new_domains"]["spleen"]
  assert spleen["params_added"] > 0 and 0 <= spleen["independent_mean_dice"] <= 1
  md = (results / "paper_table.md").read_text()
  assert "| separable |" in md and "spleen" in md and "python experiments/paper_table.py" in md
  assert md.count("\n| ") == 1 + len(SETTINGS) + 1 + 1  # header rows + settings + new-domain


def test_paper_table_rejects_an_unknown_setting(tmp_path):
  cmd = [sys.executable, "experiments/paper_table.py", "--settings=separable,bogus",
         f"--workdir={tmp_path}", f"--results_dir={tmp_path / 'r'}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  assert "bogus" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "r").exists()


def test_sigterm_in_one_setting_ends_the_table_run(tmp_path, monkeypatch):
  # A preempted setting has saved its checkpoint; the table run must stop
  # there (rerun resumes it), not go on to the next setting or write a table.
  sys.path.insert(0, ROOT)
  from experiments import paper_table
  from u2net_jax import train
  started = []

  def preempted(config, workdir):
    started.append(os.path.basename(workdir))
    return {"preempted": True, "step": 3}

  monkeypatch.setattr(train, "train_and_evaluate", preempted)
  paper_table.FLAGS(["paper_table.py", "--preset=smoke", f"--workdir={tmp_path}",
                     f"--results_dir={tmp_path / 'r'}"])
  try:
    with pytest.raises(SystemExit) as exit_info:
      paper_table.main([])
  finally:
    paper_table.FLAGS.unparse_flags()
  assert exit_info.value.code == 143
  assert started == ["independent"]
  assert not (tmp_path / "r").exists()
