"""Reference labels on the source grid, for the Dice of `eval.dice_grid=original`.

The official 3D U²-Net code (u2net_torch_src/evaluate.py `evaluate` L326–355)
scores a prediction against the original NIfTI label `labelsTr/<case>.nii.gz`
of the MSD task folder, with tumour (2) set to organ (1) for liver and pancreas
(L330–333). `msd_reference` reads that label as the MSD builder does (same task
folder, same dataset.json entry, same NIfTI reader and the same label mapping,
`msd.DEFAULT_MERGES`), so it equals the stored label before crop and resampling.
Arrays are (D, H, W) = the NIfTI (k, j, i) axes; spacings are mm (z, y, x)
(see u2net_jax/data/nifti.py).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from u2net_jax.data import nifti
from u2net_jax.errors import DataError, InputError

# example dict -> (label uint8 (D, H, W), spacing mm (z, y, x)) on the source grid.
Reference = Callable[[dict], tuple[np.ndarray, tuple[float, float, float]]]


def _case_id(example) -> str:
  cid = example["case_id"]
  return cid.decode() if isinstance(cid, bytes) else str(cid)


def msd_reference(manual_dir: str, task_name: str, *, merge_labels=None) -> Reference:
  """The original labels of MSD task `task_name` (e.g. 'liver') under `manual_dir`.

  Args:
    manual_dir: folder holding the TaskXX_Name folders (`config.data.manual_dir`).
    task_name: an MSD task of the builder (`msd.TASKS`).
    merge_labels: None = the build's default ((2, 1) for liver and pancreas).
  Returns:
    `reference(example)` -> (label uint8 (D, H, W) with the build's class ids,
    spacing mm (z, y, x) of the label file). It checks the label's shape against
    the example's stored `original_shape`.
  Raises:
    DataError naming the file: task folder / dataset.json / listed label missing
    (now, as the build would), or, per call, an unlisted case, an unreadable
    label, label values not in dataset.json, or a shape that differs.
  """
  # Lazy: TFDS is imported only when MSD data is used (as in datasets.py).
  from tfds_builders import volumes  # pylint: disable=g-import-not-at-top
  from tfds_builders.msd import msd  # pylint: disable=g-import-not-at-top

  cfg = msd.task_config(task_name, merge_labels=merge_labels)
  folder = cfg.task_folder if os.path.isabs(cfg.task_folder) else os.path.join(
      str(manual_dir), cfg.task_folder)
  # The builder's own parser: the same folder rule, label paths and checks.
  task = msd._read_task(folder, cfg)  # pylint: disable=protected-access
  lut, _ = volumes.label_map(task, cfg.merge_labels)
  paths = {c.case_id: c.label_path for c in task.training}
  known = np.zeros(lut.size, bool)
  known[sorted(task.label_names)] = True

  def reference(example):
    case_id = _case_id(example)
    path = paths.get(case_id)
    if path is None:
      raise DataError(f"{os.path.join(folder, 'labelsTr', case_id + '.nii.gz')}: case "
                      f"{case_id!r} is not in the 'training' list of {task.json_path}, so it "
                      "has no original label for the Dice on the original grid.")
    if not os.path.isfile(path):
      raise DataError(f"{path}: label of case {case_id!r} not found (needed for "
                      "eval.dice_grid=original).")
    try:
      label, meta = nifti.load_label(path)
    except InputError as e:
      raise DataError(f"Case {case_id!r}: {e}") from e
    expected = tuple(int(s) for s in np.asarray(example["original_shape"]).reshape(-1))
    if label.shape != expected:
      raise DataError(f"{path}: label shape {label.shape} (D, H, W) differs from the stored "
                      f"original_shape {expected} of case {case_id!r}: was the dataset built "
                      f"from another copy of {folder}?")
    # Values the build would have refused (volumes.load_case) have no lut entry. Those
    # past the lut are found apart: a bincount up to them could be huge.
    beyond = label >= lut.size
    if beyond.any():
      unknown = np.unique(label[beyond]).tolist()
    else:
      counts = np.bincount(label.ravel(), minlength=lut.size)
      unknown = [i for i in np.flatnonzero(counts).tolist() if not known[i]]
    if unknown:
      raise DataError(f"{path}: label values {unknown} are not listed in {task.json_path} "
                      f"'labels' {sorted(task.label_names)}.")
    return lut[label], tuple(float(s) for s in meta.spacing)

  return reference
