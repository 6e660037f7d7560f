"""Multi-process runs: when one process dies or hangs, the others stop within a bounded time.

What JAX 0.10 does on CPU (gloo collectives) when one process of a run is
SIGKILLed, measured (RELIABILITY.md):
  * the others' next collective fails at once ("Gloo AllGather failed: …
    Connection reset by peer"), as a Python exception in the step;
  * a process that then exits normally waits at JAX's shutdown barrier (an
    exit hook) for every process: for the dead one, until the coordination
    service misses its heartbeats (`heartbeat_timeout_seconds`, 100 s by
    default), and then aborts (SIGABRT, C++ stack trace);
  * when process 0 (the coordination service) dies, JAX itself ends every
    other process within a second: a fatal log "Terminating process because
    the JAX distributed service detected fatal errors …" and SIGABRT. Python
    does not run again there (jaxlib's hook for that error, the client's
    `missed_heartbeat_callback`, fails with std::bad_cast in this version).

So here: an exception of a step in a multi-process run becomes `PeerLost`
(one `error:` line naming this process), `exit_process` ends a multi-process
run without JAX's shutdown barrier, and a `Watchdog` ends this process when a
step or save takes longer than a bound — for a process that hangs without
dying (stuck I/O, a GPU collective that never returns), whose heartbeats go on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import jax

from u2net_jax.errors import U2NetError

# Until u2net_jax/config.py's DistributedConfig has these keys: JAX's
# heartbeat default, and 30 minutes for one step or save — generous, because a
# step also waits for the slowest process (its evaluation, its save), and a
# false alarm would end a healthy run.
class PeerLost(U2NetError):
  """Another process of a multi-process run stopped; this one cannot go on."""


_exit_lock = threading.Lock()


def exit_process(code: int, message: str | None = None) -> None:
  """Prints `error: message` (once per process) and exits with `code`.

  In a multi-process run with os._exit: JAX's exit hook would wait at a
  shutdown barrier for every process, and one of them may be dead (then it
  waits for the heartbeat timeout and aborts) or stuck in a collective with
  this one. The other processes see this one end and stop too.
  """
  with _exit_lock:  # a second caller (thread) waits here until the process has ended
    if message is not None:
      print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # From another thread (the watchdog), sys.exit would end only that thread.
    if jax.distributed.is_initialized() or threading.current_thread() != threading.main_thread():
      os._exit(code)  # pylint: disable=protected-access
    sys.exit(code)


def _who() -> str:
  return f"process {jax.process_index()} of {jax.process_count()}"


def _steps_on_disk(directory: str) -> list[int]:
  """Committed checkpoint steps, from the folder names (no Orbax: another thread may be in it)."""
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []


def _resume_hint(directory: str) -> str:
  steps = _steps_on_disk(directory)
  kept = f"the checkpoints of steps {steps} are intact" if steps else "no checkpoint yet"
  return f"{kept}: restart every process with the same command to resume."


def collective_failed(error: Exception, what: str, directory: str) -> PeerLost:
  """The `PeerLost` for an exception of `what` (e.g. 'step 3') in a multi-process run."""
  first = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return PeerLost(f"{_who()}: {what} failed in a collective operation ({first[:300]}): another "
                  "process of this run has stopped (killed, crashed, or its host unreachable); "
                  + _resume_hint(directory))


class Watchdog:
  """Ends this process (exit 2, one line) when a guarded operation outlasts `seconds`.

  A daemon thread: the main thread may be blocked in C++ (a collective that
  never returns), where no Python exception can reach it.
  """

  def __init__(self, seconds: float, directory: str, *, on_timeout=None):
    self.seconds = float(seconds)
    self._directory = directory
    self._on_timeout = on_timeout or (lambda message: exit_process(2, message))
    self._cond = threading.Condition()
    self._armed = None  # (what, deadline) while a guarded operation runs
    self._closed = False
    self._thread = None
    if self.seconds > 0:
      self._thread = threading.Thread(target=self._watch, name="u2net-watchdog", daemon=True)
      self._thread.start()

  @contextlib.contextmanager
  def guard(self, what: str):
    """`with dog.guard('step 3'):` — the bound applies to the body."""
    if self._thread is None:
      yield
      return
    with self._cond:
      self._armed = (what, time.monotonic() + self.seconds)
      self._cond.notify()
    try:
      yield
    finally:
      with self._cond:
        self._armed = None

  def _watch(self) -> None:
    with self._cond:
      while not self._closed:
        if self._armed is None:
          self._cond.wait()
          continue
        what, deadline = self._armed
        left = deadline - time.monotonic()
        if left > 0:
          self._cond.wait(left)
          continue
        self._armed = None
        message = (f"{_who()}: {what} has not finished after {self.seconds:g} s: another "
                   "process of this run stopped responding (hung, killed, or its host "
                   "unreachable); " + _resume_hint(self._directory)
                   + " (--config.distributed.step_timeout_seconds sets this bound.)")
        self._on_timeout(message)

  def close(self) -> None:
    with self._cond:
      self._closed = True
      self._cond.notify()
    if self._thread is not None:
      self._thread.join(timeout=5)
