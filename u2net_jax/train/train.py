"""train_and_evaluate(config, workdir): the universal model's training loop.

One program for every domain: the step takes the domain as a traced int32,
per-domain weights are gathered inside it (see layers.DomainSelector), and
inputs are zero-padded to the largest channel count. The same program runs on
every process; the data axis of the mesh spans all devices of all processes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from u2net_jax import config_utils, logging_utils
from u2net_jax.data import augment, datasets, pipeline, plans, reference, rescale
from u2net_jax.errors import CheckpointError, ConfigError, U2NetError
from u2net_jax.infer import evaluate
from u2net_jax.model import layers, models
from u2net_jax.train import checkpoint as ckpt_lib
from u2net_jax.train import extend, losses, optim, schedules


class TrainingError(U2NetError):
  """Training cannot go on (non-finite loss, ...)."""


# ----------------------------------------------------------------------------
# Mesh and processes.

def maybe_initialize_distributed(config) -> None:
  """jax.distributed.initialize() when asked (flag/config) — automatic on Cloud TPU."""
  dist = config.get("distributed", None)
  if dist is None or not dist.get("enabled", False):
    return
  # Nothing may touch the XLA backend before initialize() (not even process_count).
  if getattr(maybe_initialize_distributed, "_done", False):
    return
  kw = {}
  if dist.get("coordinator_address"):
    kw = dict(coordinator_address=dist.coordinator_address,
              num_processes=int(dist.num_processes), process_id=int(dist.process_id))
  # Only affects CPU devices (multi-process CPU runs need gloo collectives);
  # harmless on GPU/TPU. Checking the backend here would initialize it.
  jax.config.update("jax_cpu_collectives_implementation",
                    dist.get("cpu_collectives", "") or "gloo")
  jax.distributed.initialize(**kw)
  maybe_initialize_distributed._done = True


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices) or jax.process_count() > 1 and num_devices != len(devices):
      raise ConfigError(f"train.num_devices={num_devices} but {len(devices)} devices exist.")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


# ----------------------------------------------------------------------------
# State: shared and per-domain weights as separate trees, keyed by name.

@dataclasses.dataclass
class ModelParts:
  graphdef: nnx.GraphDef
  names: tuple[str, ...]
  rest: nnx.State

  def merge(self, params) -> models.U2Net:
    return nnx.merge(self.graphdef, params["shared"],
                     *[params["domains"][n] for n in self.names], self.rest)


def domain_filter(name: str):
  return nnx.All(layers.DomainParam, lambda path, _: path[-1] == name)


def split_model(model: models.U2Net) -> tuple[ModelParts, dict]:
  names = model.domain_names
  graphdef, shared, *doms, rest = nnx.split(model, layers.SHARED,
                                            *[domain_filter(n) for n in names], ...)
  params = {"shared": shared, "domains": dict(zip(names, doms))}
  return ModelParts(graphdef, names, rest), params


def architecture(config, specs) -> dict:
  """What a checkpoint must match to be restored into this config."""
  m = config.model
  return {"mode": m.mode, "features_root": int(m.features_root),
          "num_levels": int(m.num_levels), "downsample": m.downsample,
          "deep_supervision": bool(m.deep_supervision),
          **({"pool_per_axis": list(models.parse_pools(m.pool_per_axis))}
             if m.get("pool_per_axis") else {}),
          "domains": {d.name: [d.in_channels, d.num_classes] for d in specs}}


def check_architecture(meta: dict, expected: dict, directory: str) -> None:
  got = meta.get("architecture")
  if got != expected:
    raise CheckpointError(
        f"{directory} holds a checkpoint of another architecture ({got}); this config "
        f"builds {expected}. Use another --workdir or the matching config.")


# ----------------------------------------------------------------------------
# The update step.

def make_train_step(parts: ModelParts, model: models.U2Net, config, tx_shared, tx_domain):
  tcfg = config.train
  counts = jnp.array([d.num_classes for d in model.domains])
  max_k = model.max_num_classes
  accum = int(tcfg.get("grad_accum", 1))
  freeze_shared = bool(tcfg.get("freeze_shared", False))
  loss_kw = config_utils.loss_options(tcfg)

  def loss_fn(params, image, label, domain):
    if freeze_shared:
      # No weight gradient for frozen shared weights: none computed, none
      # counted in the clipping norm.
      params = {"shared": jax.lax.stop_gradient(params["shared"]),
                "domains": params["domains"]}
    logits = parts.merge(params)(image, domain)
    mask = jnp.arange(max_k) < counts[domain]
    return losses.segmentation_loss(logits, label, kind=tcfg.loss, class_mask=mask, **loss_kw)

  grad_fn = jax.value_and_grad(loss_fn)

  def step(state, batch, lr_shared, lr_domain):
    params = state["params"]
    domain = batch["domain"]
    if accum == 1:
      loss, grads = grad_fn(params, batch["image"], batch["label"], domain)
    else:
      def micro(carry, xs):
        l, g = grad_fn(params, xs[0], xs[1], domain)
        return jax.tree.map(jnp.add, carry, (l, g)), None
      split = lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:])
      zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
      (loss, grads), _ = jax.lax.scan(micro, zero, (split(batch["image"]), split(batch["label"])))
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    grads, gnorm = optim.clip_grads(grads, float(tcfg.grad_clip))
    new_params, new_opt = optim.apply_updates(
        params, grads, state["opt"], domain, names=parts.names, tx_shared=tx_shared,
        tx_domain=tx_domain, lr_shared=lr_shared, lr_domain=lr_domain,
        domain_updates=optim.check_domain_updates(tcfg.get("domain_updates", "isolated")))
    # A non-finite loss or gradient leaves the state as it was (the caller
    # then stops or skips, by config): no NaN ever reaches a checkpoint.
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {"params": keep(new_params, params), "opt": keep(new_opt, state["opt"]),
                 "step": state["step"] + finite.astype(jnp.int32)}
    return new_state, {"loss": loss, "grad_norm": gnorm, "finite": finite}

  return step


def learning_rate(tcfg, step: int, plateau_scale: float) -> tuple[float, float]:
  """(shared lr, domain lr) at `step` for `train.schedule`."""
  total = max(int(tcfg.steps), 1)
  if tcfg.schedule == "constant":
    factor = 1.0
  elif tcfg.schedule == "poly":
    factor = (1 - min(step, total - 1) / total) ** 0.9
  elif tcfg.schedule in ("plateau", "loss_plateau"):
    factor = plateau_scale
  else:
    raise ConfigError(f"train.schedule {tcfg.schedule!r} is not constant, poly, plateau or "
                      "loss_plateau.")
  warm = int(tcfg.get("warmup_steps", 0))
  if warm and step < warm:
    factor *= (step + 1) / warm
  lr_d = tcfg.lr_domain if float(tcfg.lr_domain) > 0 else tcfg.lr
  return float(tcfg.lr) * factor, float(lr_d) * factor


# ----------------------------------------------------------------------------
# Evaluation.

def make_predict_fn(parts: ModelParts, device):
  @jax.jit
  def predict(params, x, domain):
    return jax.nn.softmax(parts.merge(params)(x, domain), axis=-1)

  def for_domain(params, index: int):
    local = jax.device_put(jax.tree.map(lambda a: a.addressable_data(0), params), device)
    d = jnp.int32(index)
    return lambda x: np.asarray(predict(local, jax.device_put(x, device), d))
  return for_domain


def run_evaluation(parts, params, specs, val_examples, config, patch, channels, log,
                   during_training: bool = False) -> dict:
  """Per-domain metrics on the validation cases (`eval.max_cases` of each; evaluations
  along the way use `eval.during_training_max_cases` when > 0: cheaper curves)."""
  predict_for = make_predict_fn(parts, jax.local_devices()[0])
  out = {}
  max_cases = int(config.eval.get("max_cases", 0))
  if during_training and int(config.eval.get("during_training_max_cases", 0)):
    max_cases = int(config.eval.during_training_max_cases)
  for i, spec in enumerate(specs):
    examples = val_examples[spec.name]
    if max_cases:
      examples = examples[:max_cases]
    t0 = time.time()
    # eval.dice_grid=original: score against the source NIfTI label (official).
    ref = (reference.msd_reference(config.data.manual_dir, spec.name)
           if config.eval.get("dice_grid", "preprocessed") == "original" else None)
    res = evaluate.evaluate_domain(predict_for(params, i), examples, spec, patch, config.eval,
                                   channels=channels,
                                   source_patch=config_utils.source_patch_for(config, spec.name),
                                   reference=ref)
    log(f"  eval {spec.name}: mean Dice {res['mean_dice']:.3f} "
        f"({res['cases']} cases, {time.time() - t0:.1f} s)")
    out[spec.name] = res
  return out


# ----------------------------------------------------------------------------
# The loop.

class _Preemption:
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


def _enable_compilation_cache(workdir: str) -> None:
  """JAX's persistent compilation cache: JAX_COMPILATION_CACHE_DIR, else <workdir>/jax_cache."""
  try:
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.path.abspath(workdir), "jax_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except Exception:  # pylint: disable=broad-except — an optional speed-up
    pass


def build_train_state(config, specs, mesh):
  model = models.build_model(specs, config.model, seed=int(config.seed))
  parts, params = split_model(model)
  tcfg = config.train
  scaling = tcfg.get("update_scaling", "none")
  tx_shared = optim.make_tx(float(tcfg.weight_decay), tcfg.weight_decay_mode, scaling=scaling)
  wd_d = float(tcfg.weight_decay_domain) if float(tcfg.weight_decay_domain) >= 0 else \
      float(tcfg.weight_decay)
  tx_domain = optim.make_tx(wd_d, tcfg.weight_decay_mode, scaling=scaling)
  frozen = set(config_utils.split_names(tcfg.get("frozen_domains", "")))
  opt = optim.init_opt_state(params["shared"], params["domains"], tx_shared, tx_domain,
                             freeze_shared=bool(tcfg.get("freeze_shared", False)),
                             frozen_domains=frozen)
  state = {"params": params, "opt": opt, "step": jnp.zeros((), jnp.int32)}
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  return model, parts, state, tx_shared, tx_domain


def _load_base(config, specs):
  """(extend.Plan, base params on the host, base step) for `config.init_from`."""
  base_dir = config.init_from
  if not os.path.isdir(base_dir):
    raise ConfigError(f"init_from={base_dir!r} is not a folder (a workdir of a trained run).")
  base_config = config_utils.load_config(base_dir)
  base_specs = config_utils.resolve_domains(base_config)
  plan = extend.make_plan(config, specs, base_config, base_specs)
  _, _, base_params, _, step = restore_params(base_config, base_dir, needs_data=False)
  return plan, jax.device_get(base_params), step


def _with_overrides(config, train_overrides: dict):
  if not train_overrides:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for k, v in train_overrides.items():
      config.train[k] = v
  return config


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the summary."""
  maybe_initialize_distributed(config)
  specs = config_utils.validate(config, needs_data=True)
  plan = base_params = None
  if config.get("init_from", ""):
    plan, base_params, base_step = _load_base(config, specs)
    config = _with_overrides(config, extend.training_overrides(plan, specs))
  _enable_compilation_cache(workdir)
  tcfg = config.train
  mesh = make_mesh(int(tcfg.get("num_devices", 0)))
  n_dev = mesh.devices.size
  batch = int(tcfg.batch_size)
  if batch % n_dev or batch % jax.process_count():
    raise ConfigError(
        f"train.batch_size={batch} must be divisible by the {n_dev} devices of the mesh "
        f"(set --config.train.batch_size or --config.train.num_devices).")
  patch = config_utils.patch_size(config)
  arch = architecture(config, specs)

  model, parts, state, tx_shared, tx_domain = build_train_state(config, specs, mesh)
  counts = models.param_counts(model)
  channels = model.max_in_channels
  replicated = NamedSharding(mesh, P())
  ckpts = ckpt_lib.Checkpoints(workdir, max_to_keep=int(tcfg.max_to_keep))
  restored = ckpts.restore_latest(
      ckpt_lib.abstract_like(state, replicated),
      check_meta=lambda m: check_architecture(m, arch, ckpts.directory))
  # Only now that the workdir is known to match: keep the resolved config there.
  log_ = logging_utils.MetricLogger(workdir)
  log = log_.info
  if jax.process_index() == 0:
    config_utils.save_config(config, workdir)
  start, plateau_scale, best = 0, 1.0, -1.0
  # train.schedule=loss_plateau: the official rule on the training loss (schedules.py).
  loss_plateau = (schedules.LossPlateau.from_config(tcfg)
                  if tcfg.schedule == "loss_plateau" else None)
  if restored is not None:
    start, state, meta = restored
    plateau_scale = float(meta.get("plateau_scale", 1.0))
    best = float(meta.get("best_mean_dice", -1.0))
    if loss_plateau is not None and meta.get("loss_plateau"):
      loss_plateau = schedules.LossPlateau.from_dict(meta["loss_plateau"])
    log(f"resumed from {ckpts.directory} step {start}")
  elif plan is not None:
    params = extend.init_params(plan, jax.device_get(state["params"]), base_params)
    state["params"] = jax.device_put(params, replicated)
    log(f"initialized from {plan.base_workdir} (step {base_step}): " + ", ".join(
        f"{n} ← {s}" for n, s in plan.sources.items())
        + (f"; new: {', '.join(plan.new_domains)}" if plan.new_domains else "")
        + ("; training only the new domains (shared and old domains frozen)"
           if plan.train == "new" else ""))

  # -- input ------------------------------------------------------------------
  t_data = time.time()
  dirs = datasets.ensure_built(config, specs, log=log) if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("datasets_built")
    dirs = datasets.ensure_built(config, specs, log=log)
  # Data shards: each process reads only its own, disjoint part of every domain.
  num_shards = int(config.data.get("num_shards", 0)) or jax.process_count()
  mine = pipeline.owned_shards(num_shards, jax.process_index(), jax.process_count())
  cases = {d.name: {v: datasets.load_cases(dirs[d.name], "train", d, process_index=v,
                                           process_count=num_shards) for v in mine}
           for d in specs}
  val = {d.name: datasets.read_examples(dirs[d.name], "validation") for d in specs}
  meta_ds = {d.name: datasets.metadata(dirs[d.name]) for d in specs}
  if jax.process_index() == 0:  # What predict/export need to preprocess like this data.
    plans.write(workdir, [plans.from_metadata(d, meta_ds[d.name], dirs[d.name]) for d in specs])
  log(f"data ready in {time.time() - t_data:.1f} s: " + ", ".join(
      f"{n} {sum(map(len, c.values()))} train/{len(val[n])} val" for n, c in cases.items()))
  weights = config_utils.domain_weights(config, specs)
  sampler = pipeline.PatchSampler(
      cases, specs, patch_size=patch, batch_size=batch, seed=int(config.seed),
      fg_fraction=float(tcfg.fg_fraction),
      augment_cfg=augment.AugmentConfig.from_config(config.get("augment")),
      domain_weights=weights, num_shards=num_shards, pad_channels_to=channels,
      sampling=str(tcfg.get("sampling", "nnunet")),
      small_class_prob=float(tcfg.get("small_class_prob", 0.3)),
      fore_prob=float(tcfg.get("fore_prob", 0.3)),
      small_classes=pipeline.parse_class_map(tcfg.get("small_classes", "")),
      source_patches=rescale.source_patches(config))

  # -- compile ----------------------------------------------------------------
  data_sharding = NamedSharding(mesh, P("data"))
  step_fn = make_train_step(parts, model, config, tx_shared, tx_domain)
  jit_step = jax.jit(step_fn, donate_argnums=(0,),
                     out_shardings=(replicated, replicated))

  def to_global(b):
    out = {}
    for k in ("image", "label"):
      local = b[k]
      out[k] = jax.make_array_from_process_local_data(
          data_sharding, local, (batch,) + local.shape[1:])
    out["domain"] = jax.device_put(jnp.int32(b["domain"]), replicated)
    return out

  total = int(tcfg.steps)
  t0 = time.time()
  example = to_global(sampler.batch(start))
  lr0 = learning_rate(tcfg, start, plateau_scale)
  lowered = jit_step.lower(state, example, *map(jnp.float32, lr0))
  trace_s = time.time() - t0
  compiled = lowered.compile()
  compile_s = time.time() - t0
  log(f"compiled the train step (one program for {len(specs)} domains) in {compile_s:.1f} s "
      f"(tracing {trace_s:.1f} s)")

  def summary_of(step, results):
    return make_summary(step, config.model.mode, results, meta_ds, counts, train_seconds)

  def save(step, force=False):
    meta = meta_of(step)
    if step not in saved and step not in ckpts.steps():
      ckpts.save(step, state, meta, force=force)
      saved.add(step)
    return meta

  def meta_of(step):
    return {"step": int(step), "data": {"next_step": int(step), "seed": int(config.seed)},
            "architecture": arch, "domains": list(parts.names),
            "plateau_scale": plateau_scale, "best_mean_dice": best,
            "loss_plateau": loss_plateau.to_dict() if loss_plateau else None,
            "config": config.to_dict()}

  # -- loop -------------------------------------------------------------------
  saved = set()
  recent = {}
  train_seconds = 0.0
  step = start
  voxels = batch * int(np.prod(patch))
  eval_every = int(tcfg.eval_every)
  nan_policy = tcfg.get("nan_policy", "stop")
  if loss_plateau is not None and loss_plateau.stopped:
    total = start  # stopped by the lr floor before: nothing left to train
  with _Preemption() as preempt:
    it = sampler.iterate(start, max(total - start, 0), num_threads=int(tcfg.get("data_threads", 2)))
    t_last = time.time()
    for host_batch in it:
      lr_s, lr_d = learning_rate(tcfg, step, plateau_scale)
      gb = to_global(host_batch)
      t_step = time.time()
      state, out = compiled(state, gb, jnp.float32(lr_s), jnp.float32(lr_d))
      if not bool(out["finite"]):
        di = int(host_batch["domain"])
        dom = parts.names[di]
        ids = [sampler.case_id(di, r, int(c)) for r, c in enumerate(host_batch["case"])]
        msg = f"non-finite loss/gradient at step {step}, domain {dom!r}, cases {ids}"
        if nan_policy != "skip":
          ckpts.wait()
          ckpts.close()
          raise TrainingError(msg + "; the state was left unchanged and not checkpointed "
                              "(--config.train.nan_policy=skip skips such steps).")
        log(f"warning: {msg}; step skipped")
      step += 1
      dt = time.time() - t_step
      train_seconds += time.time() - t_last
      t_last = time.time()
      recent.setdefault(parts.names[int(host_batch["domain"])], []).append(out["loss"])
      stop_early = False
      if loss_plateau is not None:
        loss_plateau.add(out["loss"])
        if step % loss_plateau.epoch_steps == 0:
          stop_early = loss_plateau.end_epoch(float(tcfg.lr))
          if loss_plateau.scale != plateau_scale:
            plateau_scale = loss_plateau.scale
            log(f"step {step}: training loss plateaued, lr × {plateau_scale:g}")
          if stop_early:
            log(f"step {step}: lr {float(tcfg.lr) * plateau_scale:.2g} < "
                f"{loss_plateau.min_lr:g}: training stops (the official rule)")
      if step % int(tcfg.log_every) == 0 or step == total:
        # Mean loss per domain since the last line (one step's loss is noise).
        per_domain = {n: float(np.mean([float(v) for v in vs])) for n, vs in recent.items()}
        recent.clear()
        loss = float(np.mean(list(per_domain.values())))
        rate = voxels / max(dt, 1e-9)
        remaining = (total - step) * train_seconds / max(step - start, 1)
        log(f"step {step}/{total} loss {loss:.4f} ("
            + " ".join(f"{n[:5]} {v:.3f}" for n, v in per_domain.items())
            + f") {dt:.2f} s/step {rate / 1e3:.0f}k vox/s ETA {logging_utils.eta(remaining)}")
        log_.scalars(step, {"loss": loss, **{f"loss/{n}": v for n, v in per_domain.items()},
                            "grad_norm": float(out["grad_norm"]),
                            "lr": lr_s, "step_seconds": dt, "voxels_per_second": rate})
      if int(tcfg.checkpoint_every) and step % int(tcfg.checkpoint_every) == 0 and step < total:
        save(step)
      if eval_every and step % eval_every == 0 and step < total:
        results = run_evaluation(parts, state["params"], specs, val, config, patch, channels, log,
                                 during_training=True)
        md = float(np.mean([r["mean_dice"] for r in results.values()]))
        log_.scalars(step, {"val/mean_dice": md, **{f"val/{n}": r["mean_dice"]
                                                    for n, r in results.items()}})
        if md > best:
          best = md
          meta = save(step, force=True)
          ckpts.save_best(step, state, meta, md)
        elif tcfg.schedule == "plateau":
          plateau_scale *= 0.5
        t_last = time.time()  # train_seconds counts steps, not evaluations
      if preempt.requested:
        save(step, force=True)
        ckpts.wait()
        log(f"SIGTERM: saved checkpoint at step {step}; exiting.")
        ckpts.close()
        log_.close()
        return {"preempted": True, "step": step}
      if stop_early:
        break
  if step > start or restored is None:
    save(step, force=True)
  ckpts.wait()

  # -- final evaluation -------------------------------------------------------
  log("final evaluation ...")
  results = run_evaluation(parts, state["params"], specs, val, config, patch, channels, log)
  summary = summary_of(step, results)
  summary["compile_seconds"] = compile_s
  if loss_plateau is not None:
    summary["lr_scale"] = loss_plateau.scale
    summary["stopped_by_lr_floor"] = loss_plateau.stopped
  md = float(np.mean([r["mean_dice"] for r in results.values()]))
  if md > best:
    best = md
    ckpts.save_best(step, state, save(step, force=True), md)
  ckpts.wait()
  ckpts.close()
  if plan is not None:
    summary["extension"] = extension_report(config, workdir, plan, base_step, summary, counts,
                                            log)
    if summary["extension"] is None:  # SIGTERM in the independent comparison run
      log_.close()
      return {"preempted": True, "step": step}
  if jax.process_index() == 0:
    write_summary(workdir, summary, results)
    print_table(summary, log)
  log_.close()
  return summary


def independent_config(config):
  """The same run as an independent model on the new domains only, from scratch."""
  plan_new = config_utils.split_names(config.extend.new_domains)
  sub = config.copy_and_resolve_references()
  with sub.unlocked():
    sub.init_from = ""
    sub.extend.new_domains = ""
    sub.extend.compare_independent = False
    sub.model.mode = "independent"
    sub.data.tasks = ",".join(plan_new)
    sub.train.freeze_shared = False
    sub.train.frozen_domains = ""
    sub.train.domain_weights = ""
  return sub


def extension_report(config, workdir, plan, base_step, summary, counts, log) -> dict:
  """New-domain Dice, parameters added, and (optionally) an independent model's Dice.

  None when a SIGTERM stopped the independent model's run (it saved; rerun).
  """
  specs = config_utils.resolve_domains(config)
  new = list(plan.new_domains)
  one_independent = {}
  for spec in specs:
    if spec.name in new:
      one = models.build_model([spec], {**config.model.to_dict(), "mode": "independent"})
      one_independent[spec.name] = models.param_counts(one)["total"]
  report = {
      "init_from": os.path.abspath(plan.base_workdir), "base_step": int(base_step),
      "sources": dict(plan.sources), "trained": plan.train, "new_domains": {}}
  for n in new:
    added = counts["per_domain"][n]
    report["new_domains"][n] = {
        "mean_dice": summary["domains"][n]["mean_dice"],
        "params_added": added,
        "params_added_pct_of_independent": 100.0 * added / one_independent[n],
        "independent_model_params": one_independent[n]}
  if new and config.get("extend", {}).get("compare_independent", False):
    sub_dir = os.path.join(workdir, "independent_" + "_".join(new))
    log(f"training an independent model on {', '.join(new)} with the same budget in {sub_dir}")
    sub = train_and_evaluate(independent_config(config), sub_dir)
    if sub.get("preempted"):
      return None  # the caller exits; a rerun resumes the comparison run
    for n in new:
      report["new_domains"][n]["independent_mean_dice"] = sub["domains"][n]["mean_dice"]
  return report


def make_summary(step, mode, results, dataset_meta, counts, train_seconds) -> dict:
  """The `eval/summary.json` object."""
  return {
      "step": int(step), "mode": mode,
      "domains": {n: {"dice": r["dice"], "mean_dice": r["mean_dice"], "hd95_mm": r["hd95_mm"],
                      "surface_dice": r["surface_dice"], "cases": r["cases"],
                      "grid": r.get("grid", "preprocessed"),
                      "threshold_baseline_dice": dataset_meta[n].get("threshold_baseline_dice")}
                  for n, r in results.items()},
      "params": {k: counts[k] for k in ("shared", "per_domain", "total")},
      "train_seconds": None if train_seconds is None else float(train_seconds),
  }


def write_summary(workdir: str, summary: dict, results: dict) -> None:
  import json  # pylint: disable=g-import-not-at-top
  d = os.path.join(workdir, "eval")
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, "summary.json")
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)
  with open(os.path.join(d, "per_case.json.tmp"), "w") as f:
    json.dump({n: r["per_case"] for n, r in results.items()}, f, indent=2)
  os.replace(os.path.join(d, "per_case.json.tmp"), os.path.join(d, "per_case.json"))


def print_table(summary: dict, log) -> None:
  log(f"{'domain':<12} {'mean Dice':>9} {'threshold':>9}  per class")
  for n, r in summary["domains"].items():
    base = r.get("threshold_baseline_dice")
    base = f"{base:.3f}" if isinstance(base, (int, float)) else "-"
    per = ", ".join(f"{c} {v:.3f}" for c, v in r["dice"].items())
    log(f"{n:<12} {r['mean_dice']:>9.3f} {base:>9}  {per}")
  log(f"mean over domains: {np.mean([r['mean_dice'] for r in summary['domains'].values()]):.3f}")


def restore_params(config, workdir: str, *, which: str = "best", needs_data: bool = True):
  """(model parts, params, specs, step) from the workdir's best (else latest) checkpoint.

  `needs_data=False`: the caller reads no dataset (predict, export), so an MSD
  config need not name its data folder.
  """
  specs = config_utils.validate(config, needs_data=needs_data)
  mesh = make_mesh(1)
  model, parts, state, _, _ = build_train_state(config, specs, mesh)
  ckpts = ckpt_lib.Checkpoints(workdir, max_to_keep=int(config.train.max_to_keep))
  arch = architecture(config, specs)
  abstract = ckpt_lib.abstract_like(state, NamedSharding(mesh, P()))
  check = lambda m: check_architecture(m, arch, ckpts.directory)
  restored = None
  try:
    if which == "best":
      restored = ckpts.restore_best(abstract, check_meta=check)
    if restored is None:
      restored = ckpts.restore_latest(abstract, check_meta=check)
  finally:
    ckpts.close()
  if restored is None:
    raise CheckpointError(f"{workdir} has no checkpoint: train it first (--mode=train).")
  step, state, _ = restored
  return model, parts, state["params"], specs, step


def evaluate_workdir(config, workdir: str) -> dict:
  """--mode=evaluate: metrics of the best checkpoint on the validation split."""
  log_ = logging_utils.MetricLogger(workdir)
  model, parts, params, specs, step = restore_params(config, workdir)
  dirs = datasets.ensure_built(config, specs, log=log_.info)
  val = {d.name: datasets.read_examples(dirs[d.name], "validation") for d in specs}
  meta_ds = {d.name: datasets.metadata(dirs[d.name]) for d in specs}
  log_.info(f"evaluating step {step} of {workdir}")
  results = run_evaluation(parts, params, specs, val, config, config_utils.patch_size(config),
                           model.max_in_channels, log_.info)
  summary = make_summary(step, config.model.mode, results, meta_ds,
                         models.param_counts(model), None)
  write_summary(workdir, summary, results)
  print_table(summary, log_.info)
  log_.close()
  return summary
