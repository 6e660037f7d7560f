"""train_and_evaluate(config, workdir): the universal model's training loop; evaluate_workdir.

One program for every domain: the step takes the domain as a traced int32,
per-domain weights are gathered inside it (see layers.DomainSelector), and
inputs are zero-padded to the largest channel count. The same program runs on
every process; the data axis of the mesh spans all devices of all processes.

The parts live by concern: state.py (mesh, model split, train state), step.py
(the update step, learning rates), inputs.py (datasets, sampler), loop.py (the
loop's state and periodic actions), evaluation.py, summary.py, restore.py and
extend.py (start from another run). Their public names are re-exported here;
the entry points look up `run_evaluation`, `restore_params` and
`_enable_compilation_cache` in this module, so that patching them here takes
effect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from u2net_jax import config as config_lib
from u2net_jax import config_utils, host_memory, logging_utils
from u2net_jax.data import datasets
from u2net_jax.errors import ConfigError
from u2net_jax.model import models
from u2net_jax.train import checkpoint as ckpt_lib
from u2net_jax.train import extend, inputs, loop, peers, workdir_lock
from u2net_jax.train.evaluation import make_predict_fn, run_evaluation
from u2net_jax.train.extend import extension_report, independent_config
from u2net_jax.train.loop import LoopState, Run, TrainingError, itstime
from u2net_jax.train.restore import Restored, restore_params
from u2net_jax.train.state import (ModelParts, architecture, build_train_state,
                                   check_architecture, domain_filter, make_mesh,
                                   maybe_initialize_distributed, split_model,
                                   tuned_model_config, write_autotune_record)
from u2net_jax.train.step import compile_train_step, learning_rate, make_train_step
from u2net_jax.train.summary import make_summary, print_table, write_summary

__all__ = [
    "LoopState", "ModelParts", "Restored", "Run", "TrainingError", "architecture",
    "build_train_state", "check_architecture", "compile_train_step", "domain_filter",
    "evaluate_workdir",
    "extension_report", "independent_config", "itstime", "learning_rate", "make_mesh",
    "make_predict_fn", "make_summary", "make_train_step", "maybe_initialize_distributed",
    "print_table", "restore_params", "run_evaluation", "split_model", "train_and_evaluate",
    "write_summary"]

_Preemption = loop.Preemption  # its name before the split


def _enable_compilation_cache(workdir: str) -> None:
  """JAX's persistent compilation cache: JAX_COMPILATION_CACHE_DIR, else <workdir>/jax_cache."""
  try:
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.path.abspath(workdir), "jax_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's wins
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except Exception:  # pylint: disable=broad-except — an optional speed-up
    pass


def _load_base(config, specs) -> extend.Base:
  """The extension (which base weights go where), base params and step for `config.init_from`."""
  base_dir = config.init_from
  if not os.path.isdir(base_dir):
    raise ConfigError(f"init_from={base_dir!r} is not a folder (a workdir of a trained run).")
  base_config = config_utils.load_config(base_dir)
  base_specs = config_utils.resolve_domains(base_config)
  extension = extend.make_extension(config, specs, base_config, base_specs)
  restored = restore_params(base_config, base_dir, needs_data=False)
  return extend.Base(extension, jax.device_get(restored.params), restored.step)


def _with_overrides(config, train_overrides: dict):
  """A copy of `config` with `train.<key> = value` for each item (itself when there are none)."""
  if not train_overrides:
    return config
  return dataclasses.replace(config, train=dataclasses.replace(config.train, **train_overrides))


def _global_batch_size(tcfg, mesh) -> int:
  """train.batch_size, checked to split evenly over the mesh's devices and the processes."""
  n_dev = mesh.devices.size
  batch = tcfg.batch_size
  if batch % n_dev or batch % jax.process_count():
    raise ConfigError(
        f"train.batch_size={batch} must be divisible by the {n_dev} devices of the mesh "
        f"(set --config.train.batch_size or --config.train.num_devices).")
  return batch


def _process_index(config) -> int:
  """This process's index in the run: from the config when it says (no XLA backend started)."""
  dist = config.distributed
  if not dist.enabled:
    return 0
  return dist.process_id if dist.coordinator_address else jax.process_index()


@contextlib.contextmanager
def _watchdog(config, workdir: str):
  """Multi-process runs: a step or save that outlasts the bound ends this process (peers.py)."""
  seconds = config.distributed.step_timeout_seconds if config.distributed.enabled else 0
  watchdog = peers.Watchdog(seconds, os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR))
  try:
    yield watchdog
  finally:
    watchdog.close()


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the summary.

  After a SIGTERM: {"preempted": True, "step": s} once step s is saved.
  Holds the workdir's training lock (train/workdir_lock.py) from the end of
  the config checks on: a second training in the same workdir stops there,
  naming this one.
  """
  config = config_lib.parse(config)  # typed and frozen from here on
  maybe_initialize_distributed(config)
  specs = config_utils.validate(config, needs_data=True)
  base = None
  if config.init_from:
    base = _load_base(config, specs)
    config = _with_overrides(config, extend.training_overrides(base.extension, specs))
  with (workdir_lock.WorkdirLock(workdir, _process_index(config)),
        _watchdog(config, workdir) as watchdog):
    return _train(config, workdir, specs, base, watchdog)


def _train(config, workdir: str, specs, base: extend.Base | None,
           watchdog: peers.Watchdog) -> dict:
  """`train_and_evaluate` once the config is checked and the workdir locked."""
  _enable_compilation_cache(workdir)
  tcfg = config.train

  # -- model and workdir: resume, else start (from the base run's weights) ------
  mesh = make_mesh(tcfg.num_devices)
  batch = _global_batch_size(tcfg, mesh)
  patch = config.data.patch_size
  arch = architecture(config, specs)
  # 'auto' conv implementations measured for this model and batch (model/autotune.py);
  # config.json keeps what was asked, autotune.json what was chosen.
  say = print if jax.process_index() == 0 else (lambda *_: None)
  tuned, tune_record = tuned_model_config(config, specs, batch // mesh.devices.size, workdir, say)
  model, parts, state, tx_shared, tx_domain = build_train_state(
      dataclasses.replace(config, model=tuned), specs, mesh)
  replicated = NamedSharding(mesh, P())
  ckpts = ckpt_lib.Checkpoints(workdir, max_to_keep=tcfg.max_to_keep)
  restored = ckpts.restore_latest(
      ckpt_lib.abstract_like(state, replicated),
      check_meta=lambda m: check_architecture(m, arch, ckpts.directory))
  # Only now that the workdir is known to match: keep the resolved config there.
  logger = logging_utils.MetricLogger(workdir)
  if jax.process_index() == 0:
    config_utils.save_config(config, workdir)
  write_autotune_record(workdir, tune_record)
  ls = loop.begin(tcfg, state, restored, base, replicated, ckpts.directory, logger.info)

  # -- input and the compiled step ---------------------------------------------
  # The data build of a first run overlaps the compile (2 cores: ~25 s saved).
  compiled, data = compile_train_step(
      make_train_step(parts, model, config, tx_shared, tx_domain), mesh, batch, ls.state,
      patch, model.max_in_channels, ls.start, ls.plateau_scale, tcfg,
      meanwhile=lambda: inputs.load_training_data(config, specs, workdir, batch, patch,
                                                  model.max_in_channels, logger.info))
  logger.info(f"compiled the train step (one program for {len(specs)} domains) in "
              f"{compiled.seconds:.1f} s (tracing {compiled.trace_seconds:.1f} s)")
  run = Run(config, specs, workdir, parts, arch, ckpts, logger, data, compiled, patch=patch,
            channels=model.max_in_channels, counts=models.param_counts(model),
            voxels=batch * int(np.prod(patch)), watchdog=watchdog)

  # -- the loop: one update per batch, then what is due at that step ------------
  with loop.Preemption() as preempt:
    batches = data.sampler.iterate(ls.start, max(ls.total - ls.start, 0),
                                   num_threads=tcfg.data_threads)
    ls.t_last = time.time()
    for host_batch in batches:
      out, lr, seconds = loop.train_step(run, ls, host_batch)
      stop_early = loop.end_of_epoch(run, ls, out["loss"])
      if itstime(ls.step, tcfg.log_every, ls.total):
        loop.log_progress(run, ls, out, lr, seconds)
      if itstime(ls.step, tcfg.checkpoint_every, ls.total, last=False):
        loop.save(run, ls)
      if itstime(ls.step, tcfg.eval_every, ls.total, last=False):
        _evaluate_during_training(run, ls)
      if preempt.requested:
        return loop.stop_preempted(run, ls)
      if stop_early:
        break
  if ls.step > ls.start or not ls.resumed:
    loop.save(run, ls, force=True)
  ckpts.wait()
  return _final_evaluation(run, ls, base)


def _evaluate_during_training(run: Run, ls: LoopState) -> None:
  """Validation along the way: a new best is checkpointed, else (schedule=plateau) lr × ½."""
  results = run_evaluation(run.parts, ls.state["params"], run.specs, run.data.val, run.config,
                           run.patch, run.channels, run.log, during_training=True,
                           logger=run.logger, step=ls.step)  # Dice curves, pictures
  md = float(np.mean([r["mean_dice"] for r in results.values()]))
  if md > ls.best:
    ls.best = md
    meta = loop.save(run, ls, force=True)
    run.ckpts.save_best(ls.step, ls.state, meta, md)
  elif run.config.train.schedule == "plateau":
    ls.plateau_scale *= 0.5
  ls.t_last = time.time()  # train_seconds counts steps, not evaluations


def _final_evaluation(run: Run, ls: LoopState, base: extend.Base | None) -> dict:
  """Metrics of the last step, the best checkpoint, the extension report, eval/summary.json."""
  run.log("final evaluation ...")
  results = run_evaluation(run.parts, ls.state["params"], run.specs, run.data.val, run.config,
                           run.patch, run.channels, run.log, logger=run.logger, step=ls.step)
  summary = make_summary(ls.step, run.config.model.mode, results, run.data.meta, run.counts,
                         ls.train_seconds)
  summary["compile_seconds"] = run.step.seconds
  # Host memory of this process so far (training and the final evaluation's windows).
  summary["peak_rss_mb"] = round(host_memory.peak_rss_mb(), 1)
  summary["huge_pages"] = host_memory.huge_pages_on()
  if ls.loss_plateau is not None:
    summary["lr_scale"] = ls.loss_plateau.scale
    summary["stopped_by_lr_floor"] = ls.loss_plateau.stopped
  md = float(np.mean([r["mean_dice"] for r in results.values()]))
  if md > ls.best:
    ls.best = md
    run.ckpts.save_best(ls.step, ls.state, loop.save(run, ls, force=True), md)
  run.ckpts.wait()
  run.ckpts.close()
  if base is not None:
    # Recursion: the independent comparison model trains through this same function.
    summary["extension"] = extension_report(
        run.config, run.workdir, base.extension, base.step, summary, run.counts, run.log,
        train_independent=train_and_evaluate)
    if summary["extension"] is None:  # SIGTERM in the independent comparison run
      run.logger.close()
      return {"preempted": True, "step": ls.step}
  if jax.process_index() == 0:
    write_summary(run.workdir, summary, results)
    print_table(summary, run.log)
  run.logger.close()
  return summary


def evaluate_workdir(config, workdir: str) -> dict:
  """--mode=evaluate: metrics of the best checkpoint on the validation split."""
  config = config_lib.parse(config)
  log_ = logging_utils.MetricLogger(workdir)
  restored = restore_params(config, workdir)
  specs = restored.specs
  dirs = datasets.ensure_built(config, specs, log=log_.info)
  val = {d.name: datasets.read_examples(dirs[d.name], "validation") for d in specs}
  meta_ds = {d.name: datasets.metadata(dirs[d.name]) for d in specs}
  log_.info(f"evaluating step {restored.step} of {workdir}")
  results = run_evaluation(restored.parts, restored.params, specs, val, config,
                           config_utils.patch_size(config), restored.model.max_in_channels,
                           log_.info)
  summary = make_summary(restored.step, config.model.mode, results, meta_ds,
                         models.param_counts(restored.model), None)
  write_summary(workdir, summary, results)
  print_table(summary, log_.info)
  log_.close()
  return summary
