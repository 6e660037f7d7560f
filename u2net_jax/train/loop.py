"""The training loop's parts: when periodic actions fire, the state that changes as it runs.

`train.train_and_evaluate` strings them together: one update per batch
(`train_step`, with the NaN guard), the loss-plateau rule (`end_of_epoch`),
then whatever `itstime` says is due at that step (progress line, checkpoint,
evaluation). What changes from step to step lives in one `LoopState`; what
does not, in one `Run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from u2net_jax import logging_utils
from u2net_jax.errors import U2NetError
from u2net_jax.train import checkpoint as ckpt_lib
from u2net_jax.train import extend, peers, schedules
from u2net_jax.train.inputs import TrainingData
from u2net_jax.train.state import ModelParts
from u2net_jax.train.step import CompiledStep, learning_rate


class TrainingError(U2NetError):
  """Training cannot go on (non-finite loss, ...)."""


def itstime(step: int, every: int, total: int, *, first: bool = False,
            last: bool = True) -> bool:
  """Whether a periodic action (log line, checkpoint, evaluation) is due once `step` steps are done.

  Due at each multiple of `every` (never when `every` is 0) and, with `first`,
  at step 1. At the last step (`step == total`) it is due exactly when `last`:
  `last=False` leaves the last step to the caller (the final checkpoint and
  evaluation come after the loop).
  """
  if step == total:
    return last
  return bool(every) and (step % every == 0 or (first and step == 1))


class Preemption:
  """SIGTERM → finish the current step, save, exit cleanly."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass(frozen=True)
class Run:
  """What one invocation of the loop reads and never changes."""
  config: object  # the resolved config (with an extension's train.* overrides)
  specs: list
  workdir: str
  parts: ModelParts
  arch: dict  # the fingerprint a checkpoint must match (state.architecture)
  ckpts: ckpt_lib.Checkpoints
  logger: logging_utils.MetricLogger
  data: TrainingData
  step: CompiledStep
  patch: tuple  # (D, H, W) voxels
  channels: int  # inputs are zero-padded to this many
  counts: dict  # models.param_counts
  voxels: int  # voxels of one global batch
  watchdog: peers.Watchdog | None = None  # multi-process runs: bounds each step and save

  @property
  def log(self):
    return self.logger.info


@dataclasses.dataclass
class LoopState:
  """What changes as the loop runs; `meta` is what a checkpoint keeps of it.

  The train state lives as the compiled step's flat leaves while the loop
  steps (`leaves`); `state` rebuilds the pytree when something reads it
  (checkpoints, evaluations), once per change.
  """
  tree: dict | None  # {"params", "opt", "step"}: replicated device arrays; None: see leaves
  start: int = 0  # the step this invocation starts at
  step: int = 0  # steps done
  total: int = 0  # the step the loop ends at
  resumed: bool = False  # started from a checkpoint of this workdir
  plateau_scale: float = 1.0  # lr multiplier (train.schedule plateau or loss_plateau)
  best: float = -1.0  # best mean validation Dice so far
  loss_plateau: schedules.LossPlateau | None = None  # train.schedule=loss_plateau
  saved: set = dataclasses.field(default_factory=set)  # steps this invocation saved
  recent: dict = dataclasses.field(default_factory=dict)  # domain → losses since the last line
  train_seconds: float = 0.0  # in steps, evaluations excluded
  t_last: float = 0.0  # time.time() where train_seconds last stopped counting
  leaves: list | None = None  # the state after the last step (donated to the next one)
  treedef: object = None  # leaves → state

  @property
  def state(self) -> dict:
    if self.tree is None:
      self.tree = jax.tree.unflatten(self.treedef, self.leaves)
    return self.tree

  @state.setter
  def state(self, value: dict) -> None:
    self.tree, self.leaves = value, None

  def meta(self, config, arch: dict, names) -> dict:
    """The checkpoint metadata of the current step (JSON)."""
    return {"step": int(self.step),
            "data": {"next_step": int(self.step), "seed": config.seed},
            "architecture": arch, "domains": list(names),
            "plateau_scale": self.plateau_scale, "best_mean_dice": self.best,
            "loss_plateau": self.loss_plateau.to_dict() if self.loss_plateau else None,
            "config": config.to_dict()}


def begin(tcfg, state, restored, base: extend.Base | None, replicated, directory: str,
          log) -> LoopState:
  """Where this invocation starts: the restored checkpoint, else step 0 (from `base`'s weights).

  `restored`: (step, state, meta) of the latest checkpoint or None.
  """
  ls = LoopState(tree=state)
  # train.schedule=loss_plateau: the official rule on the training loss (schedules.py).
  ls.loss_plateau = (schedules.LossPlateau.from_config(tcfg)
                     if tcfg.schedule == "loss_plateau" else None)
  if restored is not None:
    ls.start, ls.state, meta = restored
    ls.plateau_scale = float(meta.get("plateau_scale", 1.0))
    ls.best = float(meta.get("best_mean_dice", -1.0))
    if ls.loss_plateau is not None and meta.get("loss_plateau"):
      ls.loss_plateau = schedules.LossPlateau.from_dict(meta["loss_plateau"])
    log(f"resumed from {directory} step {ls.start}")
  elif base is not None:
    extension = base.extension
    params = extend.init_params(extension, jax.device_get(ls.state["params"]), base.params)
    ls.state["params"] = jax.device_put(params, replicated)
    log(f"initialized from {extension.base_workdir} (step {base.step}): " + ", ".join(
        f"{n} ← {s}" for n, s in extension.sources.items())
        + (f"; new: {', '.join(extension.new_domains)}" if extension.new_domains else "")
        + ("; training only the new domains (shared and old domains frozen)"
           if extension.train == "new" else ""))
  ls.step, ls.resumed, ls.total = ls.start, restored is not None, tcfg.steps
  if ls.loss_plateau is not None and ls.loss_plateau.stopped:
    ls.total = ls.start  # stopped by the lr floor before: nothing left to train
  return ls


@contextlib.contextmanager
def guarded(run: Run, what: str, *, watch: bool = True):
  """The body, bounded by the run's watchdog when `watch`.

  With several processes, an exception in it is a collective that failed
  because another process stopped: `PeerLost` (train/peers.py).
  """
  with run.watchdog.guard(what) if run.watchdog and watch else contextlib.nullcontext():
    try:
      yield
    except U2NetError:
      raise
    except Exception as e:  # pylint: disable=broad-except — XLA/gloo errors have no common type
      if jax.process_count() == 1:
        raise
      raise peers.collective_failed(e, what, run.ckpts.directory) from e


def train_step(run: Run, ls: LoopState, host_batch: dict):
  """One update on `host_batch` → (out, shared lr, seconds of the step).

  A non-finite loss/gradient left the state unchanged: stop (TrainingError,
  checkpoints closed) or skip the step, by `train.nan_policy`.
  """
  lr_s, lr_d = learning_rate(run.config.train, ls.step, ls.plateau_scale)
  # The first step of a run also waits for every process's compile (minutes on
  # a big model): not bounded by the watchdog (a dead process still ends it).
  with guarded(run, f"training step {ls.step + 1}", watch=ls.step > ls.start):
    gb = run.step.to_global(host_batch)
    t_step = time.time()
    leaves = ls.leaves if ls.leaves is not None else jax.tree.leaves(ls.state)
    ls.leaves, out = run.step.fn(leaves, gb, jnp.float32(lr_s), jnp.float32(lr_d))
    ls.tree, ls.treedef = None, run.step.treedef  # the old pytree's arrays were donated
    finite = bool(out["finite"])  # waits for the step (and its collectives)
  if not finite:
    di = int(host_batch["domain"])
    dom = run.parts.names[di]
    ids = [run.data.sampler.case_id(di, r, int(c)) for r, c in enumerate(host_batch["case"])]
    msg = f"non-finite loss/gradient at step {ls.step}, domain {dom!r}, cases {ids}"
    if run.config.train.nan_policy != "skip":
      run.ckpts.wait()
      run.ckpts.close()
      raise TrainingError(msg + "; the state was left unchanged and not checkpointed "
                          "(--config.train.nan_policy=skip skips such steps).")
    run.log(f"warning: {msg}; step skipped")
  ls.step += 1
  dt = time.time() - t_step
  ls.train_seconds += time.time() - ls.t_last
  ls.t_last = time.time()
  ls.recent.setdefault(run.parts.names[int(host_batch["domain"])], []).append(out["loss"])
  return out, lr_s, dt


def end_of_epoch(run: Run, ls: LoopState, loss) -> bool:
  """train.schedule=loss_plateau: counts `loss`; at an epoch's end, the official lr rule.

  True when training stops there (the lr fell below the floor).
  """
  lp = ls.loss_plateau
  if lp is None:
    return False
  lp.add(loss)
  if ls.step % lp.epoch_steps != 0:
    return False
  lr = run.config.train.lr
  stop_early = lp.end_epoch(lr)
  if lp.scale != ls.plateau_scale:
    ls.plateau_scale = lp.scale
    run.log(f"step {ls.step}: training loss plateaued, lr × {ls.plateau_scale:g}")
  if stop_early:
    run.log(f"step {ls.step}: lr {lr * ls.plateau_scale:.2g} < "
            f"{lp.min_lr:g}: training stops (the official rule)")
  return stop_early


def log_progress(run: Run, ls: LoopState, out: dict, lr: float, seconds: float) -> None:
  """The progress line and scalars; `seconds`: the last step's, for speed; ETA from the mean."""
  # Mean loss per domain since the last line (one step's loss is noise).
  per_domain = {n: float(np.mean([float(v) for v in vs])) for n, vs in ls.recent.items()}
  ls.recent.clear()
  loss = float(np.mean(list(per_domain.values())))
  rate = run.voxels / max(seconds, 1e-9)
  remaining = (ls.total - ls.step) * ls.train_seconds / max(ls.step - ls.start, 1)
  run.log(f"step {ls.step}/{ls.total} loss {loss:.4f} ("
          + " ".join(f"{n[:5]} {v:.3f}" for n, v in per_domain.items())
          + f") {seconds:.2f} s/step {rate / 1e3:.0f}k vox/s ETA {logging_utils.eta(remaining)}")
  run.logger.scalars(ls.step, {"loss": loss, **{f"loss/{n}": v for n, v in per_domain.items()},
                               "grad_norm": float(out["grad_norm"]),
                               "lr": lr, "step_seconds": seconds, "voxels_per_second": rate})


def save(run: Run, ls: LoopState, *, force: bool = False) -> dict:
  """Checkpoints the current step unless it exists already; returns its metadata."""
  meta = ls.meta(run.config, run.arch, run.parts.names)
  if ls.step not in ls.saved and ls.step not in run.ckpts.steps():
    with run.watchdog.guard(f"saving step {ls.step}") if run.watchdog else contextlib.nullcontext():
      run.ckpts.save(ls.step, ls.state, meta, force=force)
    ls.saved.add(ls.step)
  return meta


def stop_preempted(run: Run, ls: LoopState) -> dict:
  """After a SIGTERM: saves this step, closes everything; the preempted result."""
  save(run, ls, force=True)
  run.ckpts.wait()
  run.log(f"SIGTERM: saved checkpoint at step {ls.step}; exiting.")
  run.ckpts.close()
  run.logger.close()
  return {"preempted": True, "step": ls.step}
