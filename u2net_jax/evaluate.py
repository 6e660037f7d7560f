"""Per-domain evaluation: sliding-window prediction of whole volumes + metrics.

Metrics are computed on the preprocessed grid with its spacing (mm): Dice,
HD95 and normalized surface Dice per foreground class, averaged over cases.
`eval.postprocess=official` applies the official code's post-processing
(`postprocess.official`) to each prediction first; 'none' (default) does not.
A domain with a source patch (`data.source_patch`) is predicted through the
official whole-volume resize (`rescale.predict_labels`); metrics stay on the
preprocessed grid.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from u2net_jax import metrics, postprocess, rescale
from u2net_jax.domains import DomainSpec


def predict_volume(predict_fn, image: np.ndarray, spec: DomainSpec, patch, eval_cfg,
                   channels: int | None = None, progress=None,
                   source_patch=None) -> np.ndarray:
  """(D, H, W) uint8 arg-max labels of one volume (bounded-memory sliding window).

  `source_patch`: the domain's source patch (resized as the official code), or None.
  """
  labels, _ = rescale.predict_labels(
      image, predict_fn, patch, spec.num_classes, source_patch=source_patch,
      overlap=float(eval_cfg.overlap),
      batch_size=int(eval_cfg.window_batch), mirror=bool(eval_cfg.mirror), channels=channels,
      blend=str(eval_cfg.get("blend", "gaussian")), progress=progress)
  return labels


def evaluate_domain(predict_fn: Callable, examples: Sequence[dict], spec: DomainSpec, patch,
                    eval_cfg, *, channels: int | None = None, source_patch=None) -> dict:
  """Metrics of one domain over labelled `examples` (dicts: image, label, spacing, case_id).

  `source_patch`: see `predict_volume`.
  """
  names = spec.class_names[1:]
  k = spec.num_classes
  dices, hds, sds, per_case = [], [], [], []
  tol = float(eval_cfg.get("surface_tolerance_mm", 2.0))
  for ex in examples:
    pred = predict_volume(predict_fn, ex["image"], spec, patch, eval_cfg, channels,
                          source_patch=source_patch)
    if eval_cfg.get("postprocess", "none") == "official":
      pred = postprocess.official(pred, k, postprocess.OFFICIAL_COMPONENTS.get(spec.name, 1))
    label = np.asarray(ex["label"])
    spacing = tuple(float(s) for s in ex["spacing"])
    d = metrics.dice(pred, label, k)
    h = metrics.hd95_per_class(pred, label, spacing, k)
    s = metrics.surface_dice_per_class(pred, label, spacing, tol, k)
    dices.append(d)
    hds.append(h)
    sds.append(s)
    per_case.append({"case_id": ex["case_id"], "dice": {n: float(v) for n, v in zip(names, d)}})
  dice_mean = np.mean(dices, axis=0)
  return {
      "dice": {n: float(v) for n, v in zip(names, dice_mean)},
      "mean_dice": float(np.mean(dice_mean)),
      "hd95_mm": {n: float(v) for n, v in zip(names, np.mean(hds, axis=0))},
      "surface_dice": {n: float(v) for n, v in zip(names, np.mean(sds, axis=0))},
      "cases": len(examples),
      "per_case": per_case,
  }
