"""The only module that talks to Orbax.

A checkpoint step holds `state` (params, optimizer state: a pytree) and `meta`
(JSON: step, data-iterator state, config, domain names, architecture
fingerprint). `<workdir>/checkpoints/` keeps the latest `max_to_keep` steps
(async saves); `<workdir>/checkpoints/best/` keeps the best by mean
validation Dice. Restoring gives arrays with the *current* mesh's shardings,
so a checkpoint written on 8 devices restores on 1 and vice versa.

Faults (see RELIABILITY.md):
  * A step is listed only once Orbax has renamed its temporary folder, so a
    run killed during a save leaves the previous step as the newest; the
    half-written `<step>.orbax-checkpoint-tmp` folder is replaced when that
    step is saved again.
  * An unreadable checkpoint (truncated, corrupt, emptied) is skipped with a
    warning and the next older one is restored; an unreadable best
    checkpoint falls back to the latest ones. If checkpoints exist but none is
    readable: CheckpointError, never a silent fresh start. The first save of a
    run that skipped unreadable steps moves them aside (`<step>.unreadable`)
    so the resumed run can write those steps again.
  * Any failure to write (disk full, unwritable folder), including one that
    surfaces later from an async save, is a CheckpointError naming the
    folder and the steps that are still intact.
  * A state holding NaN/inf is never written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from u2net_jax.errors import CheckpointError

log = logging.getLogger(__name__)
# Restore fallbacks must reach the console even when the command line turns
# other (Orbax/TFDS) logs down to errors.
log.setLevel(logging.WARNING)

UNREADABLE_SUFFIX = ".unreadable"
CHECKPOINT_DIR = "checkpoints"  # under the workdir
_asyncio_filtered = False


def abstract_like(tree, sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays with `sharding` (restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _short(e: BaseException, limit: int = 300) -> str:
  """First line of an exception's text, at most `limit` characters."""
  text = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return text if len(text) <= limit else text[:limit] + " ..."


def _os_reason(e: BaseException) -> str:
  """'No space left on device'-style reason of a failed write, or ''.

  tensorstore reports OS errors inside a long ValueError text
  (`... [os_error_code='28']`).
  """
  if isinstance(e, OSError) and e.errno:
    return os.strerror(e.errno)
  m = re.search(r"os_error_code='?(\d+)", str(e))
  return os.strerror(int(m.group(1))) if m else ""


def _quiet_closed_loop_noise() -> None:
  """Silences tensorstore reads that finish after a failed restore.

  When one read of a restore fails, Orbax closes its event loop while other
  reads are still in flight; each of those then reports "RuntimeError: Event
  loop is closed" through sys.unraisablehook (hundreds of tracebacks for one
  corrupt checkpoint). Only these reports are dropped.
  """
  global _asyncio_filtered
  if not _asyncio_filtered:
    # The failed reads' asyncio tasks are also reported, with tracebacks, when
    # they are garbage collected ("Task exception was never retrieved").
    logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in record.getMessage())
    _asyncio_filtered = True
  previous = sys.unraisablehook
  if getattr(previous, "_u2net_quiet", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    previous(unraisable)

  hook._u2net_quiet = True
  sys.unraisablehook = hook


def first_non_finite(tree) -> str | None:
  """Path of the first floating leaf of `tree` holding NaN/inf, else None.

  Reads each process's first local copy: the train state is replicated.
  """
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    local = x.addressable_data(0) if isinstance(x, jax.Array) else x
    a = np.asarray(local)
    if jax.dtypes.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
      return jax.tree_util.keystr(path)
  return None


class Checkpoints:
  """Latest-N and best-1 checkpoint managers under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.best_directory = os.path.join(self.directory, "best")
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                        enable_async_checkpointing=async_save)
    self._best_opts = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        best_fn=lambda m: m["mean_dice"], best_mode="max")
    try:
      self.latest = ocp.CheckpointManager(self.directory, options=opts)
    except Exception as e:  # pylint: disable=broad-except — OSError and Orbax's own
      raise CheckpointError(f"Cannot use the checkpoint folder {self.directory} "
                            f"({type(e).__name__}: {_short(e)}); check the --workdir "
                            "path, its permissions and free space.") from None
    # Steps a restore of this instance found unreadable ("best": all of them
    # when the best manager itself cannot read its folder).
    self._unreadable = {"latest": [], "best": []}
    self._restore_errors: list[str] = []
    self._last_save = None
    self.best = self._open_best()

  def _open_best(self):
    """The best-checkpoint manager, or None (warned) if its folder is unreadable.

    Orbax reads every best step's metrics when it opens the folder, so one
    corrupt step makes the whole manager fail to open.
    """
    try:
      return ocp.CheckpointManager(self.best_directory, options=self._best_opts)
    except Exception as e:  # pylint: disable=broad-except
      if not os.path.isdir(self.best_directory):
        raise CheckpointError(f"Cannot use the checkpoint folder {self.best_directory} "
                              f"({type(e).__name__}: {_short(e)}).") from None
      log.warning("best checkpoints in %s are unreadable (%s: %s); using the latest "
                  "checkpoints.", self.best_directory, type(e).__name__, _short(e))
      self._unreadable["best"].append("all")
      self._restore_errors.append(f"{self.best_directory}: {_short(e)}")
      return None

  # -- save ------------------------------------------------------------------

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def _intact(self) -> str:
    try:
      self.latest.reload()
      good = [s for s in self.latest.all_steps() if s not in self._unreadable["latest"]]
    except Exception:  # pylint: disable=broad-except — only for the message
      return "earlier checkpoints are not affected"
    return (f"the checkpoints of steps {sorted(good)} are intact" if good
            else "no earlier checkpoint exists")

  def _write_error(self, what: str, e: Exception) -> CheckpointError:
    reason = _os_reason(e)
    return CheckpointError(
        f"Could not write {what} in {self.directory}: {reason + ' ' if reason else ''}"
        f"({type(e).__name__}: {_short(e, 200)}); "
        f"{self._intact()}. Free disk space or fix the folder's permissions, then rerun "
        "the same command to resume.")

  def _check_finite(self, step: int, state) -> None:
    bad = first_non_finite(state)
    if bad is not None:
      raise CheckpointError(
          f"Refusing to save step {step}: the state holds NaN/inf (first at {bad}); "
          f"{self._intact()} and stay as they are.")

  @staticmethod
  def _move_aside(path: str) -> None:
    dst, k = path + UNREADABLE_SUFFIX, 1
    while os.path.exists(dst):
      dst, k = f"{path}{UNREADABLE_SUFFIX}.{k}", k + 1
    os.rename(path, dst)
    log.warning("moved unreadable checkpoint %s aside to %s", path, dst)

  def _set_aside_unreadable(self, which: str) -> None:
    """Renames what a restore skipped to `<name>.unreadable` (kept for inspection).

    Only writers call this, so a read-only command (predict, export, evaluate)
    never changes a workdir.
    """
    bad = self._unreadable[which]
    if not bad:
      return
    if which == "best" and self.best is None:
      self._move_aside(self.best_directory)
      bad.clear()
      self.best = self._open_best()
      return
    manager = getattr(self, which)
    for step in bad:
      path = os.path.join(str(manager.directory), str(step))
      if os.path.isdir(path):
        self._move_aside(path)
    bad.clear()
    manager.reload()

  def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
    """Starts an async save of `step`; errors of earlier async saves surface here."""
    self._check_finite(step, state)
    try:
      self._set_aside_unreadable("latest")
      self._last_save = step
      return self.latest.save(step, args=self._args(state, meta), force=force)
    except Exception as e:  # pylint: disable=broad-except — tensorstore raises ValueError
      raise self._write_error(f"checkpoint {step}", e) from None

  def save_best(self, step: int, state, meta: dict, mean_dice: float) -> None:
    self._check_finite(step, state)
    try:
      self._set_aside_unreadable("best")
      if self.best is None:
        raise OSError(f"cannot open {self.best_directory}")
      if step in self.best.all_steps():
        return
      self.best.save(step, args=self._args(state, meta), metrics={"mean_dice": float(mean_dice)},
                     force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(f"best checkpoint {step}", e) from None

  def _managers(self):
    return [m for m in (self.latest, self.best) if m is not None]

  def wait(self) -> None:
    """Blocks until async saves are on disk; CheckpointError if one failed."""
    try:
      for m in self._managers():
        m.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending_name(), e) from None

  def _pending_name(self) -> str:
    return "a checkpoint" if self._last_save is None else f"checkpoint {self._last_save}"

  def close(self) -> None:
    try:
      for m in self._managers():
        m.close()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending_name(), e) from None

  # -- restore ---------------------------------------------------------------

  def steps(self) -> list[int]:
    """Steps on disk, less those a restore of this instance found unreadable."""
    return sorted(s for s in self.latest.all_steps() if s not in self._unreadable["latest"])

  def restore_latest(self, abstract_state, check_meta: Callable[[dict], None] | None = None):
    """(step, state, meta) of the newest readable checkpoint, or None if none.

    A checkpoint that fails to read is skipped with a warning (the previous one
    is tried). CheckpointError if checkpoints exist (here or, after
    `restore_best`, in `best/`) but none is readable, or if `check_meta`
    raises it (another architecture): never a silent fresh start.
    """
    restored = self._restore("latest", abstract_state, check_meta)
    if restored is None and self._restore_errors:
      raise CheckpointError(f"No readable checkpoint in {self.directory}: "
                            + "; ".join(self._restore_errors))
    return restored

  def restore_best(self, abstract_state, check_meta: Callable[[dict], None] | None = None):
    """Like `restore_latest`, from the best-by-mean-Dice checkpoint.

    None if there is no best checkpoint, or (with a warning) if none is
    readable: the caller then falls back to `restore_latest`.
    """
    if self.best is None:
      return None  # Warned when opened.
    restored = self._restore("best", abstract_state, check_meta)
    if restored is None and self._unreadable["best"]:
      log.warning("no readable best checkpoint in %s; using the latest checkpoints instead.",
                  self.best_directory)
    return restored

  def _restore(self, which: str, abstract_state, check_meta):
    manager = getattr(self, which)
    _quiet_closed_loop_noise()
    for step in reversed(sorted(manager.all_steps())):
      try:
        meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                    ["meta"])
        if check_meta:
          check_meta(meta)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        state = restored["state"]
        bad = first_non_finite(state)
        if bad is not None:
          raise ValueError(f"NaN/inf values at {bad}")
        return step, state, dict(restored["meta"])
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except — Orbax/tensorstore raise many types.
        log.warning("checkpoint %d in %s is unreadable (%s: %s); trying an older one.",
                    step, manager.directory, type(e).__name__, _short(e))
        self._unreadable[which].append(step)
        self._restore_errors.append(f"{manager.directory}/{step}: {_short(e)}")
    return None
