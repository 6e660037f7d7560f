"""The only module that talks to Orbax.

A checkpoint step holds `state` (params, optimizer state: a pytree) and `meta`
(JSON: step, data-iterator state, config, domain names, architecture
fingerprint). `<workdir>/checkpoints/` keeps the latest `max_to_keep` steps
(async saves); `<workdir>/checkpoints/best/` keeps the best by mean
validation Dice. Restoring gives arrays with the *current* mesh's shardings,
so a checkpoint written on 8 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from u2net_jax.errors import CheckpointError

log = logging.getLogger(__name__)


def abstract_like(tree, sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays with `sharding` (restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpoints:
  """Latest-N and best-1 checkpoint managers under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                        enable_async_checkpointing=async_save)
    self.latest = ocp.CheckpointManager(self.directory, options=opts)
    best_opts = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        best_fn=lambda m: m["mean_dice"], best_mode="max")
    self.best = ocp.CheckpointManager(os.path.join(self.directory, "best"), options=best_opts)

  # -- save ------------------------------------------------------------------

  @staticmethod
  def _args(state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
    try:
      return self.latest.save(step, args=self._args(state, meta), force=force)
    except OSError as e:
      raise CheckpointError(f"Could not save checkpoint {step} in {self.directory}: {e}") from None

  def save_best(self, step: int, state, meta: dict, mean_dice: float) -> None:
    if step in self.best.all_steps():
      return
    try:
      self.best.save(step, args=self._args(state, meta), metrics={"mean_dice": float(mean_dice)},
                     force=True)
    except OSError as e:
      raise CheckpointError(f"Could not save best checkpoint {step}: {e}") from None

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  # -- restore ---------------------------------------------------------------

  def steps(self) -> list[int]:
    return sorted(self.latest.all_steps())

  def restore_latest(self, abstract_state, check_meta: Callable[[dict], None] | None = None):
    """(step, state, meta) of the newest readable checkpoint, or None if none.

    A checkpoint that fails to read is skipped with a warning (the previous one
    is tried); if every checkpoint fails, CheckpointError.
    """
    return self._restore(self.latest, abstract_state, check_meta)

  def restore_best(self, abstract_state, check_meta: Callable[[dict], None] | None = None):
    """Like `restore_latest`, from the best-by-mean-Dice checkpoint."""
    return self._restore(self.best, abstract_state, check_meta)

  def _restore(self, manager, abstract_state, check_meta):
    steps = sorted(manager.all_steps())
    errors = []
    for step in reversed(steps):
      try:
        meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                    ["meta"])
        if check_meta:
          check_meta(meta)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return step, restored["state"], dict(restored["meta"])
      except CheckpointError:
        raise
      except Exception as e:  # Orbax/tensorstore raise many types for bad files.
        log.warning("checkpoint %d in %s is unreadable (%s); trying an older one.",
                    step, manager.directory, e)
        errors.append(f"step {step}: {e}")
    if steps:
      raise CheckpointError(
          f"No readable checkpoint in {manager.directory}: " + "; ".join(errors))
    return None
