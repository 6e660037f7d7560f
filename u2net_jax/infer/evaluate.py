"""Per-domain evaluation: sliding-window prediction of whole volumes + metrics.

Dice, HD95 and normalized surface Dice per foreground class, averaged over
cases, on one of two grids (`eval.dice_grid`):
  * 'preprocessed' (default): the stored (cropped, resampled) grid against the
    stored label, with the stored spacing (mm).
  * 'original' (`:msd`, the official code's `evaluate.segment_one_image`
    L282–283 and `evaluate` L326–355): the prediction is mapped back into the
    crop box of the source volume, zeros outside (`preprocess.invert_label`
    with nearest-neighbour resampling, as the official code), and scored
    against the source NIfTI label (a `reference`, e.g.
    `data.reference.msd_reference`) with the source spacing. Only this grid
    sees reference foreground outside the crop box.
`eval.postprocess=official` applies the official code's post-processing
(`postprocess.official`) to each prediction first, on the preprocessed grid as
the official code does; 'none' does not. With post-processing the result also
has the Dice before it (`dice_raw`, `mean_dice_raw`), on the same grid. A domain with a source
patch (`data.source_patch`) is predicted through the official whole-volume
resize (`volume.predict_labels`), which returns labels on the preprocessed grid.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from u2net_jax import metrics
from u2net_jax.data import preprocess
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import DataError, InputError
from u2net_jax.infer import postprocess, volume

# What an example must carry to go back to its source grid (tfds_builders/common.py).
GEOMETRY_KEYS = ("crop_box", "original_shape", "original_spacing", "spacing")


def predict_volume(predict_fn, image: np.ndarray, spec: DomainSpec, patch, eval_cfg,
                   channels: int | None = None, progress=None,
                   source_patch=None) -> np.ndarray:
  """(D, H, W) uint8 arg-max labels of one volume (bounded-memory sliding window).

  `source_patch`: the domain's source patch (resized as the official code), or None.
  """
  labels, _ = volume.predict_labels(
      image, predict_fn, patch, spec.num_classes, source_patch=source_patch,
      overlap=eval_cfg.overlap, batch_size=eval_cfg.window_batch, mirror=eval_cfg.mirror,
      channels=channels, blend=eval_cfg.blend, progress=progress)
  return labels


def to_original_grid(pred: np.ndarray, example: dict, reference: Callable,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray, tuple]:
  """(pred, label, spacing) on the source grid of `example`.

  Args:
    pred: (D', H', W') class ids on the example's preprocessed grid.
    example: with `case_id` and GEOMETRY_KEYS (as the builders store them).
    reference: example -> (label (D, H, W), spacing mm (z, y, x)) of the source.
    num_classes: K.
  Returns:
    pred uint8 (D, H, W) (zeros outside the crop box), label (D, H, W), spacing mm.
  """
  case = example.get("case_id")
  missing = [k for k in GEOMETRY_KEYS if k not in example]
  if missing:
    raise DataError(f"Case {case!r} lacks {missing}: the Dice on the original grid needs the "
                    "geometry every builder stores (tfds_builders/common.py).")
  label, spacing = reference(example)
  label = np.asarray(label)
  spacing = tuple(float(s) for s in spacing)
  stored = np.asarray(example["original_spacing"], np.float64).reshape(-1)
  # The stored spacing is float32 of the same header: a larger gap means another file.
  if stored.shape != (3,) or not np.allclose(spacing, stored, rtol=0,
                                             atol=preprocess.SPACING_ATOL):
    raise DataError(f"Case {case!r}: reference spacing {spacing} mm differs from the stored "
                    f"original_spacing {stored.tolist()} mm.")
  try:
    # Nearest neighbour, as the official evaluation resamples (sitk nearest).
    pred = preprocess.invert_label(pred, example["crop_box"], example["original_shape"],
                                   example["original_spacing"], example["spacing"], num_classes,
                                   order=0)
  except InputError as e:
    raise DataError(f"Case {case!r}: {e}") from e
  if label.shape != pred.shape:
    raise DataError(f"Case {case!r}: reference label shape {label.shape} differs from the "
                    f"stored original_shape {pred.shape}.")
  return pred, label, spacing


def evaluate_domain(predict_fn: Callable, examples: Sequence[dict], spec: DomainSpec, patch,
                    eval_cfg, *, channels: int | None = None, source_patch=None,
                    reference: Callable | None = None,
                    on_prediction: Callable | None = None) -> dict:
  """Metrics of one domain over labelled `examples` (dicts: image, label, spacing, case_id).

  `source_patch`: see `predict_volume`.
  `on_prediction`: None, or called as (example, prediction) for each case, with
  the (D, H, W) uint8 labels on the preprocessed grid (post-processed, if
  `eval.postprocess` says so): e.g. for pictures, without predicting twice.
  `reference`: None = score on the preprocessed grid; else example -> (label
  uint8 (D, H, W), spacing mm (z, y, x)) on the source grid, and the metrics are
  computed there (`to_original_grid`; examples then need GEOMETRY_KEYS).
  The result's `grid` says which ('preprocessed' or 'original').
  """
  names = spec.class_names[1:]
  k = spec.num_classes
  dices, hds, sds, per_case, raw = [], [], [], [], []
  tol = eval_cfg.surface_tolerance_mm
  post = eval_cfg.postprocess == "official"
  for ex in examples:
    pred = predict_volume(predict_fn, ex["image"], spec, patch, eval_cfg, channels,
                          source_patch=source_patch)
    unprocessed = pred
    if post:
      pred = postprocess.official(pred, k, postprocess.OFFICIAL_COMPONENTS.get(spec.name, 1))
    if on_prediction is not None:
      on_prediction(ex, pred)
    if reference is None:
      label = np.asarray(ex["label"])
      spacing = tuple(float(s) for s in ex["spacing"])
    else:
      pred, label, spacing = to_original_grid(pred, ex, reference, k)
      if post:  # the same mapping, without reading the reference again
        unprocessed = preprocess.invert_label(
            unprocessed, ex["crop_box"], ex["original_shape"], ex["original_spacing"],
            ex["spacing"], k, order=0)
    if post:
      raw.append(metrics.dice(unprocessed, label, k))
    d = metrics.dice(pred, label, k)
    h = metrics.hd95_per_class(pred, label, spacing, k)
    s = metrics.surface_dice_per_class(pred, label, spacing, tol, k)
    dices.append(d)
    hds.append(h)
    sds.append(s)
    per_case.append({"case_id": ex["case_id"], "dice": {n: float(v) for n, v in zip(names, d)}})
  dice_mean = np.mean(dices, axis=0)
  before = {}
  if raw:
    raw_mean = np.mean(raw, axis=0)
    before = {"dice_raw": {n: float(v) for n, v in zip(names, raw_mean)},
              "mean_dice_raw": float(np.mean(raw_mean))}
  return {
      "dice": {n: float(v) for n, v in zip(names, dice_mean)},
      "mean_dice": float(np.mean(dice_mean)),
      **before,
      "hd95_mm": {n: float(v) for n, v in zip(names, np.mean(hds, axis=0))},
      "surface_dice": {n: float(v) for n, v in zip(names, np.mean(sds, axis=0))},
      "cases": len(examples),
      "grid": "preprocessed" if reference is None else "original",
      "per_case": per_case,
  }
