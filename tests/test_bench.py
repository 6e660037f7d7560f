"""benchmarks/bench.py runs end to end and prints the documented JSON keys.

No timing assertions: numbers live in BENCHMARKS.md, produced by the commands
written there.
"""

import json


import pytest

import smoke_workdir
from benchmarks import bench  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.slow
def test_smoke_preset_prints_one_json_object_with_every_key(tmp_path):
  out = tmp_path / "bench.json"
  proc = smoke_workdir.run(
      ["benchmarks/bench.py", "--preset=smoke", "--steps=2", "--warmup=1", f"--out={out}"],
      env={"JAX_NUM_CPU_DEVICES": "1"}, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  assert json.loads(out.read_text()) == result
  for key in bench.REQUIRED_KEYS:
    assert key in result, key
  assert result["preset"] == "smoke"
  assert result["platform"] == "cpu"
  assert result["params"] > 0
  assert result["train_step_s"] > 0 and result["infer_step_s"] > 0
  assert result["train_voxels_per_s"] > 0 and result["flops_per_step"] > 0
  assert result["peak_rss_mb"] > 0
  assert result["window_voxels_per_s"] > 0  # the sliding-window part ran too


def test_cpu_preset_is_the_issue_model():
  c = bench.make_config("cpu", "auto")
  assert (c.model.mode, c.model.features_root, c.model.num_levels) == ("separable", 16, 4)
  assert c.model.compute_dtype == "float32" and c.train.loss == "ce"
  assert tuple(c.data.patch_size) == (64, 64, 64)
  specs = bench.domain_specs(64)
  assert len(specs) == 5 and all(s.in_channels == 1 and s.num_classes == 2 for s in specs)
  for name in ("gpu", "tpu"):
    p = bench.PRESETS[name]
    assert (p["features_root"], p["num_levels"], p["patch"], p["batch_per_device"],
            p["compute_dtype"], p["window_volume"]) == (16, 6, 128, 2, "bfloat16", 256)


@pytest.mark.slow
def test_window_scaling_reports_each_size_with_its_window_count(tmp_path):
  from u2net_jax.infer import sliding_window  # pylint: disable=g-import-not-at-top
  out = tmp_path / "scaling.json"
  proc = smoke_workdir.run(
      ["benchmarks/window_scaling.py", "--preset=smoke", "--sizes=16,40", f"--out={out}"],
      env={"JAX_NUM_CPU_DEVICES": "1"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [r["size"] for r in rows] == [16, 40]
  for r in rows:
    assert r["windows"] == sliding_window.num_windows((r["size"],) * 3, (16, 16, 16))
    assert r["seconds"] > 0 and r["peak_rss_mb"] > 0
  assert rows[1]["windows"] > rows[0]["windows"] == 1
