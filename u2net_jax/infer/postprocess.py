"""Post-processing: keep the largest connected component of a class (nnU-Net's rule).

`keep_largest(labels, classes)` sets every voxel of a listed class that is not
in that class's largest 26-connected component to background (0).

Whether to do it is decided per class on the validation cases (`decide`): a
class gets it only if it raises that class's mean validation Dice (strictly).
Decisions are stored per domain, with the checkpoint step they were made for,
in `<workdir>/postprocessing.json` (`read_decision` / `write_decision`).

`official(labels, num_classes, components)` is the official 3D U²-Net code's
post-processing (`evaluate.post_processing`, `utils.get_largest_one_component`
/ `get_largest_two_component`), used by evaluation with
`eval.postprocess=official`: per foreground class in id order, a binary closing
(18-connectivity), then its largest 18-connected component — or, for
hippocampus and prostate (`OFFICIAL_COMPONENTS`), the largest two when the
second is over a tenth of the first; a later class overwrites an earlier one.
Not reproduced (FIDELITY.md): the mask by the image's channel 0 > 0 before
normalization (HU > 0 for CT), which our datasets do not store, and the
spleen-only zeroing of the upper half of the last array axis, which depends on
the array orientation of the source files.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from u2net_jax import io, metrics

DECISIONS_FILE = "postprocessing.json"
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connectivity
_OFFICIAL_STRUCTURE = ndimage.generate_binary_structure(3, 2)  # 18-connectivity
# evaluate.post_processing: largest one component for heart, liver, pancreas,
# spleen; largest two for the others (hippocampus, prostate).
OFFICIAL_COMPONENTS = {"heart": 1, "liver": 1, "pancreas": 1, "spleen": 1,
                       "hippocampus": 2, "prostate": 2}


def _largest(mask: np.ndarray, components: int) -> np.ndarray:
  """The official get_largest_one/two_component (threshold None) of a binary mask."""
  comp, n = ndimage.label(mask, structure=_OFFICIAL_STRUCTURE)
  if n <= 1:
    return mask
  sizes = np.bincount(comp.ravel())[1:]
  order = np.argsort(sizes, kind="stable")[::-1]
  keep = [order[0] + 1]
  if components == 2 and sizes[order[1]] * 10 > sizes[order[0]]:
    keep.append(order[1] + 1)
  return np.isin(comp, keep)


def official(labels: np.ndarray, num_classes: int, components: int = 1) -> np.ndarray:
  """The official post-processing (module docstring) of (D, H, W) class ids -> uint8."""
  if components not in (1, 2):
    raise ValueError(f"components must be 1 or 2, got {components}.")
  out = np.zeros(labels.shape, np.uint8)
  for c in range(1, num_classes):
    mask = ndimage.binary_closing(labels == c, structure=_OFFICIAL_STRUCTURE)
    out[_largest(mask, components)] = c
  return out


def keep_largest(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
  """Largest connected component per class.

  Args:
    labels: (D, H, W) integer class ids.
    classes: foreground class ids to filter.
  Returns:
    A copy of `labels` where the smaller components of each listed class are 0.
  """
  out = np.array(labels, copy=True)
  for c in classes:
    mask = out == c
    if not mask.any():
      continue
    comp, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n > 1:
      sizes = np.bincount(comp.ravel())
      sizes[0] = 0
      out[mask & (comp != int(np.argmax(sizes)))] = 0
  return out


def decide(predictions: Sequence[np.ndarray], labels: Sequence[np.ndarray],
           class_names: Sequence[str]) -> dict:
  """Which classes the largest-component filter helps on labelled cases.

  Args:
    predictions: (D, H, W) predicted class ids, one per case.
    labels: (D, H, W) reference class ids, same shapes.
    class_names: all K class names, background first.
  Returns:
    {class name: {"apply": bool, "dice_before": float, "dice_after": float}}
    for each foreground class; Dice means over the cases.
  """
  k = len(class_names)
  before, after = [], []
  for pred, label in zip(predictions, labels):
    before.append(metrics.dice(pred, label, k))
    after.append([metrics.dice(keep_largest(pred, [c]), label, k)[c - 1] for c in range(1, k)])
  if not before:
    return {}
  b, a = np.mean(before, axis=0), np.mean(after, axis=0)
  return {name: {"apply": bool(a[i] > b[i]), "dice_before": float(b[i]),
                 "dice_after": float(a[i])}
          for i, name in enumerate(class_names[1:])}


def classes_to_filter(decision: dict, class_names: Sequence[str]) -> list[int]:
  """Class ids whose decision says apply."""
  return [i for i, n in enumerate(class_names) if i and decision.get(n, {}).get("apply")]


def read_decision(workdir: str, domain: str, step: int) -> dict | None:
  """The stored decision of `domain` for checkpoint `step`, or None."""
  path = os.path.join(workdir, DECISIONS_FILE)
  try:
    with open(path) as f:
      entry = json.load(f).get(domain)
  except (OSError, ValueError, AttributeError):
    return None
  if not isinstance(entry, dict) or entry.get("step") != int(step):
    return None
  return entry.get("classes")


def write_decision(workdir: str, domain: str, step: int, classes: dict, cases: int) -> None:
  """Stores `domain`'s decision (read-modify-write of the JSON file, atomic replace)."""
  path = os.path.join(workdir, DECISIONS_FILE)
  try:
    with open(path) as f:
      body = json.load(f)
    if not isinstance(body, dict):
      body = {}
  except (OSError, ValueError):
    body = {}
  body[domain] = {"step": int(step), "cases": int(cases), "classes": classes,
                  "rule": "largest connected component where it raises mean validation Dice"}
  io.write_json(path, body)
