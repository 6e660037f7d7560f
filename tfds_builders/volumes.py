"""What the NIfTI-folder builders share (`msd`, `nnunet`): cases, checks, splits, examples.

Each builder parses its own folder layout into a `Task` (the cases, their
files, the channel and label names); from there everything is common: the
header checks of every case before any example is written, the seeded fold
split, the target spacing (config, else the training median), the train-split
CT statistics, the dataset metadata and the examples, each preprocessed by
`u2net_jax.data.preprocess.preprocess_case`. Bad input stops the build with
one `DataError` naming the file and the problem.

Imports no TFDS at module level (`common.example` imports nothing heavy), so
a folder can be parsed — e.g. to learn its domain's channels and classes —
without it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Iterator, Sequence

import numpy as np

from tfds_builders import common
from u2net_jax.data import nifti
from u2net_jax.data import preprocess
from u2net_jax.errors import ConfigError, DataError, InputError

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class Case:
  case_id: str
  image_paths: tuple[str, ...]  # one file, or nnU-Net channel files.
  label_path: str | None


@dataclasses.dataclass
class Task:
  """A parsed dataset folder.

  Attributes:
    channel_key: how its dataset.json calls the channel list, in messages
      ('modalities' for MSD's `modality`).
  """
  folder: str
  json_path: str
  name: str
  channel_names: list[str]
  modality: str  # 'CT' or 'MRI' (every non-CT modality).
  label_names: dict[int, str]  # As in dataset.json, before merging.
  training: list[Case]
  test: list[Case]
  channel_key: str = "modalities"


# ------------------------------------------------------------- configs


def check_config(cfg, kind: str) -> None:
  """Casts and checks the fields every volume builder config has (MsdConfig's).

  `kind` names the builder in messages ('MSD', 'nnU-Net').
  """
  cfg.num_channels = int(cfg.num_channels)
  if cfg.target_spacing is not None:
    cfg.target_spacing = tuple(float(s) for s in cfg.target_spacing)
    if len(cfg.target_spacing) != 3 or not all(
        np.isfinite(s) and s > 0 for s in cfg.target_spacing):
      raise ConfigError(f"{kind} config {cfg.name!r}: target_spacing {cfg.target_spacing} "
                        "must be 3 positive mm values (z, y, x).")
  cfg.merge_labels = tuple((int(a), int(b)) for a, b in cfg.merge_labels)
  sources = [a for a, _ in cfg.merge_labels]
  if len(set(sources)) != len(sources) or any(
      b in sources or a == b for a, b in cfg.merge_labels) or 0 in sources:
    raise ConfigError(f"{kind} config {cfg.name!r}: merge_labels {cfg.merge_labels} must map "
                      "distinct non-background labels to labels that are not merged away.")
  if not cfg.task_folder:
    raise ConfigError(f"{kind} config {cfg.name!r}: task_folder is empty.")
  if cfg.num_channels < 1:
    raise ConfigError(f"{kind} config {cfg.name!r}: num_channels must be >= 1.")
  if cfg.num_folds < 2 or not 0 <= cfg.fold < cfg.num_folds:
    raise ConfigError(f"{kind} config {cfg.name!r}: fold {cfg.fold} must be in "
                      f"[0, num_folds={cfg.num_folds}) with num_folds >= 2.")
  if cfg.normalization not in preprocess.SCHEMES:
    raise ConfigError(f"{kind} config {cfg.name!r}: normalization {cfg.normalization!r} "
                      f"is not one of {preprocess.SCHEMES}.")


def _fmt(x: float) -> str:
  return f"{x:g}".replace(".", "p").replace("-", "m")


def variant_parts(*, fold: int, num_folds: int, seed: int, normalization: str, merge,
                  base_merge, spacing, base_spacing) -> list[str]:
  """Name parts of the settings that differ from a config's defaults, e.g. ['fold2', 'official'].

  A variant's dataset is stored under `<base name>_<parts joined by _>`.
  """
  parts = []
  if (fold, num_folds) != (0, 5):
    parts.append(f"fold{fold}" + (f"of{num_folds}" if num_folds != 5 else ""))
  if seed:
    parts.append(f"seed{seed}")
  if normalization != "nnunet":
    parts.append(normalization)
  if merge != base_merge:
    parts.append("merge" + "_".join(f"{a}to{b}" for a, b in merge) if merge else "nomerge")
  if spacing != base_spacing:
    parts.append("sp" + "x".join(_fmt(s) for s in spacing))
  return parts


def fold_split(case_ids: Sequence[str], fold: int, num_folds: int = 5,
               seed: int = 0) -> tuple[list[str], list[str]]:
  """(train ids, validation ids): fold `fold` of a seeded split of sorted ids.

  Over folds 0..num_folds-1 the validation sets are disjoint and cover all
  ids; the result depends only on the set of ids, num_folds and seed.
  """
  ids = sorted(case_ids)
  order = np.random.default_rng(seed).permutation(len(ids))
  chunks = np.array_split(order, num_folds)
  val = sorted(ids[i] for i in chunks[fold])
  val_set = set(val)
  return [i for i in ids if i not in val_set], val


# ------------------------------------------------------------ dataset.json


def load_json(path: str):
  if not os.path.isfile(path):
    raise DataError(f"{path}: dataset.json not found.")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: malformed JSON ({e}).") from e


def strip_ext(path: str) -> str:
  base = os.path.basename(path)
  for ext in NIFTI_ENDINGS:
    if base.endswith(ext):
      return base[:-len(ext)]
  return base


def label_map(task: Task, merges) -> tuple[np.ndarray, list[str]]:
  """(lut: dataset.json id -> our class id, class names after merging)."""
  for a, b in merges:
    if a not in task.label_names or b not in task.label_names:
      raise DataError(f"{task.json_path}: merge_labels pair ({a}, {b}) refers to a label "
                      f"not in 'labels' {task.label_names}.")
  target = dict(merges)
  kept = [k for k in sorted(task.label_names) if k not in target]
  new_id = {k: i for i, k in enumerate(kept)}
  lut = np.zeros(max(task.label_names) + 1, np.uint8)
  for k in task.label_names:
    lut[k] = new_id[target.get(k, k)]
  return lut, [task.label_names[k] for k in kept]


# -------------------------------------------------------------- loading


def check_headers(case: Case, task: Task) -> nifti.NiftiMeta:
  """Header-only checks of one case (cheap, run on every case before any
  example is written); returns the image's geometry."""
  try:
    metas = [nifti.read_meta(p) for p in case.image_paths]
    for m in metas[1:]:
      nifti.check_same_geometry(metas[0], m)
    channels = sum(m.num_channels for m in metas)
    if channels != len(task.channel_names):
      raise InputError(f"{case.image_paths[0]}: {channels} channels, but {task.json_path} lists "
                       f"{len(task.channel_names)} {task.channel_key} {task.channel_names}.")
    if case.label_path:
      label = nifti.read_meta(case.label_path)
      if label.num_channels != 1:
        raise InputError(f"{case.label_path}: a label map must be 3D, got "
                         f"{label.num_channels} channels.")
      nifti.check_same_geometry(metas[0], label)
  except InputError as e:
    raise DataError(f"Case {case.case_id!r}: {e}") from e
  return metas[0]


def load_case(case: Case, task: Task):
  """(image (D, H, W, C) float32, raw label int32 or None, meta), all checked."""
  try:
    if len(case.image_paths) == 1:
      image, meta = nifti.load_image(case.image_paths[0])
    else:
      image, meta = nifti.load_channels(case.image_paths)
    label = None
    if case.label_path:
      label, label_meta = nifti.load_label(case.label_path)
      nifti.check_same_geometry(meta, label_meta)
  except InputError as e:
    raise DataError(f"Case {case.case_id!r}: {e}") from e
  if image.shape[-1] != len(task.channel_names):
    raise DataError(f"Case {case.case_id!r}: {case.image_paths[0]}: {image.shape[-1]} channels, "
                    f"but {task.json_path} lists {len(task.channel_names)} {task.channel_key}.")
  if label is not None:
    counts = np.bincount(label.ravel(), minlength=max(task.label_names) + 1) \
        if label.max() <= 255 else None
    present = (set(np.flatnonzero(counts).tolist()) if counts is not None
               else set(np.unique(label).tolist()))
    unknown = sorted(present - set(task.label_names))
    if unknown:
      raise DataError(f"Case {case.case_id!r}: {case.label_path}: label values {unknown} are "
                      f"not listed in {task.json_path} 'labels' {sorted(task.label_names)}.")
  return image, label, meta


def median_spacing(metas: Sequence[nifti.NiftiMeta]) -> tuple[float, float, float]:
  """Per-axis median spacing, mm (z, y, x): the target grid when a config sets none."""
  return tuple(float(s) for s in np.median([m.spacing for m in metas], axis=0))


# --------------------------------------------------------------- builders


def dataset_info(builder, homepage: str):
  """The `tfds.core.DatasetInfo` of a volume builder: the shared features, its module's summary."""
  import sys  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  doc = sys.modules[type(builder).__module__].__doc__
  return tfds.core.DatasetInfo(
      builder=builder,
      description=doc.split("\n\n")[0],
      features=common.features(builder.builder_config.num_channels),
      homepage=homepage,
      metadata=tfds.core.MetadataDict(),
  )


def source_folder(builder, dl_manager, kind: str) -> str:
  """The builder config's `task_folder`: absolute, or under TFDS's manual_dir.

  `kind` names the folder in the message ("MSD config …: task folder",
  "nnU-Net config …: dataset folder").
  """
  folder = builder.builder_config.task_folder
  if os.path.isabs(folder):
    return folder
  try:
    manual_dir = os.fspath(dl_manager.manual_dir)
  except (AssertionError, ValueError) as e:
    raise DataError(f"{kind.format(name=repr(builder.builder_config.name))} {folder!r} is "
                    f"relative, but the manual_dir is missing or empty ({e}).") from e
  return os.path.join(manual_dir, folder)


def split_generators(builder, task: Task) -> dict:
  """The body of a volume builder's `_split_generators` once its folder is parsed.

  Checks every case's headers, splits `training` by the config's fold, fills
  `builder.info.metadata` and returns {split: builder._generate_examples(...)}
  ('test' only if the task has test cases).
  """
  cfg = builder.builder_config
  lut, class_names = label_map(task, cfg.merge_labels)
  metas = {c.case_id: check_headers(c, task) for c in task.training + task.test}

  train_ids, val_ids = fold_split([c.case_id for c in task.training], cfg.fold,
                                  cfg.num_folds, cfg.seed)
  by_id = {c.case_id: c for c in task.training}
  train = [by_id[i] for i in train_ids]
  val = [by_id[i] for i in val_ids]

  if cfg.target_spacing is not None:
    target = tuple(cfg.target_spacing)
  else:
    target = median_spacing([metas[c.case_id] for c in task.training])

  stats = None
  if task.modality == "CT" and cfg.normalization == "nnunet":
    # Train split only: validation/test intensities must not leak in.
    pairs_a, pairs_b = itertools.tee(load_case(c, task)[:2] for c in train)
    try:
      stats = preprocess.ct_stats((p[0] for p in pairs_a), (p[1] for p in pairs_b))
    except InputError as e:
      raise DataError(f"{task.json_path}: CT statistics of the train split: {e}") from e

  md = builder.info.metadata
  md["dataset_name"] = task.name
  md["task_folder"] = cfg.task_folder
  md["modality"] = task.modality
  md["channel_names"] = task.channel_names
  md["class_names"] = class_names
  md["label_map"] = {str(k): int(lut[k]) for k in sorted(task.label_names)}
  md["target_spacing"] = [float(s) for s in target]
  md["normalization"] = cfg.normalization
  md["ct_stats"] = stats
  md["fold"] = cfg.fold
  md["num_folds"] = cfg.num_folds
  md["seed"] = cfg.seed
  md["train_cases"] = train_ids
  md["validation_cases"] = val_ids
  md["test_cases"] = [c.case_id for c in task.test]

  ctx = dict(task=task, lut=lut, num_classes=len(class_names), target=target, stats=stats)
  splits = {"train": builder._generate_examples(train, **ctx),  # pylint: disable=protected-access
            "validation": builder._generate_examples(val, **ctx)}  # pylint: disable=protected-access
  if task.test:
    splits["test"] = builder._generate_examples(task.test, **ctx)  # pylint: disable=protected-access
  return splits


def generate_examples(cases, *, task: Task, lut, num_classes: int, target, stats,
                      normalization: str) -> Iterator[tuple[str, dict]]:
  """(case id, example) of each case: loaded, checked, labels mapped, preprocessed."""
  for case in cases:
    image, label, meta = load_case(case, task)
    if label is not None:
      label = lut[label]
    try:
      out = preprocess.preprocess_case(
          image, meta.spacing, task.modality, target, stats=stats, label=label,
          num_classes=num_classes, scheme=normalization)
    except InputError as e:
      raise DataError(f"Case {case.case_id!r} ({case.image_paths[0]}): {e}") from e
    yield case.case_id, common.example(
        out["image"], out["label"], spacing=out["spacing"],
        original_spacing=out["original_spacing"], original_shape=out["original_shape"],
        affine=meta.affine, crop_box=out["crop_box"], case_id=case.case_id,
        has_label=label is not None)
