"""Whole-volume labels: the sliding window, through the official resize when a domain has one.

A domain with a source patch (`data.source_patch`, `data/rescale.py`) is
predicted as the official code does (evaluate.py `batch_segmentation`): the
volume zero-padded to ≥ the source patch, resized by patch/source per axis,
windows of the model's patch, and the labels resized back (nearest) and
un-padded; other domains go straight to `sliding_window.predict_labels`.
Evaluation, predict and export all call `predict_labels` here.

Shapes: image (D, H, W, C) float32 → labels (D, H, W) uint8 on the same grid.
"""

from __future__ import annotations

import numpy as np

# Through the module (not its names): tests count the resizes by patching it.
from u2net_jax.data import rescale
from u2net_jax.errors import InputError
from u2net_jax.infer import sliding_window


def predict_labels(image: np.ndarray, predict_fn, patch, num_classes: int, *,
                   source_patch=None, keep_probabilities: bool = False,
                   stats: dict | None = None, **kw):
  """`sliding_window.predict_labels`, through the official resize when `source_patch` is set.

  Args:
    image: (D, H, W, C) float32 preprocessed volume.
    predict_fn, patch, num_classes, **kw: as `sliding_window.predict_labels` (windows
      always have the model's `patch`).
    source_patch: the domain's source patch, or None (no resize).
    keep_probabilities: also return probabilities; resized back linearly, so
      at class borders their arg-max may differ from the labels, which are the
      official nearest resize of the resized grid's arg-max.
    stats: as `sliding_window.predict_labels`, plus 'resized_grid' when resizing.
  The padded and resized volumes are held whole (the window accumulator stays
  one window deep).
  Returns:
    (labels uint8 (D, H, W), probabilities float16 (D, H, W, K) or None), on
    the grid of `image`.
  """
  patch = tuple(int(p) for p in patch)
  if source_patch is None or tuple(int(s) for s in source_patch) == patch:
    return sliding_window.predict_labels(image, predict_fn, patch, num_classes,
                                 keep_probabilities=keep_probabilities, stats=stats, **kw)
  if image.ndim != 4:
    raise InputError(f"sliding window expects (D, H, W, C), got shape {image.shape}.")
  padded, before = rescale.pad_to_patch(image, source_patch)
  grid = padded.shape[:3]
  resized = rescale.resize_image(padded, rescale.scaled_shape(grid, source_patch, patch))
  del padded
  if stats is not None:
    stats["resized_grid"] = resized.shape[:3]
  labels, probs = sliding_window.predict_labels(resized, predict_fn, patch, num_classes,
                                        keep_probabilities=keep_probabilities, stats=stats, **kw)
  del resized
  crop = tuple(slice(b, b + n) for b, n in zip(before, image.shape[:3]))
  labels = np.ascontiguousarray(rescale.resize_label(labels, grid)[crop])
  if probs is not None:
    probs = rescale.resize_probabilities(probs, grid)[crop]
    probs = np.ascontiguousarray(probs.astype(np.float16))
  return labels, probs
