"""The conv autotuner (u2net_jax/model/autotune.py): measured, cached, reused, overridable.

That every implementation gives the same values and gradients is tested where
they are defined (tests/test_depthwise.py, tests/test_dense.py).
"""

import json
import os

import jax
import pytest

from u2net_jax import config as config_lib
from u2net_jax.domains import DomainSpec
from u2net_jax.model import autotune, depthwise
from u2net_jax.train import state as state_lib

SPECS = (DomainSpec("heart", ("MRI",), ("bg", "la")),
         DomainSpec("prostate", ("T2", "ADC"), ("bg", "pz", "tz")))
MODEL = config_lib.parse({"model": {"features_root": 4, "num_levels": 2,
                                     "downsample": "separable"}}).model


def test_records_the_models_actual_conv_shapes():
  shapes = autotune.record_shapes(SPECS, MODEL, 2, (8, 8, 8))
  # Separable model: depthwise convs at both levels (4 and 8 features), stride 1
  # and 2 (separable downsampling); one dense 3³ input conv from 2 (padded) channels.
  dw = {(x, s) for x, _, s, _ in shapes["depthwise"]}
  assert ((2, 8, 8, 8, 4), 1) in dw and ((2, 8, 8, 8, 4), 2) in dw and ((2, 4, 4, 4, 8), 1) in dw
  assert [(x, k) for x, k, _, _ in shapes["dense"]] == [((2, 8, 8, 8, 2), (3, 3, 3, 2, 4))]
  assert depthwise.SHAPES is None  # recording ends with the trace


def test_records_the_dense_downsampling_convs():
  model = config_lib.parse({"model": {"features_root": 4, "num_levels": 2,
                                      "downsample": "dense"}}).model
  shapes = autotune.record_shapes(SPECS, model, 2, (8, 8, 8))
  # Dense stride-2 downsampling (the default): no stride-2 depthwise conv; the
  # 4 → 8 features stride-2 3³ conv is timed with the dense implementations.
  assert {s for _, _, s, _ in shapes["depthwise"]} == {1}
  assert [(x, k, s) for x, k, s, _ in shapes["dense"]] == [
      ((2, 8, 8, 8, 2), (3, 3, 3, 2, 4), (1, 1, 1)), ((2, 8, 8, 8, 4), (3, 3, 3, 4, 8), (2, 2, 2))]


def test_chooses_caches_and_reuses(tmp_path, monkeypatch):
  logs = []
  tuned, report = autotune.tune(SPECS, MODEL, 2, (8, 8, 8), cache_dir=str(tmp_path),
                                reps=1, log=logs.append)
  assert tuned.depthwise_impl in ("lax", "shift", "fused")
  assert tuned.dense_impl in ("lax", "shift")
  for kind in ("depthwise", "dense"):
    stage1 = report[kind]["stage1"]
    assert set(stage1) == set(autotune.CANDIDATES[kind]) and not report[kind]["cached"]
    assert all(t["seconds"] > 0 for t in stage1.values())
  # The measured choice is the fastest of what was timed last.
    last = report[kind]["stage2"] or stage1
    assert report[kind]["choice"] == min(last, key=lambda i: last[i]["seconds"])
  cache = json.load(open(tmp_path / autotune.CACHE_FILE))
  assert len(cache) == 2 and all(jax.__version__ in k for k in cache)
  logs.clear()
  again, report2 = autotune.tune(SPECS, MODEL, 2, (8, 8, 8), cache_dir=str(tmp_path),
                                 log=logs.append)
  assert again == tuned and all(r["cached"] for r in report2.values())
  assert any("reused" in line for line in logs) and not any("ms forward" in l for l in logs)
  # Other shapes are another key: measured, not reused (two cheap candidates suffice).
  monkeypatch.setattr(autotune, "CANDIDATES", {"depthwise": ("lax", "shift"),
                                               "dense": ("lax", "shift")})
  _, report3 = autotune.tune(SPECS, MODEL, 1, (8, 8, 8), cache_dir=str(tmp_path), reps=1,
                             log=lambda _: None)
  assert not any(r["cached"] for r in report3.values())


def test_a_fixed_choice_is_not_tuned(tmp_path):
  fixed = config_lib.model_config({"features_root": 4, "num_levels": 2,
                                   "depthwise_impl": "shift", "dense_impl": "lax"})
  tuned, report = autotune.tune(SPECS, fixed, 2, (8, 8, 8), cache_dir=str(tmp_path))
  assert tuned == fixed and report == {}
  assert not os.path.exists(tmp_path / autotune.CACHE_FILE)


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch):
  monkeypatch.setattr(autotune, "CANDIDATES", {"depthwise": ("lax", "shift"),
                                               "dense": ("lax", "shift")})
  (tmp_path / autotune.CACHE_FILE).write_text("{not json")
  tuned, report = autotune.tune(SPECS, MODEL, 2, (8, 8, 8), cache_dir=str(tmp_path), reps=1,
                                log=lambda _: None)
  assert not report["depthwise"]["cached"]
  assert json.load(open(tmp_path / autotune.CACHE_FILE))  # rewritten


def test_a_workdir_keeps_its_choice(tmp_path, monkeypatch):
  monkeypatch.setattr(autotune, "CANDIDATES", {"depthwise": ("lax", "shift"),
                                               "dense": ("lax", "shift")})
  monkeypatch.setattr(autotune, "default_cache_dir", lambda: str(tmp_path / "cache"))
  cfg = config_lib.parse({"model": {"features_root": 4, "num_levels": 2},
                          "data": {"patch_size": (8, 8, 8), "tasks": "heart"}})
  logs = []
  tuned, record = state_lib.tuned_model_config(cfg, SPECS, 2, str(tmp_path), logs.append)
  assert record["depthwise_impl"] == tuned.depthwise_impl and record["measurements"]
  state_lib.write_autotune_record(str(tmp_path), record)
  # A resumed run reads the workdir's choice: no measuring, whatever the cache says.
  (tmp_path / state_lib.AUTOTUNE_FILE).write_text(json.dumps(
      {**record, "depthwise_impl": "shift", "dense_impl": "lax"}))
  logs.clear()
  kept, none = state_lib.tuned_model_config(cfg, SPECS, 2, str(tmp_path), logs.append)
  assert (kept.depthwise_impl, kept.dense_impl, none) == ("shift", "lax", None)
  assert any("resuming with" in line for line in logs)
  (tmp_path / state_lib.AUTOTUNE_FILE).write_text("[")
  with pytest.raises(Exception, match="delete it to measure again"):
    state_lib.tuned_model_config(cfg, SPECS, 2, str(tmp_path), logs.append)
