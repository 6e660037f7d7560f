"""Validation during and after training: per-domain metrics of the current params."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from u2net_jax import config_utils
from u2net_jax.data import reference
from u2net_jax.infer import evaluate
from u2net_jax.train.state import ModelParts


def make_predict_fn(parts: ModelParts, device):
  """for_domain(params, index) -> fn: windows (N, D, H, W, C) → probabilities (N, D, H, W, K)."""
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
  max_cases = config.eval.max_cases
  if during_training and config.eval.during_training_max_cases:
    max_cases = config.eval.during_training_max_cases
  for i, spec in enumerate(specs):
    examples = val_examples[spec.name]
    if max_cases:
      examples = examples[:max_cases]
    t0 = time.time()
    # eval.dice_grid=original: score against the source NIfTI label (official).
    ref = (reference.msd_reference(config.data.manual_dir, spec.name)
           if config.eval.dice_grid == "original" else None)
    res = evaluate.evaluate_domain(predict_for(params, i), examples, spec, patch, config.eval,
                                   channels=channels,
                                   source_patch=config_utils.source_patch_for(config, spec.name),
                                   reference=ref)
    log(f"  eval {spec.name}: mean Dice {res['mean_dice']:.3f} "
        f"({res['cases']} cases, {time.time() - t0:.1f} s)")
    out[spec.name] = res
  return out
