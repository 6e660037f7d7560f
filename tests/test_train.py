"""The training engine: devices, processes, checkpoints, preemption, invariants, bad configs."""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smoke_workdir
from u2net_jax import config_utils
from u2net_jax.train import train

from experiments import five_domain  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return smoke_workdir.data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def cache_dir():
  return os.environ["JAX_COMPILATION_CACHE_DIR"]  # the session's (conftest.py)


def smoke(data_dir, **overrides):
  c = five_domain.get_config("smoke")
  c.data.data_dir = data_dir
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def run_cli(workdir, data_dir, cache_dir, *args, env=None, wait=True):
  """`run.py` on the smoke preset in `workdir` (smoke_workdir.cli)."""
  return smoke_workdir.cli("--config=experiments/five_domain.py:smoke", f"--workdir={workdir}",
                           f"--config.data.data_dir={data_dir}", *args,
                           env={"JAX_COMPILATION_CACHE_DIR": cache_dir, **(env or {})},
                           wait=wait)


def final_params(config, workdir):
  restored = train.restore_params(config, workdir, which="latest")
  params, step = restored.params, restored.step
  return step, jax.tree.map(np.asarray, params)


def assert_trees_equal(a, b, **tol):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    if tol:
      np.testing.assert_allclose(x, y, **tol)
    else:
      np.testing.assert_array_equal(x, y)


# -- step-level properties ---------------------------------------------------

def _state_and_step(config, mesh):
  specs = config_utils.validate(config)
  model, parts, state, txs, txd = train.build_train_state(config, specs, mesh)
  step = jax.jit(train.make_train_step(parts, model, config, txs, txd))
  return specs, parts, state, step


def _batch(config, mesh, step_index, specs):
  from u2net_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(step_index)
  d = step_index % len(specs)
  img = rng.normal(size=(8, 16, 16, 16, 2)).astype(np.float32)
  if specs[d].in_channels == 1:
    img[..., 1] = 0
  lab = (img[..., 0] > 0.5).astype(np.int32)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  del pipeline
  return {"image": jax.device_put(img, sharding), "label": jax.device_put(lab, sharding),
          "domain": jnp.int32(d)}


def test_eight_devices_give_the_same_gradients_as_one(data_dir):
  from u2net_jax.train import losses  # pylint: disable=g-import-not-at-top
  # Cross-entropy: Lovász-Softmax sorts errors, so near-ties may swap order
  # between shardings — a real (tiny) difference, not a sharding bug.
  config = smoke(data_dir)
  grads, values = [], []
  for n in (1, 8):
    mesh = train.make_mesh(n)
    specs = config_utils.validate(config)
    _, parts, state, _, _ = train.build_train_state(config, specs, mesh)
    batch = _batch(config, mesh, 1, specs)

    def loss(p, b):
      return losses.segmentation_loss(parts.merge(p)(b["image"], b["domain"]), b["label"],
                                      kind="ce")

    value, g = jax.jit(jax.value_and_grad(loss))(state["params"], batch)
    values.append(float(value))
    grads.append(jax.tree.map(np.asarray, g))
  np.testing.assert_allclose(values[0], values[1], rtol=1e-6)
  # fp32 sums run in another order on 8 devices (per-device partial sums, then
  # an all-reduce); through the instance norms that moves gradients by ~0.3 %
  # of their norm. A sharding bug (a missing all-reduce, a wrong batch slice)
  # moves them by O(1).
  diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(grads[0]),
                                                            jax.tree.leaves(grads[1]))))
  norm = np.sqrt(sum(np.sum(a ** 2) for a in jax.tree.leaves(grads[0])))
  assert norm > 0 and diff / norm < 2e-2


def test_idle_domains_are_bit_identical_and_non_finite_steps_change_nothing(data_dir):
  config = smoke(data_dir)
  mesh = train.make_mesh(1)
  specs, _, state, step = _state_and_step(config, mesh)
  lr = (jnp.float32(1e-2), jnp.float32(1e-2))
  # Train prostate once so its Adam moments are non-zero, then train heart only.
  state, _ = step(state, _batch(config, mesh, 1, specs), *lr)
  before = jax.tree.map(np.asarray, state)
  for i in (0, 2, 4):
    state, out = step(state, _batch(config, mesh, i, specs), *lr)
    assert bool(out["finite"])
  after = jax.tree.map(np.asarray, state)
  assert_trees_equal(before["params"]["domains"]["prostate"],
                     after["params"]["domains"]["prostate"])
  assert_trees_equal(before["opt"]["domains"]["prostate"], after["opt"]["domains"]["prostate"])
  assert all(not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(before["params"]["domains"]["heart"]),
      jax.tree.leaves(after["params"]["domains"]["heart"])))
  assert any(not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(before["params"]["shared"]), jax.tree.leaves(after["params"]["shared"])))
  # A NaN in the input: loss not finite, nothing moves, step count unchanged.
  batch = _batch(config, mesh, 0, specs)
  batch["image"] = batch["image"].at[0, 0, 0, 0, 0].set(jnp.nan)
  state, out = step(state, batch, *lr)
  assert not bool(out["finite"])
  assert_trees_equal(after, jax.tree.map(np.asarray, state))


def test_official_domain_updates_move_idle_domains_with_scaled_kernels(data_dir):
  # train.domain_updates=official (the official code's one Adam) through the
  # real train step, with the scale-aware kernel updates on: after one step on
  # prostate, steps on heart still move prostate's weights (momentum).
  config = smoke(data_dir, **{"train.domain_updates": "official",
                              "train.update_scaling": "param_rms"})
  mesh = train.make_mesh(1)
  specs, _, state, step = _state_and_step(config, mesh)
  lr = (jnp.float32(0.3), jnp.float32(0.3))
  state, _ = step(state, _batch(config, mesh, 1, specs), *lr)
  before = jax.tree.map(np.asarray, state["params"]["domains"]["prostate"])
  state, out = step(state, _batch(config, mesh, 0, specs), *lr)
  assert bool(out["finite"])
  moved = [not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(before), jax.tree.leaves(state["params"]["domains"]["prostate"]))]
  assert all(moved)


def test_frozen_shared_weights_have_no_optimizer_state_and_do_not_move(data_dir):
  config = smoke(data_dir, **{"train.freeze_shared": True})
  mesh = train.make_mesh(1)
  specs, _, state, step = _state_and_step(config, mesh)
  assert state["opt"]["shared"] is None
  shared = jax.tree.map(np.asarray, state["params"]["shared"])
  state, _ = step(state, _batch(config, mesh, 0, specs), jnp.float32(1e-2), jnp.float32(1e-2))
  assert_trees_equal(shared, state["params"]["shared"])


# -- whole runs ---------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir, cache_dir):
  """An uninterrupted smoke run on 8 devices."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  proc = run_cli(workdir, data_dir, cache_dir)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.slow
def test_smoke_run_writes_summary_checkpoints_and_logs(reference_run):
  import json  # pylint: disable=g-import-not-at-top
  workdir, proc = reference_run
  summary = json.load(open(os.path.join(workdir, "eval", "summary.json")))
  assert summary["step"] == 6 and summary["mode"] == "separable"
  assert set(summary["domains"]) == {"heart", "prostate"}
  for d in summary["domains"].values():
    assert 0.0 <= d["mean_dice"] <= 1.0 and d["cases"] == 2
    assert set(d) >= {"dice", "mean_dice", "hd95_mm", "cases", "threshold_baseline_dice"}
  assert summary["params"]["total"] > 0 and summary["train_seconds"] > 0
  assert summary["peak_rss_mb"] > 100 and isinstance(summary["huge_pages"], bool)
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps[-1] == 6 and len(steps) <= 2
  assert "compiled the train step" in proc.stdout


@pytest.mark.slow
def test_sigkill_then_rerun_ends_with_the_same_parameters(reference_run, tmp_path, data_dir,
                                                          cache_dir):
  ref_dir, _ = reference_run
  config = smoke(data_dir)
  workdir = str(tmp_path / "killed")
  p = run_cli(workdir, data_dir, cache_dir, "--config.train.steps=6", wait=False)
  ckpt = os.path.join(workdir, "checkpoints", "2")
  deadline = time.time() + 300
  while not os.path.exists(ckpt) and time.time() < deadline and p.poll() is None:
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  proc = run_cli(workdir, data_dir, cache_dir)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert "resumed from" in proc.stdout
  step_ref, ref = final_params(config, ref_dir)
  step_new, new = final_params(config, workdir)
  assert step_ref == step_new == 6
  assert_trees_equal(ref, new)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, data_dir, cache_dir):
  workdir = str(tmp_path / "term")
  p = run_cli(workdir, data_dir, cache_dir, "--config.train.steps=400",
              "--config.train.checkpoint_every=1000", wait=False)
  deadline = time.time() + 300
  out = ""
  while time.time() < deadline:
    line = p.stdout.readline()
    out += line
    if line.startswith("step 2/") or not line:
      break
  p.send_signal(signal.SIGTERM)
  rest, _ = p.communicate(timeout=300)
  out += rest
  assert p.returncode == 0, out[-3000:]
  assert "SIGTERM: saved checkpoint at step" in out
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert steps and 2 <= max(steps) < 400


@pytest.mark.slow
def test_eight_device_checkpoint_restores_and_resumes_on_one_device(reference_run, tmp_path,
                                                                    data_dir, cache_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "one")
  shutil.copytree(ref_dir, workdir)
  proc = run_cli(workdir, data_dir, cache_dir, "--config.train.steps=8",
                 "--config.train.num_devices=1")
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert "resumed from" in proc.stdout and "step 8/8" in proc.stdout
  proc = run_cli(workdir, data_dir, cache_dir, "--mode=evaluate",
                 env={"JAX_NUM_CPU_DEVICES": "1"})
  assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.slow
def test_two_process_distributed_run_agrees_with_one_process(tmp_path, tmp_path_factory,
                                                             data_dir, cache_dir):
  config = smoke(data_dir)
  single = str(tmp_path / "single")
  # Two data shards in one process = one shard in each of two processes.
  proc = run_cli(single, data_dir, cache_dir, "--config.train.steps=2",
                 "--config.data.num_shards=2", env={"JAX_NUM_CPU_DEVICES": "2"})
  assert proc.returncode == 0, proc.stdout[-3000:]
  multi = smoke_workdir.two_process_run(tmp_path_factory)  # 2 steps, 2 processes
  _, a = final_params(config, single)
  _, b = final_params(config, multi)
  assert_trees_equal(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--config.data.tasks=heart,kidney"], "Unknown domain 'kidney'"),
    (["--config.data.patch_size=(16,14,16)"], "not divisible by 4"),
    (["--config.model.features_root=8"], "another architecture"),
])
def test_bad_configuration_stops_before_any_work(reference_run, tmp_path, data_dir, cache_dir,
                                                 args, message):
  import shutil  # pylint: disable=g-import-not-at-top
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "w")
  shutil.copytree(ref_dir, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  proc = run_cli(workdir, data_dir, cache_dir, *args)
  assert proc.returncode != 0
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


@pytest.mark.slow
def test_msd_preset_without_manual_dir_is_a_clear_error(tmp_path):
  proc = smoke_workdir.cli("--config=experiments/five_domain.py:msd", f"--workdir={tmp_path}",
                           timeout=300)
  assert proc.returncode != 0
  assert "--config.data.manual_dir" in proc.stderr and "Traceback" not in proc.stderr


def test_gradient_accumulation_matches_one_big_batch(data_dir):
  results = []
  for accum in (1, 2):
    config = smoke(data_dir, **{"train.grad_accum": accum, "train.loss": "ce"})
    mesh = train.make_mesh(1)
    specs, _, state, step = _state_and_step(config, mesh)
    state, out = step(state, _batch(config, mesh, 1, specs), jnp.float32(1e-3), jnp.float32(1e-3))
    results.append((float(out["loss"]), jax.tree.map(np.asarray, state["params"])))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  # Adam's first step moves every weight by ~lr·sign(grad): weights whose
  # gradient is ~0 (biases before a norm) may flip sign on rounding; the rest
  # must agree.
  a = np.concatenate([x.ravel() for x in jax.tree.leaves(results[0][1])])
  b = np.concatenate([x.ravel() for x in jax.tree.leaves(results[1][1])])
  assert np.max(np.abs(a - b)) <= 2.1e-3
  assert np.mean(np.abs(a - b) < 1e-5) > 0.99
