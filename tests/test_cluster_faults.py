"""A shared cluster's faults: a busy workdir, a lost process, one bad case among many.

* Two trainings in one workdir: the second stops at once naming the first
  (train/workdir_lock.py); a SIGKILLed holder blocks nothing.
* A 2-process run (jax.distributed, gloo) loses a process to SIGKILL: the
  other ends with one `error:` line and exit 2 within seconds
  (train/peers.py); rerunning both ends with the uninterrupted run's
  parameters.
* predict over a folder where one case fails after its header check: the
  others are written, the failed ones named, exit 2 (infer/predict.py).

RELIABILITY.md lists what each test shows and what was measured.
"""

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time

import nibabel as nib
import pytest

import smoke_workdir
from test_predict import _plan, _threshold_predictor, phantom, write_nifti
from test_reliability import assert_same, params_of, steps_on_disk
from u2net_jax.infer import predict
from u2net_jax.train import peers, workdir_lock

ARGS = ("--config=experiments/five_domain.py:smoke", "--config.train.checkpoint_every=1",
        "--config.eval.max_cases=1")

# Runs run.py and holds it (prints "HOLD ...", sleeps) at a point set by U2NET_HOLD:
#   mesh    in train_and_evaluate right after the workdir lock was taken (make_mesh:
#           nothing built or compiled yet);
#   step:S  before training step S+1, once S steps are done (their checkpoints saved).
HOLD = r"""
import os, runpy, sys, time
kind, _, arg = os.environ.get("U2NET_HOLD", "").partition(":")

def hold(what):
  print(f"HOLD {what} pid {os.getpid()}", flush=True)
  time.sleep(3600)

if kind == "mesh":
  from u2net_jax.train import train
  train.make_mesh = lambda *a, **k: hold("after the lock")
elif kind == "step":
  from u2net_jax.train import loop
  original = loop.train_step
  def train_step(run, ls, batch):
    if ls.step == int(arg):
      hold(f"before step {ls.step + 1}")
    return original(run, ls, batch)
  loop.train_step = train_step
sys.argv = ["run.py"] + sys.argv[1:]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """(trained smoke workdir, TFDS data_dir) shared by the session (read only)."""
  return smoke_workdir.trained(tmp_path_factory)


def start(workdir, data_dir, *args, hold="", env=None):
  """run.py training (smoke preset, 1 CPU device) as a Popen; stdout and stderr apart."""
  e = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", U2NET_HOLD=hold,
           **(env or {}))
  head = ["-c", HOLD] if hold else ["run.py"]
  return subprocess.Popen(
      [sys.executable, *head, f"--workdir={workdir}", *ARGS,
       f"--config.data.data_dir={data_dir}", *args],
      cwd=smoke_workdir.ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_hold(p, seconds=300) -> str:
  """Reads `p`'s stdout until its HOLD line; returns what it printed."""
  out, found = smoke_workdir.read_until(p, "HOLD", seconds)
  if not found:
    pytest.fail(f"no HOLD line: {out[-2000:]} {p.stderr.read()[-2000:]}")
  return out


def kill(p):
  p.send_signal(signal.SIGKILL)
  p.wait(timeout=60)


# -- (a) one training per workdir -------------------------------------------------

def test_lock_names_its_holder_and_is_free_once_released(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  # flock conflicts between two opens of the file even within one process.
  with pytest.raises(workdir_lock.WorkdirInUse,
                     match=rf"in use by another training run: pid {os.getpid()} on host "
                           rf"{re.escape(socket.gethostname())}, started \d{{4}}-"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  # Process 1 of a multi-process run has its own lock file.
  with workdir_lock.WorkdirLock(str(tmp_path), process_index=1) as other:
    assert other.path.endswith("train.process1.lock")
  first.release()
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(workdir_lock.WorkdirError, match="Cannot use the workdir .*file"):
    workdir_lock.WorkdirLock(str(blocker / "w")).acquire()


@pytest.mark.slow
def test_second_training_in_a_busy_workdir_stops_naming_the_first(smoke, tmp_path):
  """A held training has the lock; a second one exits 2 before any work; after a SIGKILL, free."""
  _, data_dir = smoke
  workdir = str(tmp_path / "w")
  first = start(workdir, data_dir, hold="mesh")
  try:
    wait_for_hold(first)
    t0 = time.time()
    second = start(workdir, data_dir)
    _, err = second.communicate(timeout=120)
    seconds = time.time() - t0
    assert second.returncode == 2, err[-3000:]
    assert err.count("\n") == 1 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(rf"error: {re.escape(workdir)} is in use by another training run: "
                        rf"pid {first.pid} on host {re.escape(socket.gethostname())}, "
                        r"started \S+ \(lock file \S+/train.lock\)\. .*\n", err), err
    # Nothing built, compiled or written: refused right after the imports.
    assert not os.path.exists(os.path.join(workdir, "checkpoints")), os.listdir(workdir)
    assert seconds < 60, seconds
  finally:
    kill(first)
  # The OS released the killed holder's lock: the next run takes it.
  again = start(workdir, data_dir, hold="mesh")
  try:
    assert "HOLD after the lock" in wait_for_hold(again)
  finally:
    kill(again)


# -- (b) a process of a 2-process run is SIGKILLed ----------------------------------

def two_processes(workdir, data_dir, steps, *, hold_1="", args_0=()):
  """Both processes of a 2-process run (1 CPU device each), process 1 held at `hold_1`."""
  port = smoke_workdir.free_port()
  return [start(workdir, data_dir, f"--config.train.steps={steps}",
                *smoke_workdir.distributed_flags(port, i), *(args_0 if i == 0 else ()),
                hold=hold_1 if i == 1 else "")
          for i in range(2)]


def kill_running(*procs):
  for p in procs:
    if p.poll() is None:
      kill(p)


def error_line(p, err: str) -> str:
  """The last stderr line of `p`, which must have stopped as an expected error (exit 2)."""
  assert p.returncode == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  return err.strip().splitlines()[-1]


@pytest.mark.slow
def test_sigkilled_process_stops_the_other_and_both_rerun_to_the_same_parameters(
    smoke, tmp_path, tmp_path_factory):
  """Process 1 is held before step 2 and SIGKILLed; process 0, in step 2, stops at once.

  The reference is the session's uninterrupted 2-process run of 2 steps
  (checkpoints and evaluation cases do not change the parameters).
  """
  _, data_dir = smoke
  reference = smoke_workdir.two_process_run(tmp_path_factory)
  workdir = str(tmp_path / "w")
  p0, p1 = two_processes(workdir, data_dir, 2, hold_1="step:1")
  try:
    wait_for_hold(p1)
    # Process 0 is in step 2, waiting for process 1 in its first collective.
    deadline = time.time() + 60
    while steps_on_disk(workdir) != [1] and time.time() < deadline:
      time.sleep(0.2)
    assert steps_on_disk(workdir) == [1]
    kill(p1)
    t0 = time.time()
    _, err = p0.communicate(timeout=120)
    seconds = time.time() - t0
  finally:
    kill_running(p0, p1)
  line = error_line(p0, err)
  assert re.fullmatch(r"error: process 0 of 2: training step 2 failed in a collective operation "
                      r"\(.*\): another process of this run has stopped \(killed, crashed, or its "
                      r"host unreachable\); the checkpoints of steps \[1\] are intact: restart "
                      r"every process with the same command to resume\.", line), line
  assert seconds < 30, seconds  # the collective fails at once (gloo: connection reset)
  procs = two_processes(workdir, data_dir, 2)
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), [o[0][-2000:] + o[1][-2000:] for o in outs]
  assert re.search(r"^resumed from \S+ step 1$", outs[0][0], re.M), outs[0][0][-2000:]
  _, ref = params_of(reference, "latest")
  step, resumed = params_of(workdir, "latest")
  assert step == 2
  assert_same(ref, resumed)


@pytest.mark.slow
def test_hung_process_ends_the_other_at_the_step_bound(smoke, tmp_path):
  """Process 1 hangs (alive, heartbeats going) before step 2: process 0's watchdog ends it.

  Then JAX ends process 1 too: its coordination service (in process 0) is gone.
  """
  _, data_dir = smoke
  workdir = str(tmp_path / "w")
  p0, p1 = two_processes(workdir, data_dir, 2, hold_1="step:1",
                         args_0=["--config.distributed.step_timeout_seconds=5"])
  try:
    wait_for_hold(p1)
    t0 = time.time()
    _, err = p0.communicate(timeout=120)
    seconds = time.time() - t0
    p1.wait(timeout=60)
  finally:
    kill_running(p0, p1)
  line = error_line(p0, err)
  assert re.fullmatch(r"error: process 0 of 2: training step 2 has not finished after 5 s: "
                      r"another process of this run stopped responding \(hung, killed, or its "
                      r"host unreachable\); the checkpoints of steps \[1\] are intact: .*", line)
  assert seconds < 5 + 20, seconds  # 5 s from the start of step 2, not from the hold
  assert p1.returncode != 0  # JAX's fatal error (SIGABRT): the service is gone


def test_watchdog_ends_a_step_that_outlasts_its_bound(tmp_path):
  (tmp_path / "3").mkdir()
  (tmp_path / "3.orbax-checkpoint-tmp-1").mkdir()
  fired = []
  dog = peers.Watchdog(0.3, str(tmp_path), on_timeout=fired.append)
  try:
    with dog.guard("training step 4"):
      time.sleep(0.05)  # within the bound
    time.sleep(0.5)  # nothing guarded: nothing fires
    assert not fired
    with dog.guard("training step 5"):
      time.sleep(0.8)
    assert len(fired) == 1
    assert re.fullmatch(r"process 0 of 1: training step 5 has not finished after 0.3 s: another "
                        r"process of this run stopped responding .*; the checkpoints of steps "
                        r"\[3\] are intact: restart every process .*", fired[0]), fired[0]
  finally:
    dog.close()
  off = peers.Watchdog(0, str(tmp_path), on_timeout=fired.append)
  with off.guard("training step 6"):
    time.sleep(0.05)
  off.close()
  assert len(fired) == 1


# -- (c) predict: one case fails after its header check -----------------------------

def truncated_nifti(path, data):
  """An uncompressed NIfTI whose header is whole and whose voxel data is cut short."""
  write_nifti(path, data)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - data.nbytes // 2)
  return str(path)


def test_a_failing_case_is_reported_and_the_others_are_written(tmp_path, monkeypatch):
  """Truncated voxel data (read after the header check) and a failure in the sliding window."""
  folder = tmp_path / "in"
  folder.mkdir()
  for name in ("a", "c", "e"):
    write_nifti(folder / f"{name}.nii.gz", phantom(seed=ord(name)))
  truncated_nifti(folder / "b.nii", phantom())
  write_nifti(folder / "d.nii.gz", phantom(shape=(31, 26, 20)))  # fails mid-window
  real = predict.segment_prepared

  def segment_failing_in_d(pre, predictor, **kw):
    if tuple(pre["original_shape"]) == (20, 26, 31):  # case d, (D, H, W)
      batches = []

      def fn(x):
        batches.append(len(x))
        if len(batches) == 3:
          raise MemoryError("injected: out of memory in the sliding window")
        return predictor.fn(x)
      predictor = dataclasses.replace(predictor, fn=fn)
    return real(pre, predictor, **kw)

  monkeypatch.setattr(predict, "segment_prepared", segment_failing_in_d)
  plan = _plan((2.5, 1.7, 0.9))
  cases, _, paths = predict.plan_cases(str(folder), str(tmp_path / "out"), plan)
  logged = []
  with pytest.raises(predict.CasesFailed) as failed:
    predict.predict_cases(_threshold_predictor(plan), cases, paths, postprocess_mode="off",
                          progress=True, log=logged.append)
  # No partial file of b or d (outputs are written atomically).
  assert sorted(os.listdir(tmp_path / "out")) == ["a.nii.gz", "c.nii.gz", "e.nii.gz"]
  assert [d["case_id"] for d in failed.value.done] == ["a", "c", "e"]
  assert [c for c, _ in failed.value.failed] == ["b", "d"]
  message = str(failed.value)
  assert message.startswith("2 of 5 case(s) failed, the other 3 were written: b: ")
  assert "b.nii: header claims shape" in message and "truncated file" in message
  assert message.endswith("; d: MemoryError: injected: out of memory in the sliding window")
  assert [line.split(" (")[0] for line in logged if line.startswith("warning")] == [
      "warning: case b failed", "warning: case d failed"]


@pytest.mark.slow
def test_cli_predict_over_a_folder_with_a_truncated_case_writes_the_others(smoke, tmp_path):
  workdir, _ = smoke
  folder = tmp_path / "in"
  folder.mkdir()
  write_nifti(folder / "a.nii.gz", phantom(seed=1))
  truncated_nifti(folder / "b.nii", phantom(seed=2))
  write_nifti(folder / "c.nii.gz", phantom(seed=3))
  out = tmp_path / "out"
  before = sorted(os.listdir(workdir))
  proc = smoke_workdir.cli("--mode=predict", f"--workdir={workdir}", "--domain=heart",
                           f"--input={folder}", f"--output={out}", "--postprocess=off",
                           "--noprogress")
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert sorted(os.listdir(out)) == ["a.nii.gz", "c.nii.gz"]
  assert nib.load(str(out / "a.nii.gz")).shape == (30, 26, 20)
  line = proc.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"error: 1 of 3 case\(s\) failed, the other 2 were written: b: \S+/b\.nii: "
                      r"header claims shape .* truncated file or corrupt header\.", line), line
  assert "warning: case b failed" in proc.stdout and "wrote " in proc.stdout
  assert sorted(os.listdir(workdir)) == before  # read only

