"""Faults: SIGKILL at several points, unreadable checkpoints, disk full, NaN; determinism.

Every run here is the real command line on one CPU device with the `smoke`
preset, sharing the dataset and the JAX compilation cache of the trained smoke
workdir (tests/smoke_workdir.py), whose 2-step run is also the uninterrupted
reference: batches are a pure function of (seed, step), so any run of 2 steps
must end with its parameters, bit for bit. RELIABILITY.md lists what each test
shows.
"""

import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest

import smoke_workdir
from u2net_jax.train import checkpoint as ckpt_lib
from u2net_jax import config_utils
from u2net_jax.train import train
from u2net_jax.errors import CheckpointError

# End to end (trains or runs run.py): `pytest -m 'not slow'` skips the module.
pytestmark = pytest.mark.slow

ROOT = smoke_workdir.ROOT
STEPS = 2
ARGS = ("--config=experiments/five_domain.py:smoke", f"--config.train.steps={STEPS}",
        "--config.train.checkpoint_every=1", "--config.eval.max_cases=1")

# Runs run.py with one fault injected (U2NET_FAULT), then holds the process
# at that point (printing "FAULT ...") until the test SIGKILLs it:
#   commit:S  inside Orbax's async save of step S: its files are written to
#             S.orbax-checkpoint-tmp but the folder is not yet renamed to S;
#   eval      in the final evaluation, after the last checkpoint was saved;
#   nan:S     no hold: the training batch of step S gets a NaN voxel.
# U2NET_MAX_FILE_BYTES: no file may grow past this size (RLIMIT_FSIZE; Python
# ignores SIGXFSZ, so the write fails with EFBIG like one on a full disk).
WRAPPER = r"""
import asyncio, os, resource, runpy, sys, time
kind, _, arg = os.environ.get("U2NET_FAULT", "").partition(":")
limit = int(os.environ.get("U2NET_MAX_FILE_BYTES", "0"))
if limit:
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def hold(what):
  print("FAULT " + what, flush=True)
  time.sleep(3600)

if kind == "commit":
  from orbax.checkpoint._src.path import atomicity
  cls = atomicity.AtomicRenameTemporaryPath
  original = cls.finalize
  async def finalize(self):
    final = self.get_final()
    if final.name == arg and final.parent.name == "checkpoints":
      print(f"FAULT committing {final}", flush=True)
      await asyncio.sleep(3600)
    return await original(self)
  cls.finalize = finalize
elif kind == "eval":
  from u2net_jax.train import train
  train.run_evaluation = lambda *a, **k: hold("final evaluation")
elif kind == "nan":
  from u2net_jax.data import pipeline
  original = pipeline.PatchSampler.iterate
  def iterate(self, start, *a, **k):
    for step, batch in enumerate(original(self, start, *a, **k), start):
      if step == int(arg):
        batch = dict(batch, image=batch["image"].copy())
        batch["image"][0, 0, 0, 0, 0] = float("nan")
      yield batch
  pipeline.PatchSampler.iterate = iterate
sys.argv = ["run.py"] + sys.argv[1:]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """(reference workdir, TFDS data_dir, compilation cache) of the shared smoke run."""
  workdir, data_dir = smoke_workdir.trained(tmp_path_factory)
  return workdir, data_dir, os.environ["JAX_COMPILATION_CACHE_DIR"]  # conftest.py's


def command(smoke, workdir, *args, fault=None, mode_args=None, max_file_bytes=0):
  """(argv after `python`, extra environment) of run.py, through WRAPPER with a fault."""
  _, data_dir, cache = smoke
  env = dict(JAX_NUM_CPU_DEVICES="1", JAX_COMPILATION_CACHE_DIR=cache,
             U2NET_FAULT=fault or "", U2NET_MAX_FILE_BYTES=str(max_file_bytes))
  head = ["-c", WRAPPER] if fault or max_file_bytes else ["run.py"]
  flags = list(mode_args) if mode_args is not None else [
      *ARGS, f"--config.data.data_dir={data_dir}"]
  return head + [f"--workdir={workdir}", *flags, *args], env


def run(smoke, workdir, *args, **kw):
  argv, env = command(smoke, workdir, *args, **kw)
  return smoke_workdir.run(argv, env=env)


def kill_at(smoke, workdir, fault) -> str:
  """Runs training until the fault point, SIGKILLs it there; returns its output."""
  argv, env = command(smoke, workdir, fault=fault)
  p = smoke_workdir.run(argv, env=env, wait=False)
  try:
    out, _ = smoke_workdir.read_until(p, "FAULT", 600)
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
  assert "FAULT" in out, out[-3000:]
  return out


def resumed_step(out: str) -> int:
  m = re.search(r"^resumed from \S+ step (\d+)$", out, re.M)
  assert m, out[-3000:]
  return int(m.group(1))


def steps_on_disk(workdir, sub=""):
  d = os.path.join(workdir, "checkpoints", sub)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit())


def params_of(workdir, which):
  config = config_utils.load_config(workdir)
  restored = train.restore_params(config, workdir, which=which, needs_data=False)
  params, step = restored.params, restored.step
  return step, jax.tree.map(np.asarray, params)


def assert_same(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def truncate_data(step_dir):
  """Every tensorstore data file of the step cut to half its length."""
  for base, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(base) == "d":
      for f in files:
        path = os.path.join(base, f)
        with open(path, "rb") as fh:
          blob = fh.read()
        with open(path, "wb") as fh:
          fh.write(blob[:len(blob) // 2])


def empty_files(step_dir):
  """Every file of the step zero bytes long (a disk that filled up)."""
  for base, _, files in os.walk(step_dir):
    for f in files:
      open(os.path.join(base, f), "wb").close()


def garbage_meta(step_dir):
  with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
    f.write("{not json")


def emptied_folder(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


def flipped_bytes(step_dir):
  """64 bytes inverted in the middle of every data file (bit rot)."""
  for base, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(base) == "d":
      for f in files:
        path = os.path.join(base, f)
        with open(path, "r+b") as fh:
          blob = bytearray(fh.read())
          mid = len(blob) // 2
          blob[mid:mid + 64] = bytes(b ^ 0xFF for b in blob[mid:mid + 64])
          fh.seek(0)
          fh.write(blob)


# -- SIGKILL at several points, then an unreadable latest checkpoint ------------

@pytest.fixture(scope="module")
def interrupted(smoke, tmp_path_factory):
  """One workdir through a sequence of faults; outputs of each run by name.

  1. SIGKILL inside the async save of step 2 (files written, folder not yet
     committed). 2. The rerun resumes from step 1; SIGKILL in the final
     evaluation (step 2 saved). 3. The latest checkpoint (2) is truncated;
     the rerun warns, resumes from step 1 and finishes.
  """
  workdir = str(tmp_path_factory.mktemp("interrupted") / "w")
  outs = {"commit": kill_at(smoke, workdir, "commit:2")}
  outs["tmp_after_commit_kill"] = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  outs["eval"] = kill_at(smoke, workdir, "eval")
  outs["steps_after_eval_kill"] = steps_on_disk(workdir)
  truncate_data(os.path.join(workdir, "checkpoints", str(STEPS)))
  proc = run(smoke, workdir)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  outs["final"] = proc
  return workdir, outs


def test_sigkill_during_async_save_resumes_from_the_previous_checkpoint(interrupted):
  _, outs = interrupted
  # Step 2's folder was never committed: only its temporary folder exists.
  assert "1" in outs["tmp_after_commit_kill"] and "2" not in outs["tmp_after_commit_kill"]
  assert any(n.startswith("2.orbax-checkpoint-tmp") for n in outs["tmp_after_commit_kill"])
  assert resumed_step(outs["eval"]) == 1


def test_sigkill_in_final_evaluation_keeps_the_last_checkpoint(interrupted):
  _, outs = interrupted
  assert outs["steps_after_eval_kill"] == [1, 2]


def test_truncated_latest_checkpoint_warns_and_resumes_from_the_previous(interrupted):
  workdir, outs = interrupted
  final = outs["final"]
  assert f"checkpoint {STEPS} in" in final.stderr and "is unreadable" in final.stderr
  assert "Traceback" not in final.stderr
  assert resumed_step(final.stdout) == STEPS - 1
  # The unreadable folder was moved aside and step 2 written again.
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert f"{STEPS}.unreadable" in names and steps_on_disk(workdir) == [1, 2]


def test_interrupted_run_ends_with_the_uninterrupted_parameters(smoke, interrupted):
  ref_dir = smoke[0]
  step_ref, ref = params_of(ref_dir, "latest")
  step_new, new = params_of(interrupted[0], "latest")
  assert step_ref == step_new == STEPS
  assert_same(ref, new)


# -- unreadable checkpoints: every restore path ---------------------------------

@pytest.fixture
def finished(interrupted, tmp_path):
  """A copy of the interrupted workdir once it finished: checkpoints 1, 2 and best 2."""
  workdir = str(tmp_path / "w")
  shutil.copytree(interrupted[0], workdir)
  assert steps_on_disk(workdir) == [1, 2] and steps_on_disk(workdir, "best") == [2]
  return workdir


@pytest.mark.parametrize("corrupt", [truncate_data, empty_files, garbage_meta, emptied_folder,
                                     flipped_bytes])
def test_unreadable_latest_checkpoint_falls_back_with_a_warning(finished, corrupt, caplog):
  corrupt(os.path.join(finished, "checkpoints", "2"))
  step, _ = params_of(finished, which="latest")
  assert step == 1
  assert "checkpoint 2 in" in caplog.text and "unreadable" in caplog.text


def test_unreadable_best_falls_back_to_the_latest_then_to_older(finished, caplog):
  truncate_data(os.path.join(finished, "checkpoints", "best", "2"))
  step, best_fallback = params_of(finished, "best")  # as evaluate/predict/export
  assert step == 2 and "no readable best checkpoint" in caplog.text
  _, latest = params_of(finished, which="latest")
  assert_same(best_fallback, latest)
  truncate_data(os.path.join(finished, "checkpoints", "2"))
  assert params_of(finished, "best")[0] == 1


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(finished, monkeypatch):
  for sub in ("1", "2", os.path.join("best", "2")):
    empty_files(os.path.join(finished, "checkpoints", sub))
  with pytest.raises(CheckpointError, match="No readable checkpoint in .*checkpoints"):
    params_of(finished, "best")
  # Training refuses too, before writing anything.
  config = config_utils.load_config(finished)
  monkeypatch.setattr(train, "_enable_compilation_cache", lambda _: None)  # process-wide
  with pytest.raises(CheckpointError, match="No readable checkpoint"):
    train.train_and_evaluate(config, finished)


class _Restored(Exception):
  pass


@pytest.mark.parametrize("mode", ["evaluate", "predict", "export"])
def test_evaluate_predict_export_restore_the_previous_good_checkpoint(finished, mode,
                                                                      monkeypatch, caplog):
  """Each mode's restore (train.restore_params, best then latest) on a corrupted workdir.

  The run stops right after the restore: what follows does not depend on it.
  """
  from u2net_jax.infer import export, predict  # pylint: disable=g-import-not-at-top
  # The best folder does not even open (its metrics file is empty); step 2 is truncated.
  empty_files(os.path.join(finished, "checkpoints", "best", "2"))
  truncate_data(os.path.join(finished, "checkpoints", "2"))
  real = train.restore_params

  def restore_then_stop(*a, **k):
    raise _Restored(real(*a, **k).step)

  monkeypatch.setattr(train, "restore_params", restore_then_stop)
  config = config_utils.load_config(finished)
  with pytest.raises(_Restored) as restored:
    if mode == "evaluate":
      train.evaluate_workdir(config, finished)
    elif mode == "predict":
      predict.from_workdir(config, finished, "heart", log=lambda *_: None)
    else:
      export.run(config, finished, domain="heart", log=lambda *_: None)
  assert restored.value.args[0] == 1
  assert "best checkpoints in" in caplog.text and "are unreadable" in caplog.text
  assert "checkpoint 2 in" in caplog.text



# -- write failures and non-finite values ---------------------------------------

def test_unusable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(CheckpointError, match="Cannot use the checkpoint folder .*file"):
    ckpt_lib.Checkpoints(str(blocker / "w"))


def test_non_finite_state_is_never_written(tmp_path):
  ckpts = ckpt_lib.Checkpoints(str(tmp_path), async_save=False)
  good = {"w": np.ones(3, np.float32)}
  ckpts.save(1, good, {"step": 1})
  bad = {"w": np.array([1.0, np.nan, 0.0], np.float32), "n": np.zeros(2, np.int32)}
  with pytest.raises(CheckpointError, match=r"Refusing to save step 2.*\['w'\].*\[1\] are intact"):
    ckpts.save(2, bad, {"step": 2})
  with pytest.raises(CheckpointError, match="Refusing"):
    ckpts.save_best(2, bad, {"step": 2}, 0.5)
  assert ckpts.steps() == [1]
  ckpts.close()


def only_step(workdir, step, dst):
  """A copy of `workdir` whose only checkpoint is `step` (to restore that step)."""
  shutil.copytree(workdir, dst, ignore=shutil.ignore_patterns("export", "jax_cache"))
  for name in os.listdir(os.path.join(dst, "checkpoints")):
    if name != str(step):
      shutil.rmtree(os.path.join(dst, "checkpoints", name))
  return str(dst)


def test_nan_loss_stops_with_ids_and_fresh_runs_agree_bit_for_bit(smoke, interrupted, tmp_path):
  """A fresh run whose step 1 batch holds a NaN: it stops there, checkpoint 1 stays good.

  Its checkpoint 1 also equals, bit for bit, the one the first interrupted run
  wrote from its own fresh start: same seed, same device count, two processes.
  """
  workdir = str(tmp_path / "nan")
  proc = run(smoke, workdir, fault="nan:1")
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert proc.stderr.count("\n") == 1, proc.stderr[-3000:]
  assert re.fullmatch(r"error: non-finite loss/gradient at step 1, domain 'prostate', cases "
                      r"\['prostate_\d+'.*\]; the state was left unchanged and not checkpointed "
                      r"\(--config.train.nan_policy=skip skips such steps\)\.\n", proc.stderr)
  assert steps_on_disk(workdir) == [1]
  step, nan_run = params_of(workdir, "latest")
  step_ref, first_run = params_of(only_step(interrupted[0], 1, tmp_path / "first"), "latest")
  assert step == step_ref == 1
  assert_same(nan_run, first_run)


def test_skipped_nan_step_then_disk_full_keeps_earlier_checkpoints(smoke, finished):
  """nan_policy=skip goes on past the NaN step; the final save then fails (file size limit)."""
  before = params_of(finished, "latest")[1]
  # Checkpoint files are larger than 100 kB; logs and metrics stay below it.
  proc = run(smoke, finished, "--config.train.steps=3", "--config.train.nan_policy=skip",
             fault="nan:2", max_file_bytes=100_000)
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "warning: non-finite loss/gradient at step 2, domain 'heart'" in proc.stdout
  assert "step skipped" in proc.stdout
  # One line: Orbax's own error logs (with tracebacks) stay off the console.
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
  line = proc.stderr.strip()
  assert line.startswith("error: Could not write checkpoint 3 in") and "File too large" in line
  assert "the checkpoints of steps [1, 2] are intact" in line
  assert steps_on_disk(finished) == [1, 2]
  assert_same(before, params_of(finished, "latest")[1])


def _tiny_state(value):
  return {"w": np.full(4, value, np.float32)}


def _tiny_restore(ckpts, which="latest"):
  abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32)}
  restored = getattr(ckpts, "restore_" + which)(abstract)
  return None if restored is None else (restored[0], float(restored[1]["w"][0]))


def test_unreadable_steps_are_set_aside_by_the_next_save(tmp_path, caplog):
  """A resumed run can write the steps it could not read; nothing is deleted."""
  workdir = str(tmp_path)
  ckpts = ckpt_lib.Checkpoints(workdir, max_to_keep=3, async_save=False)
  for step in (1, 2):
    ckpts.save(step, _tiny_state(step), {"step": step})
  ckpts.save_best(2, _tiny_state(2), {"step": 2}, 0.5)
  # A NaN state written behind the project's back counts as unreadable too.
  ckpts.latest.save(3, args=ckpts._args(_tiny_state(np.nan), {"step": 3}))  # pylint: disable=protected-access
  ckpts.close()
  empty_files(os.path.join(workdir, "checkpoints", "2"))
  empty_files(os.path.join(workdir, "checkpoints", "best", "2"))
  ckpts = ckpt_lib.Checkpoints(workdir, max_to_keep=3, async_save=False)
  assert _tiny_restore(ckpts, "best") is None and "best checkpoints in" in caplog.text
  assert _tiny_restore(ckpts) == (1, 1.0)
  assert "checkpoint 3 in" in caplog.text and "NaN/inf" in caplog.text
  assert ckpts.steps() == [1]
  ckpts.save(2, _tiny_state(20), {"step": 2})
  ckpts.save_best(2, _tiny_state(20), {"step": 2}, 0.6)
  ckpts.close()
  names = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert names == ["1", "2", "2.unreadable", "3.unreadable", "best", "best.unreadable"], names
  ckpts = ckpt_lib.Checkpoints(workdir, max_to_keep=3, async_save=False)
  assert _tiny_restore(ckpts) == (2, 20.0) and _tiny_restore(ckpts, "best") == (2, 20.0)
  ckpts.close()


# -- interrupted dataset build ---------------------------------------------------

BUILD = r"""
import os, sys, time
from tfds_builders import registry
from tfds_builders.synthetic_organs import synthetic_organs as so
original = so.SyntheticOrgans._generate_examples
def slow(self, examples):
  for i, item in enumerate(original(self, examples)):
    if i == 2:
      print("FAULT building", flush=True)
      time.sleep(3600)
    yield item
so.SyntheticOrgans._generate_examples = slow
config = so.make_config("hippocampus", name="hippocampus_tiny", num_train=3, num_validation=2,
                        shape=(16, 16, 16))
registry.build("synthetic_organs", config, sys.argv[1], overwrite=True)
"""


def test_sigkilled_rebuild_keeps_the_previous_dataset_and_reruns(tmp_path):
  from tfds_builders import registry  # pylint: disable=g-import-not-at-top
  from tfds_builders.synthetic_organs import synthetic_organs  # pylint: disable=g-import-not-at-top
  from u2net_jax.data import datasets  # pylint: disable=g-import-not-at-top
  config = synthetic_organs.make_config("hippocampus", name="hippocampus_tiny", num_train=3,
                                        num_validation=2, shape=(16, 16, 16))
  data_dir = str(tmp_path)
  path = registry.build("synthetic_organs", config, data_dir)
  before = datasets.read_examples(path, "train")
  p = smoke_workdir.run(["-c", BUILD, data_dir], env={"TF_CPP_MIN_LOG_LEVEL": "3"}, wait=False)
  try:
    out, found = smoke_workdir.read_until(p, "FAULT", 300)
    if found:
      # Killed mid-build: the old version is still the one in place and readable.
      after = datasets.read_examples(path, "train")
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
  assert "FAULT" in out, out[-3000:]
  assert [x["case_id"] for x in after] == [x["case_id"] for x in before]
  np.testing.assert_array_equal(after[0]["image"], before[0]["image"])
  # The rerun rebuilds (builds are deterministic); the killed build's temporary
  # folder is left behind, nothing reads it.
  assert [n for n in os.listdir(data_dir) if n.startswith(".tmp-build")]
  path = registry.build("synthetic_organs", config, data_dir, overwrite=True)
  again = datasets.read_examples(path, "train")
  np.testing.assert_array_equal(again[0]["image"], before[0]["image"])
