"""Difficulty checks: the validation Dice of the best global intensity threshold and window.

Every target has distractors of overlapping intensity, so these baselines stay
low (`threshold_baseline_dice` < 0.6, `window_baseline_dice` < 0.5) while a
small 3D CNN can learn the task.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def _dice_curves(values: np.ndarray, mask: np.ndarray, thr: np.ndarray):
  """Dice of (values > t) and (values < t) vs mask for every sorted t: (2, T)."""
  v = values.ravel()
  m = mask.ravel()
  n_gt = float(m.sum())
  t = len(thr)
  # v > thr[j]  <=>  j < searchsorted(thr, v, 'left')
  i_gt = np.searchsorted(thr, v, side="left")
  cnt = np.bincount(i_gt, minlength=t + 1)
  tp = np.bincount(i_gt, weights=m, minlength=t + 1)
  pred_gt = np.cumsum(cnt[::-1])[::-1][1:]
  tp_gt = np.cumsum(tp[::-1])[::-1][1:]
  # v < thr[j]  <=>  j >= searchsorted(thr, v, 'right')
  i_lt = np.searchsorted(thr, v, side="right")
  cnt = np.bincount(i_lt, minlength=t + 1)
  tp = np.bincount(i_lt, weights=m, minlength=t + 1)
  pred_lt = np.cumsum(cnt)[:t]
  tp_lt = np.cumsum(tp)[:t]
  out = []
  for pred, inter in ((pred_gt, tp_gt), (pred_lt, tp_lt)):
    den = pred + n_gt
    out.append(np.where(den > 0, 2 * inter / np.maximum(den, 1), 1.0))
  return np.stack(out)


def _window_dice(values: np.ndarray, mask: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Dice of (edges[a] <= values < edges[b]) vs mask for every pair a < b: (E, E).

  `edges` is sorted and starts with -inf and ends with +inf; entries with
  a >= b are -1. One histogram of the values over the edges gives every
  window's predicted and true-positive counts as differences of its cumsums.
  """
  m = mask.ravel()
  n_gt = float(m.sum())
  e = len(edges)
  # edges[k] <= v < edges[k + 1]  <=>  bin k (the infinite ends are never hit).
  bins = np.searchsorted(edges, values.ravel(), side="right") - 1
  cnt = np.concatenate([[0], np.cumsum(np.bincount(bins, minlength=e - 1))])
  tp = np.concatenate([[0], np.cumsum(np.bincount(bins, weights=m, minlength=e - 1))])
  pred = cnt[None, :] - cnt[:, None]
  inter = tp[None, :] - tp[:, None]
  den = pred + n_gt
  dice = np.where(den > 0, 2 * inter / np.maximum(den, 1), 1.0)
  return np.where(np.arange(e)[:, None] < np.arange(e)[None, :], dice, -1.0)


def _prepare(train_cases, val_cases, normalize: bool):
  """[(image (D, H, W, C) float32, label)] of both splits; z-scored per case if asked."""
  def prep(cases):
    out = []
    for c in cases:
      img = np.asarray(c["image"], np.float32)
      if normalize:
        mu = img.mean(axis=(0, 1, 2), keepdims=True)
        sd = img.std(axis=(0, 1, 2), keepdims=True) + 1e-6
        img = (img - mu) / sd
      out.append((img, np.asarray(c["label"])))
    return out

  train, val = prep(train_cases), prep(val_cases)
  if not train or not val:
    raise ValueError("The intensity baselines need at least one train and one val case.")
  return train, val


def _candidates(train, ch: int, cls: int, num_thresholds: int) -> np.ndarray:
  """Sorted unique candidate bounds: percentiles of the pooled training
  intensities of channel `ch` and as many of those inside class `cls`."""
  pct = np.linspace(0.5, 99.5, num_thresholds)
  # Subsample for the percentiles: speed, not precision, limits here.
  pool = np.concatenate([img[..., ch].ravel()[::7] for img, _ in train])
  fg = np.concatenate([img[..., ch][lab == cls] for img, lab in train])
  thr = np.percentile(pool, pct)
  if fg.size:
    thr = np.concatenate([thr, np.percentile(fg, pct)])
  return np.unique(thr)


def _val_dice(val, cls: int, predict) -> float:
  """Mean validation Dice of class `cls` for `predict(image) -> bool mask`."""
  dices = []
  for img, lab in val:
    pred = predict(img)
    gt = lab == cls
    den = pred.sum() + gt.sum()
    dices.append(1.0 if den == 0 else 2.0 * np.logical_and(pred, gt).sum() / den)
  return float(np.mean(dices))


def threshold_baseline_dice(train_cases: Iterable[dict], val_cases: Iterable[dict],
                            num_classes: int, num_thresholds: int = 64,
                            normalize: bool = False) -> float:
  """Validation Dice of the best single global intensity threshold.

  For each foreground class, every (channel, direction in {>, <}, threshold)
  is scored by its mean Dice over the training cases; the best is applied to
  the validation cases. Candidate thresholds: `num_thresholds` percentiles
  (0.5..99.5) of the pooled training intensities plus as many of the pooled
  intensities inside that class, so the search is fine where it matters.

  Args:
    train_cases: dicts with 'image' (D, H, W, C) and 'label' (D, H, W).
    val_cases: same.
    num_classes: number of classes including background.
    num_thresholds: percentiles taken from each pool.
    normalize: z-score each case's channels first (as MRI pipelines do).

  Returns:
    Mean over foreground classes of the mean validation Dice.
  """
  train, val = _prepare(train_cases, val_cases, normalize)
  scores = []
  for cls in range(1, num_classes):
    best = (-1.0, 0, 0, 0.0)
    for ch in range(train[0][0].shape[-1]):
      thr = _candidates(train, ch, cls, num_thresholds)
      curves = np.mean([_dice_curves(img[..., ch], lab == cls, thr)
                        for img, lab in train], axis=0)
      direction, j = np.unravel_index(int(np.argmax(curves)), curves.shape)
      if curves[direction, j] > best[0]:
        best = (float(curves[direction, j]), ch, int(direction), float(thr[j]))
    _, ch, direction, t = best
    scores.append(_val_dice(
        val, cls, lambda img: img[..., ch] > t if direction == 0 else img[..., ch] < t))
  return float(np.mean(scores))


def window_baseline_dice(train_cases: Iterable[dict], val_cases: Iterable[dict],
                         num_classes: int, num_thresholds: int = 64,
                         normalize: bool = False) -> float:
  """Validation Dice of the best global intensity window lo <= x < hi.

  For each foreground class, every (channel, lo, hi) is scored by its mean
  Dice over the training cases; the best is applied to the validation cases.
  Search grid: lo and hi range over the threshold baseline's candidates
  (`num_thresholds` percentiles 0.5..99.5 of the pooled training intensities
  plus as many of the intensities inside the class: <= 128 values) and
  -inf / +inf, every pair lo < hi: <= 130·129/2 windows per channel, which
  include the one-sided thresholds. Each training case is histogrammed once
  over the candidates; every window's Dice then comes from cumulative sums.

  Args and returns: as `threshold_baseline_dice`.
  """
  train, val = _prepare(train_cases, val_cases, normalize)
  scores = []
  for cls in range(1, num_classes):
    best = (-1.0, 0, -np.inf, np.inf)
    for ch in range(train[0][0].shape[-1]):
      edges = np.concatenate([[-np.inf], _candidates(train, ch, cls, num_thresholds), [np.inf]])
      grid = np.mean([_window_dice(img[..., ch], lab == cls, edges) for img, lab in train],
                     axis=0)
      a, b = np.unravel_index(int(np.argmax(grid)), grid.shape)
      if grid[a, b] > best[0]:
        best = (float(grid[a, b]), ch, float(edges[a]), float(edges[b]))
    _, ch, lo, hi = best
    scores.append(_val_dice(val, cls, lambda img: (img[..., ch] >= lo) & (img[..., ch] < hi)))
  return float(np.mean(scores))
