"""Evaluate a workdir or an export on a dataset split (the Colab notebook's engine).

`open_predictors(path)` gives one `predict.Predictor` per domain of a workdir
(its best checkpoint) or the one domain of an export folder; `cases(...)`
reads a split of a domain's TFDS dataset (already preprocessed); `evaluate`
predicts every case on the model's grid and scores it per class (Dice), keeping
the arrays of the first few cases for overlays.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from u2net_jax import metrics
from u2net_jax.infer import model_source, postprocess, predict


def open_predictors(path: str, domains: str | Sequence[str] = "", *, log=print):
  """(predictors, config or None) for a workdir or an export folder.

  Args:
    path: a workdir (best, else latest checkpoint) or `W/export/<domain>`
      (`model_source.open_source` tells which).
    domains: names to keep ('a,b' or a list; empty = all).
  """
  source = model_source.open_source(path)
  return source.predictors(domains, log=log), source.config


def cases(predictor: predict.Predictor, split: str = "validation", *, config=None,
          data_dir: str = "", log=print) -> list[dict]:
  """The examples of `split` of the predictor's dataset (labelled or not).

  `data_dir` replaces the TFDS data_dir the model was trained with (the
  dataset's `<builder>/<config>/<version>` is looked up under it).
  """
  from u2net_jax.data import datasets  # pylint: disable=g-import-not-at-top
  plan = predictor.plan
  directory = plan.dataset_dir
  if data_dir and directory:
    directory = os.path.join(data_dir, *directory.rstrip(os.sep).split(os.sep)[-3:])
  if directory and os.path.isdir(directory):
    return datasets.read_examples(directory, split)
  if config is None:
    raise FileNotFoundError(f"dataset of {plan.name!r} not found at {directory!r}; pass "
                            "data_dir (the TFDS data_dir holding it)")
  return predict.validation_examples(plan, config, split=split, log=log)


def evaluate(predictor: predict.Predictor, examples: Sequence[dict], *, keep: int = 3,
             postprocess_mode: str = "auto", progress=None) -> list[dict]:
  """Predicts and scores each example on the model's (preprocessed) grid.

  Args:
    predictor: the domain's predictor.
    examples: dicts with image (D, H, W, C), label (D, H, W), has_label, case_id.
    keep: the first `keep` cases keep image, label and prediction arrays.
    postprocess_mode: 'auto' (stored decision), 'on' or 'off'.
    progress: called after each case.
  Returns:
    One dict per case: case_id, dice {class name: float} (empty if
    unlabelled) and, for the first `keep`, image/label/pred arrays and the
    grid's spacing (mm, z/y/x).
  """
  names = predictor.plan.class_names
  classes = predict.lcc_classes(predictor, postprocess_mode)
  out = []
  for i, ex in enumerate(examples):
    image = np.asarray(ex["image"], np.float32)
    pred, _ = predictor.predict_volume(image)
    if classes:
      pred = postprocess.keep_largest(pred, classes)
    label = np.asarray(ex["label"])
    row = {"case_id": ex["case_id"], "dice": {}}
    if bool(ex.get("has_label", True)):
      d = metrics.dice(pred, label, len(names))
      row["dice"] = {n: float(v) for n, v in zip(names[1:], d)}
    if i < keep:
      row.update(image=image, label=label, pred=pred,
                 spacing=tuple(float(v) for v in ex.get("spacing", (1.0, 1.0, 1.0))))
    out.append(row)
    if progress:
      progress()
  return out


def summary_table(results: dict[str, list[dict]]) -> list[tuple[str, str, float, int]]:
  """(domain, class, mean Dice, labelled cases) rows, plus a 'mean' row per domain."""
  rows = []
  for domain, per_case in results.items():
    scored = [r["dice"] for r in per_case if r["dice"]]
    if not scored:
      continue
    means = {c: float(np.mean([d[c] for d in scored])) for c in scored[0]}
    rows += [(domain, c, v, len(scored)) for c, v in means.items()]
    rows.append((domain, "mean", float(np.mean(list(means.values()))), len(scored)))
  return rows
