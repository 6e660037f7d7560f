"""experiments/new_domain_ablation.py and gap_ablation.py.

Their variants are the table's configs plus one change.
"""

import json


import pytest

import smoke_workdir
from experiments import add_domain  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import new_domain_ablation as ablation  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import settings  # pylint: disable=g-import-not-at-top,wrong-import-position


def _differences(a, b, prefix=""):
  out = {}
  for k in set(a) | set(b):
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out.update(_differences(va, vb, f"{prefix}{k}."))
    elif va != vb:
      out[prefix + k] = (va, vb)
  return out


def test_each_variant_changes_only_what_it_names():
  table = settings.setting_config(add_domain, "", "separable", ablation.STEPS, []).to_dict()
  for name, variant in ablation.VARIANTS.items():
    overrides = {k: v for k, v in variant.items() if k != "base"}
    c = ablation.variant_config(name, 1, "runs/x/separable/seed1").to_dict()
    diff = _differences(table, c)
    expected = {"seed", "init_from", "extend.compare_independent", "train.eval_every",
                "eval.during_training_max_cases", *overrides}
    assert set(diff) <= expected, (name, diff)
    assert c["init_from"] == "runs/x/separable/seed1" and c["seed"] == 1
    assert not c["extend"]["compare_independent"]
    for key, value in overrides.items():
      section, leaf = key.split(".")
      assert str(c[section][leaf]) == str(value), (name, key)
  assert ablation.variant_config("lr0.1", 0, "b").train.lr == 0.1
  assert ablation.base_row("base_2000") == "separable_equal_time"
  assert ablation.base_row("lr0.1") == "separable"


def test_spleen_result_reads_the_final_value_and_the_curve(tmp_path):
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "summary.json").write_text(json.dumps(
      {"step": 4, "domains": {"heart": {"mean_dice": 0.9}, "spleen": {"mean_dice": 0.4}}}))
  (tmp_path / "metrics.jsonl").write_text(
      json.dumps({"step": 2, "val/mean_dice": 0.5, "val/heart": 0.8, "val/spleen": 0.2}) + "\n")
  r = ablation.spleen_result(str(tmp_path))
  assert r["final"] == 0.4 and r["step"] == 4
  assert r["curve"] == [[2, 0.2], [4, 0.4]]
  assert ablation.spleen_result(str(tmp_path / "missing")) is None
  md = ablation.render({"lr0.1": {"overrides": {"train.lr": "0.1"},
                                  "seeds": {0: r, 1: r, 2: None}}},
                       {"command": "c", "machine": "m", "date": "d", "seeds": [0, 1, 2]})
  assert "| lr0.1 | train.lr=0.1 | 2/3 | 0.400 ± 0.000 | 2: 0.200, 4: 0.400 |" in md


@pytest.mark.slow
def test_missing_base_runs_are_a_clear_error(tmp_path):
  proc = smoke_workdir.run(
      ["experiments/new_domain_ablation.py", f"--table_workdir={tmp_path}",
       f"--workdir={tmp_path / 'w'}", f"--results_dir={tmp_path / 'r'}", "--seeds=0"],
      timeout=300)
  assert proc.returncode == 2
  assert "paper_table.py" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_gap_ablation_variants_are_the_table_separable_config_plus_one_change(tmp_path):
  from experiments import five_domain, gap_ablation  # pylint: disable=g-import-not-at-top
  table = settings.setting_config(five_domain, "", "separable", gap_ablation.STEPS, []).to_dict()
  for name, overrides in gap_ablation.VARIANTS.items():
    c = gap_ablation.variant_config(name, 2).to_dict()
    diff = _differences(table, c)
    assert set(diff) <= {"seed", "train.eval_every", "eval.during_training_max_cases",
                         *overrides}, (name, diff)
    assert c["seed"] == 2 and c["train"]["steps"] == 500
  assert gap_ablation.variant_config("wide_f16", 0).model.features_root == 16
  # An incomplete run (step < 500) is not a result.
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "summary.json").write_text(json.dumps(
      {"step": 300, "domains": {"heart": {"mean_dice": 0.5}}}))
  assert gap_ablation.run_result(str(tmp_path)) is None
  (tmp_path / "eval" / "summary.json").write_text(json.dumps(
      {"step": 500, "domains": {"heart": {"mean_dice": 0.5}, "liver": {"mean_dice": 0.7}},
       "params": {"total": 10}}))
  r = gap_ablation.run_result(str(tmp_path))
  assert r["final"] == 0.6 and r["params"] == 10 and r["curve"] == [[500, 0.6]]
  md = gap_ablation.render({"wide_f16": {"overrides": {"model.features_root": "16"},
                                         "seeds": {0: r, 1: None}}},
                           {"command": "c", "machine": "m", "date": "d", "seeds": [0, 1]})
  assert "| wide_f16 | model.features_root=16 | 10 | 1/2 | 0.600 (one seed) | 500: 0.600 |" in md
