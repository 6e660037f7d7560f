"""The tests' one command-line runner, and the session's shared smoke data and workdir.

`run(argv)` runs `python ARGV` from the project root on CPU (every end-to-end
test goes through it; those tests are marked `slow`); `cli(*args)` is
`run(["run.py", *args])`. One trained `smoke` workdir is shared by the
predict, export, notebook, reliability and extend tests (read only; copy it
to change it): the first module that asks trains it (the
real command line, 2 steps: ~45 s on 2 cores); later modules of the same
pytest session find it under the session's base temp folder and reuse it.
`two_process_run` is the same for an uninterrupted 2-process run (the
distributed and the cluster-fault tests).

With pytest-xdist every worker is its own process: the shared data and runs
live in the folder above the workers' base temp folders (`session_root`), and
the first worker that needs a run makes it under a file lock while the others
wait (dataset builds take their own lock: tfds_builders/common.py).
"""

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv, *, env=None, timeout=600, wait=True, cwd=ROOT):
  """Runs `python ARGV` (a script and its flags, `-c CODE`, `-m MODULE`) on CPU.

  The environment is this process's (conftest.py's compilation cache and
  device count included) with JAX_PLATFORMS=cpu and `env` on top.
  Returns the CompletedProcess (stdout, stderr as text), or with wait=False
  the running Popen (stdout and stderr merged into `stdout`, text).
  """
  e = dict(os.environ, JAX_PLATFORMS="cpu")
  e.update(env or {})
  cmd = [sys.executable, *argv]
  if not wait:
    return subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def cli(*args, **kw):
  """Runs `python run.py ARGS` (see `run`)."""
  return run(["run.py", *args], **kw)


def session_root(tmp_path_factory):
  """The folder every process of this pytest session shares (xdist: above the workers')."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def made_once(root):
  """`with made_once(root) as todo:` — todo is True for the one process that must make it.

  The others wait on the lock until it is made (`root/DONE`), then find it done.
  """
  root.mkdir(parents=True, exist_ok=True)
  with open(root / ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = root / "DONE"
    yield not done.exists()
    done.write_text("ok")


def data_dir(tmp_path_factory) -> str:
  """The session's TFDS data_dir for smoke-sized synthetic domains (built on first use).

  Every test that trains on `:smoke` sizes reads the same built datasets (a
  dataset's name encodes its sizes, so other sizes are built beside them).
  """
  return str(session_root(tmp_path_factory) / "tfds_smoke")


def trained(tmp_path_factory) -> tuple[str, str]:
  """(workdir, TFDS data_dir) of a trained smoke run (heart + prostate)."""
  root = session_root(tmp_path_factory) / "smoke_predict"
  workdir, data_dir = str(root / "work"), globals()["data_dir"](tmp_path_factory)
  with made_once(root) as todo:
    if not todo:
      return workdir, data_dir
    proc = cli("--config=experiments/five_domain.py:smoke", f"--workdir={workdir}",
               f"--config.data.data_dir={data_dir}", "--config.train.steps=2",
               "--config.train.checkpoint_every=0",
               env={"JAX_NUM_CPU_DEVICES": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir, data_dir


def exported(tmp_path_factory) -> str:
  """The trained smoke workdir (`trained`) after `run.py --mode=export` (every domain).

  Made once per session, like the run itself: two test workers exporting into
  the same workdir at once would replace each other's folders.
  """
  workdir, _ = trained(tmp_path_factory)
  with made_once(session_root(tmp_path_factory) / "smoke_export") as todo:
    if todo:
      proc = cli("--mode=export", f"--workdir={workdir}")
      assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def distributed_flags(port: int, process_id: int, num_processes: int = 2) -> list[str]:
  """run.py flags of process `process_id` of a jax.distributed run on this host."""
  return ["--config.distributed.enabled=True",
          f"--config.distributed.coordinator_address=localhost:{port}",
          f"--config.distributed.num_processes={num_processes}",
          f"--config.distributed.process_id={process_id}"]


def two_process_run(tmp_path_factory) -> str:
  """Workdir of an uninterrupted smoke run of 2 steps by 2 processes × 1 CPU device."""
  root = session_root(tmp_path_factory) / "smoke_two_process"
  workdir = str(root / "work")
  with made_once(root) as todo:
    if not todo:
      return workdir
    port = free_port()
    procs = [cli("--config=experiments/five_domain.py:smoke", f"--workdir={workdir}",
                 f"--config.data.data_dir={data_dir(tmp_path_factory)}",
                 "--config.train.steps=2", *distributed_flags(port, i),
                 env={"JAX_NUM_CPU_DEVICES": "1"}, wait=False) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
  return workdir


def read_until(p, prefix: str, seconds: float) -> tuple[str, bool]:
  """Reads `p`'s stdout until a line starting with `prefix`: (what it printed, found).

  `p` is killed after `seconds` (never hang the suite); it is left running
  when the line is found.
  """
  watchdog = threading.Timer(seconds, p.kill)
  watchdog.start()
  out = ""
  try:
    for line in p.stdout:
      out += line
      if line.startswith(prefix):
        return out, True
  finally:
    watchdog.cancel()
  return out, False
