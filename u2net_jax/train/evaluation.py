"""Validation during and after training: per-domain metrics of the current params."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from u2net_jax import config_utils
from u2net_jax.data import reference
from u2net_jax.infer import evaluate, slices
from u2net_jax.train.state import ModelParts


def make_predict_fn(parts: ModelParts, device):
  """for_domain(params, index) -> fn: windows (N, D, H, W, C) → probabilities (N, D, H, W, K)."""
  # The params go in as flat leaves, their structure static: flattening the
  # Flax variables of the params on every window batch cost Python time per call.
  @functools.partial(jax.jit, static_argnums=0)
  def predict(treedef, leaves, x, domain):
    params = jax.tree.unflatten(treedef, leaves)
    return jax.nn.softmax(parts.merge(params)(x, domain), axis=-1)

  def for_domain(params, index: int):
    local = jax.device_put(jax.tree.map(lambda a: a.addressable_data(0), params), device)
    leaves, treedef = jax.tree.flatten(local)
    d = jnp.int32(index)
    return lambda x: np.asarray(predict(treedef, leaves, jax.device_put(x, device), d))
  return for_domain


def run_evaluation(parts, params, specs, val_examples, config, patch, channels, log,
                   during_training: bool = False, *, logger=None, step: int | None = None) -> dict:
  """Per-domain metrics on the validation cases (`eval.max_cases` of each; evaluations
  along the way use `eval.during_training_max_cases` when > 0: cheaper curves).

  With a `logger` (logging_utils.MetricLogger) and the `step`, the metrics go
  to it (`log_evaluation`) and, with `train.tb_images`, one picture per domain
  to TensorBoard (`images/<domain>`: the first case, predicted once for both).
  """
  predict_for = make_predict_fn(parts, jax.local_devices()[0])
  out = {}
  max_cases = config.eval.max_cases
  if during_training and config.eval.during_training_max_cases:
    max_cases = config.eval.during_training_max_cases
  pictures = logger is not None and logger.has_tensorboard and config.train.tb_images
  for i, spec in enumerate(specs):
    examples = val_examples[spec.name]
    if max_cases:
      examples = examples[:max_cases]
    t0 = time.time()
    # eval.dice_grid=original: score against the source NIfTI label (official).
    ref = (reference.msd_reference(config.data.manual_dir, spec.name)
           if config.eval.dice_grid == "original" else None)
    first = []  # (example, prediction) of the first case, for the picture
    keep = _keep_first(first) if pictures else None
    res = evaluate.evaluate_domain(predict_for(params, i), examples, spec, patch, config.eval,
                                   channels=channels,
                                   source_patch=config_utils.source_patch_for(config, spec.name),
                                   reference=ref, on_prediction=keep)
    log(f"  eval {spec.name}: mean Dice {res['mean_dice']:.3f} "
        f"({res['cases']} cases, {time.time() - t0:.1f} s)")
    out[spec.name] = res
    if first:
      ex, pred = first[0]
      logger.image(step, f"images/{spec.name}",
                   slices.overlay_grid(ex["image"], ex["label"], pred, spec.num_classes))
  if logger is not None:
    log_evaluation(logger, step, out)
  return out


def _keep_first(store: list):
  """An `on_prediction` that keeps the first case's (example, prediction) in `store`."""
  def keep(example, prediction):
    if not store:
      store.append((example, prediction))
  return keep


def evaluation_scalars(results: dict) -> dict:
  """{tag: Dice} of one evaluation's `results` ({domain: evaluate_domain result}).

  `val/mean_dice` and `val/<domain>` are the curve keys of metrics.jsonl
  (experiments/paper_curves.py reads them); `dice/...` group the same numbers
  per domain in TensorBoard: `dice/mean`, `dice/<domain>/mean`, `dice/<domain>/<class>`.
  """
  md = float(np.mean([r["mean_dice"] for r in results.values()]))
  out = {"val/mean_dice": md, **{f"val/{n}": r["mean_dice"] for n, r in results.items()},
         "dice/mean": md}
  for n, r in results.items():
    out[f"dice/{n}/mean"] = r["mean_dice"]
    out.update({f"dice/{n}/{c}": v for c, v in r["dice"].items()})
  return out


def log_evaluation(logger, step: int, results: dict) -> None:
  """One metrics.jsonl record and TensorBoard scalars of an evaluation (`evaluation_scalars`)."""
  logger.scalars(step, evaluation_scalars(results))
