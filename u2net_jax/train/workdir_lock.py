"""One training run per workdir: an exclusive lock file that names its holder.

`train_and_evaluate` holds `<workdir>/train.lock` (process k > 0 of a
multi-process run: `train.process<k>.lock`, so the processes of one run do not
lock each other out) from its start to its end. The lock is `flock` on the open
file: the OS drops it when the process ends, however it ends (a SIGKILLed
run blocks nothing), and nothing has to be cleaned up. The file holds the
holder's pid, host and start time for the message of the run that is refused.
Reading a workdir (evaluate, predict, export) takes no lock.

`flock` works across hosts on NFS (Linux emulates it with POSIX locks) and
most cluster filesystems; where the filesystem has no locks at all the run
warns and goes on unlocked.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from u2net_jax.errors import U2NetError

LOCK_FILE = "train.lock"


class WorkdirError(U2NetError):
  """The workdir cannot be used for training."""


class WorkdirInUse(WorkdirError):
  """Another process is training in this workdir."""


def lock_name(process_index: int = 0) -> str:
  """The lock file of process `process_index` of a run (process 0: `train.lock`)."""
  return LOCK_FILE if process_index == 0 else f"train.process{process_index}.lock"


def _holder(fd: int) -> str:
  """'pid P on host H, started T' from the lock file's content (best effort)."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 1 << 16).decode() or "{}")
    return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
  except (OSError, ValueError, KeyError, TypeError):
    # It locked the file an instant ago and has not written it yet.
    return "a process that is just starting"


class WorkdirLock:
  """`with WorkdirLock(workdir):` — the exclusive training lock of `workdir`."""

  def __init__(self, workdir: str, process_index: int = 0, *, log=print):
    self.path = os.path.join(os.path.abspath(workdir), lock_name(process_index))
    self._log = log
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock and writes this process's identity into it.

    Raises:
      WorkdirInUse naming the holder when another process has it; WorkdirError
      when the lock file cannot be created (a path through a file, no permission).
    """
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      # O_CLOEXEC (Python's default): a program this run starts never inherits the lock.
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"Cannot use the workdir {os.path.dirname(self.path)}: "
                         f"{e.strerror} ({e.filename}).") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        holder = _holder(fd)
        os.close(fd)
        workdir = os.path.dirname(self.path)
        raise WorkdirInUse(
            f"{workdir} is in use by another training run: {holder} (lock file "
            f"{self.path}). Wait for it to end, stop it, or train in another --workdir; "
            "the lock goes away by itself when that process ends, even if it is "
            "killed.") from None
      os.close(fd)
      # ENOLCK, EOPNOTSUPP, ENOSYS: a filesystem without locks.
      self._log(f"warning: cannot lock {self.path} ({e.strerror}); training without the "
                "workdir lock: make sure no other run uses this workdir.")
      return self
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    """Drops the lock; the file stays (removing it would race with a run taking it)."""
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
