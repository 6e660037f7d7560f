"""benchmarks/bench.py runs end to end and prints the documented JSON keys.

No timing assertions: numbers live in BENCHMARKS.md, produced by the commands
written there.
"""

import json
import sys


import pytest

import smoke_workdir
from benchmarks import bench, paper_analyze, presets  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_main_prints_one_json_object_and_writes_the_same_to_out(tmp_path, monkeypatch, capsys):
  # The real smoke benchmark runs inside the device check below (its bench
  # part); here only the command line's output contract, without running one.
  fake = {k: 1.0 for k in bench.REQUIRED_KEYS}
  monkeypatch.setattr(bench, "run", lambda preset, **kw: dict(fake, preset=preset, **kw))
  out = tmp_path / "bench.json"
  result = bench.main(["--preset=smoke", "--impl=lax", "--steps=2", f"--out={out}"])
  lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
  assert len(lines) == 1 and json.loads(lines[0]) == result == json.loads(out.read_text())
  assert result["preset"] == "smoke" and result["impl"] == "lax" and result["steps"] == 2


def test_cpu_preset_is_the_issue_model():
  c = presets.make_config("cpu", "auto")
  assert (c.model.mode, c.model.features_root, c.model.num_levels) == ("separable", 16, 4)
  assert c.model.compute_dtype == "float32" and c.train.loss == "ce"
  assert tuple(c.data.patch_size) == (64, 64, 64)
  specs = presets.domain_specs(64)
  assert len(specs) == 5 and all(s.in_channels == 1 and s.num_classes == 2 for s in specs)
  for name in ("gpu", "tpu"):
    p = presets.PRESETS[name]
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


# -- compile-only analysis (--analyze) and the remat option --------------------

@pytest.mark.slow
def test_analyze_smoke_writes_costs_memory_and_projections(tmp_path):
  out = tmp_path / "analyze.json"
  proc = smoke_workdir.run(
      ["benchmarks/bench.py", "--preset=smoke", "--analyze", f"--out={out}"],
      env={"JAX_NUM_CPU_DEVICES": "1"}, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  for key in paper_analyze.ANALYZE_KEYS:
    assert key in result, key
  for program in ("train", "window"):
    part = result[program]
    for key in paper_analyze.ANALYSIS_KEYS:
      assert key in part, (program, key)
    assert part["flops_per_step"] > 0 and part["bytes_accessed_per_step"] > 0
    assert part["peak_memory_bytes"] > 0 and part["memory"]["available"]
    assert set(part["projected_step_s"]) == set(paper_analyze.HARDWARE)
    assert all(t > 0 for t in part["projected_step_s"].values())
  assert result["flops_per_step"] == result["train"]["flops_per_step"]
  assert {"H100", "H200", "TPU v5e", "TPU v5p"} <= set(result["projected_step_s"])
  assert all(h["source"] and h["peak_flops"] > 0 for h in result["hardware"].values())
  # Tiny programs fit everywhere.
  assert all(f["train"] and f["window"] for f in result["fits"].values())
  assert result["window"]["window_count"] == 27  # 32³ in 16³ windows, 50 % overlap


def test_roofline_and_fits_use_the_datasheet_numbers():
  times, bound = paper_analyze.roofline(989e12, 1.0)
  assert times["H100"] == pytest.approx(1.0) and bound["H100"] == "compute"
  times, bound = paper_analyze.roofline(1.0, 3.35e12)
  assert times["H100"] == pytest.approx(1.0) and bound["H100"] == "memory"
  assert times["H200"] == pytest.approx(3.35 / 4.8)
  f = paper_analyze.fits({"train": 20 * 2 ** 30, "none": 0})
  assert f["V100"]["train"] is False and f["TPU v5e"]["train"] is False
  assert f["H100"]["train"] is True and f["TPU v5p"]["train"] is True
  assert f["H100"]["none"] is None


def test_memory_summary_adds_arguments_outputs_temporaries_less_aliases():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.ones((64, 64), jnp.float32)
  compiled = jax.jit(lambda a: jnp.tanh(a @ a) + 1, donate_argnums=0).lower(x).compile()
  m = paper_analyze.memory_summary(compiled)
  assert m["available"] and m["argument_size_in_bytes"] >= 64 * 64 * 4
  assert m["peak_memory_bytes"] == (m["argument_size_in_bytes"] + m["output_size_in_bytes"]
                                    + m["temp_size_in_bytes"]
                                    + m["generated_code_size_in_bytes"]
                                    - m["alias_size_in_bytes"]) > 0


def test_paper_preset_is_the_msd_step_at_gpu_sizes():
  c = presets.make_config("paper", "lax", "lax")
  m = c.model
  assert (m.mode, m.features_root, m.num_levels, m.downsample) == ("separable", 16, 6, "dense")
  assert (m.compute_dtype, m.depthwise_impl, m.dense_impl, m.remat) == ("bfloat16", "lax",
                                                                        "lax", False)
  assert tuple(c.data.patch_size) == (128, 128, 128)
  assert c.train.loss == "lovasz_focal" and c.train.domain_updates == "official"
  assert presets.make_config("paper", "lax", "lax", remat=True).model.remat is True
  specs = presets.domain_specs(128, "paper")
  assert {s.name: (s.in_channels, s.num_classes) for s in specs} == presets.MSD_SHAPES
  assert presets.PRESETS["paper"]["batch_per_device"] == 2


def test_remat_gives_the_same_loss_and_gradients():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import models  # pylint: disable=g-import-not-at-top
  specs = presets.domain_specs(8, "paper")[3:]  # prostate (2 channels, 3 classes), pancreas
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 8, 2)), jnp.float32)
  got = []
  for remat in (False, True):
    model = models.U2Net(specs, features_root=2, num_levels=2, depthwise_impl="lax",
                         remat=remat, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    loss = lambda s: (nnx.merge(graphdef, s)(x, jnp.int32(0)) ** 2).mean()
    got.append(jax.jit(jax.value_and_grad(loss))(state))
  (l0, g0), (l1, g1) = got
  assert float(l0) == float(l1)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# -- benchmarks/device_check.sh, on CPU ----------------------------------------

@pytest.mark.slow
def test_device_check_runs_on_cpu_and_writes_one_json(tmp_path, tmp_path_factory):
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  from benchmarks import device_check_collect  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  out = tmp_path / "device_check.json"
  # The session's trained smoke run (2 steps), copied: the train part resumes
  # it and only evaluates (no second training of the same run); the export and
  # reload parts write into the copy.
  trained, data_dir = smoke_workdir.trained(tmp_path_factory)
  workdir = tmp_path / "smoke_work"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("export"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
             DEVICE_CHECK_ALLOW_CPU="1", DEVICE_CHECK_PRESET="smoke", DEVICE_CHECK_IMPLS="lax",
             DEVICE_CHECK_TIMEOUT_SCALE="10", DEVICE_CHECK_TRAIN_STEPS="2",
             DEVICE_CHECK_DATA_DIR=data_dir, DEVICE_CHECK_WORKDIR=str(workdir),
             PYTHON=sys.executable, TMPDIR=str(tmp_path))
  proc = subprocess.run(["bash", "benchmarks/device_check.sh", str(out)], cwd=smoke_workdir.ROOT,
                        env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  for key in device_check_collect.COLLECT_KEYS:
    assert key in result, key
  assert result["ok"] and result["backend"] == "cpu" and result["impls"] == ["lax"]
  parts = result["parts"]
  assert set(parts) == {"devices", "bench_lax", "train", "export", "reload"}
  for name, part in parts.items():
    for key in device_check_collect.PART_KEYS:
      assert key in part, (name, key)
    assert part["rc"] == 0 and part["seconds"] > 0, (name, part)
  measured = parts["bench_lax"]["result"]  # bench.py --preset=smoke --impl=lax, run for real
  for key in bench.REQUIRED_KEYS:
    assert key in measured, key
  assert measured["preset"] == "smoke" and measured["platform"] == "cpu"
  assert measured["params"] > 0
  assert measured["train_step_s"] > 0 and measured["infer_step_s"] > 0
  assert measured["train_voxels_per_s"] > 0 and measured["flops_per_step"] > 0
  assert measured["peak_rss_mb"] > 0
  assert measured["window_voxels_per_s"] > 0  # the sliding-window part ran too
  assert parts["train"]["result"]["step"] == 2
  assert set(parts["train"]["result"]["mean_dice"]) == {"heart", "prostate"}
  reloaded = parts["reload"]["result"]["domains"]
  assert set(reloaded) == {"heart", "prostate"}
  for r in reloaded.values():
    assert r["labels_shape"] == r["volume_shape"]
    assert r["window_probabilities_shape"] == [1, *r["patch"], r["classes"]]


def test_compile_profile_sums_phases_and_counts_kernels_by_kind():
  from benchmarks import compile_profile  # pylint: disable=g-import-not-at-top
  ev = lambda name, ms, **args: {"ph": "X", "name": name, "dur": ms * 1000, "args": args}  # noqa: E731
  events = [
      ev("PjRtCpuClient::Compile", 30_000),
      ev("HLO passes through layout assignment (jit_flat_step)", 8_000),
      ev("HLO passes after layout assignment (jit_flat_step)", 3_000),
      ev("FusionCompiler::Compile", 20, module="bitcast_add_fusion.7_kernel_module"),
      ev("FusionCompiler::Compile", 30, module="bitcast_add_fusion_kernel_module"),
      ev("FusionCompiler::Compile", 5, module="add_select_fusion.3_kernel_module"),
      ev("TaskDispatcher::dispatch", 12), ev("TaskDispatcher::dispatch", 8),
      {"ph": "i", "name": "FusionCompiler::Compile"},  # not a complete event: ignored
  ]
  out = compile_profile.summarize(events)
  assert out["xla_compile_s"] == 30.0 and out["hlo_passes_s"] == 11.0
  assert out["kernels"] == 3 and out["llvm_modules"] == 2 and out["llvm_cpu_s"] == 0.02
  assert out["top_kernel_kinds"]["bitcast_add_fusion"] == [0.05, 2]
  assert list(out["top_kernel_kinds"]) == ["bitcast_add_fusion", "add_select_fusion"]


@pytest.mark.parametrize("stride", [1, 2])
def test_opaque_depthwise_stand_in_keeps_the_conv_shapes(stride):
  # The compile bound is only meaningful if the program around it is the same.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import compile_profile  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import depthwise  # pylint: disable=g-import-not-at-top
  a, b = jnp.ones((2, 9, 8, 7, 3)), jnp.ones((2, 9, 8, 7, 2))
  kernel = jnp.ones((3, 3, 3, 5))
  want = depthwise.depthwise_conv3d((a, b), kernel, stride, "lax")
  got = compile_profile._opaque_depthwise((a, b), kernel, stride)  # pylint: disable=protected-access
  assert got.shape == want.shape and got.dtype == want.dtype


def test_fresh_process_runs_each_variant_and_appends_its_json_line(tmp_path, capsys):
  from benchmarks import fresh_process  # pylint: disable=g-import-not-at-top
  script = tmp_path / "variant.py"
  script.write_text("import json, sys\n"
                    "v = sys.argv[1].split('=', 1)[1]\n"
                    "print('noise'); print(json.dumps({'variant': v}))\n"
                    "sys.exit(3 if v == 'bad' else 0)\n")
  out = tmp_path / "lines.jsonl"
  fresh_process.run_variants(str(script), ["a", "b"], env=None, out=str(out))
  assert [json.loads(l)["variant"] for l in out.read_text().splitlines()] == ["a", "b"]
  assert capsys.readouterr().out.splitlines() == ['{"variant": "a"}', '{"variant": "b"}']
  with pytest.raises(SystemExit, match="variant bad failed"):
    fresh_process.run_variants(str(script), ["bad"], env=None)
