"""`msd`: Medical Segmentation Decathlon tasks (or any MSD-layout folder) in TFDS.

A task folder (`<manual_dir>/Task02_Heart/`) holds `dataset.json`, `imagesTr/`,
`labelsTr/` and `imagesTs/`; paths in dataset.json are relative to the task
folder. Images are 3D or 4D NIfTI (channels on the 4th axis), or nnU-Net-style
channel files `case_0000.nii.gz, case_0001.nii.gz, ...` next to the listed
path. macOS `._*` files of the MSD archives are ignored.

Splits: `train` / `validation` = a seeded `num_folds`-fold split of
dataset.json's `training` list (`fold` is validation), `test` = its `test` list
(unlabeled: `has_label` False, label zeros; omitted if the list is empty).
Every example is preprocessed by `u2net_jax.data.preprocess.preprocess_case`
(crop to non-zero -> resample to `target_spacing` -> normalize); what is needed
to invert it is stored per example (see tfds_builders/common.py) and in
`info.metadata`.

Build (with `manual_dir` holding the task folders):

  common.build_atomically(
      lambda d: msd.Msd(config="heart", data_dir=d, file_format="array_record"),
      data_dir, manual_dir="/data/msd")

Other folds / settings of a task: `config=msd.task_config("heart", fold=2)`.
Any folder in MSD layout: `config=msd.custom_config("my_task", "/abs/TaskXX")`.

Bad input (missing/malformed files, mismatching geometry, unknown label
values, NaN voxels, wrong channel counts, ...) stops the build with one
`DataError` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common
from u2net_jax.data import nifti
from u2net_jax.data import preprocess
from u2net_jax.domains import MSD_DOMAINS
from u2net_jax.errors import ConfigError, DataError, InputError

# name -> (task folder, input channels). Channel counts are needed before any
# file is read (the features are declared in `_info`).
TASKS = {
    "brain_tumour": ("Task01_BrainTumour", 4),
    "heart": ("Task02_Heart", 1),
    "liver": ("Task03_Liver", 1),
    "hippocampus": ("Task04_Hippocampus", 1),
    "prostate": ("Task05_Prostate", 2),
    "lung": ("Task06_Lung", 1),
    "pancreas": ("Task07_Pancreas", 1),
    "hepatic_vessel": ("Task08_HepaticVessel", 1),
    "spleen": ("Task09_Spleen", 1),
    "colon": ("Task10_Colon", 1),
}
# The paper segments the organ only: its tumour label becomes organ (2 classes).
DEFAULT_MERGES = {"liver": ((2, 1),), "pancreas": ((2, 1),)}


@dataclasses.dataclass(eq=False)
class MsdConfig(tfds.core.BuilderConfig):
  """One MSD task with its split and preprocessing settings.

  Attributes:
    task_folder: folder in MSD layout, relative to manual_dir (or absolute).
    num_channels: input channels (must match dataset.json's `modality`).
    target_spacing: mm (z, y, x) of the stored grid; None = the per-axis
      median spacing of all `training` cases (all folds, so every fold of a
      task shares one grid), computed at build time.
    merge_labels: (from, to) label pairs applied before anything else, e.g.
      ((2, 1),) = tumour -> organ; the remaining labels are renumbered
      0..K-1 in increasing order.
    fold: validation fold, in [0, num_folds).
    num_folds: folds of the seeded split of `training`.
    seed: seed of that split.
    normalization: 'nnunet' or 'official' (see u2net_jax/data/preprocess.py).
  """
  task_folder: str = ""
  num_channels: int = 1
  target_spacing: tuple[float, float, float] | None = None
  merge_labels: tuple[tuple[int, int], ...] = ()
  fold: int = 0
  num_folds: int = 5
  seed: int = 0
  normalization: str = "nnunet"

  def __post_init__(self):
    self.num_channels = int(self.num_channels)
    if self.target_spacing is not None:
      self.target_spacing = tuple(float(s) for s in self.target_spacing)
      if len(self.target_spacing) != 3 or not all(
          np.isfinite(s) and s > 0 for s in self.target_spacing):
        raise ConfigError(f"MSD config {self.name!r}: target_spacing {self.target_spacing} "
                          "must be 3 positive mm values (z, y, x).")
    self.merge_labels = tuple((int(a), int(b)) for a, b in self.merge_labels)
    sources = [a for a, _ in self.merge_labels]
    if len(set(sources)) != len(sources) or any(
        b in sources or a == b for a, b in self.merge_labels) or 0 in sources:
      raise ConfigError(f"MSD config {self.name!r}: merge_labels {self.merge_labels} must map "
                        "distinct non-background labels to labels that are not merged away.")
    if not self.task_folder:
      raise ConfigError(f"MSD config {self.name!r}: task_folder is empty.")
    if self.num_channels < 1:
      raise ConfigError(f"MSD config {self.name!r}: num_channels must be >= 1.")
    if self.num_folds < 2 or not 0 <= self.fold < self.num_folds:
      raise ConfigError(f"MSD config {self.name!r}: fold {self.fold} must be in "
                        f"[0, num_folds={self.num_folds}) with num_folds >= 2.")
    if self.normalization not in preprocess.SCHEMES:
      raise ConfigError(f"MSD config {self.name!r}: normalization {self.normalization!r} "
                        f"is not one of {preprocess.SCHEMES}.")


def _task_defaults(task: str) -> dict:
  folder, channels = TASKS[task]
  spacing = MSD_DOMAINS[task].spacing if task in MSD_DOMAINS else None
  return dict(task_folder=folder, num_channels=channels, target_spacing=spacing,
              merge_labels=DEFAULT_MERGES.get(task, ()))


def _make_registered(task: str) -> MsdConfig:
  d = _task_defaults(task)
  spacing = (f"{d['target_spacing']} mm" if d["target_spacing"]
             else "the median spacing of the training cases")
  merge = f", labels merged {d['merge_labels']}" if d["merge_labels"] else ""
  return MsdConfig(name=task, description=f"MSD {d['task_folder']}, fold 0 of 5, {spacing}"
                   f"{merge}, nnU-Net normalization.", **d)


_REGISTERED = {task: _make_registered(task) for task in TASKS}


def _fmt(x: float) -> str:
  return f"{x:g}".replace(".", "p").replace("-", "m")


def task_config(task: str, *, fold: int = 0, num_folds: int = 5, seed: int = 0,
                normalization: str = "nnunet", merge_labels=None,
                target_spacing=None) -> MsdConfig:
  """The config of MSD `task` with other settings; named after what differs.

  Returns the registered config itself when nothing differs (TFDS requires
  that), else e.g. `heart_fold2_official`, whose dataset is stored apart.
  merge_labels / target_spacing None = the task's defaults.
  """
  if task not in TASKS:
    raise ConfigError(f"Unknown MSD task {task!r}; known: {sorted(TASKS)}.")
  base = _REGISTERED[task]
  merge = base.merge_labels if merge_labels is None else tuple(
      (int(a), int(b)) for a, b in merge_labels)
  spacing = base.target_spacing if target_spacing is None else tuple(
      float(s) for s in target_spacing)
  parts = [task]
  if (fold, num_folds) != (0, 5):
    parts.append(f"fold{fold}" + (f"of{num_folds}" if num_folds != 5 else ""))
  if seed:
    parts.append(f"seed{seed}")
  if normalization != "nnunet":
    parts.append(normalization)
  if merge != base.merge_labels:
    parts.append("merge" + "_".join(f"{a}to{b}" for a, b in merge) if merge else "nomerge")
  if spacing != base.target_spacing:
    parts.append("sp" + "x".join(_fmt(s) for s in spacing))
  if len(parts) == 1:
    return base
  return MsdConfig(name="_".join(parts), description=f"{base.description} Variant: "
                   f"{' '.join(parts[1:])}.", task_folder=base.task_folder,
                   num_channels=base.num_channels, target_spacing=spacing,
                   merge_labels=merge, fold=fold, num_folds=num_folds, seed=seed,
                   normalization=normalization)


def custom_config(name: str, task_folder: str, *, target_spacing=None, merge_labels=(),
                  fold: int = 0, num_folds: int = 5, seed: int = 0,
                  normalization: str = "nnunet", num_channels: int | None = None,
                  manual_dir: str | None = None, description: str | None = None) -> MsdConfig:
  """A config for any folder in MSD layout.

  Args:
    name: config name = the dataset's sub-directory; use a new name for other
      settings (a dataset already built under a name is not rebuilt unless
      overwrite=True).
    task_folder: the folder, absolute or relative to the build's manual_dir.
    num_channels: None = count dataset.json's `modality` entries now (read
      from `task_folder`, joined to `manual_dir` if given and relative).
    Others: see `MsdConfig`.
  """
  if name in _REGISTERED:
    raise ConfigError(f"Config name {name!r} is a registered MSD task; use "
                      f"task_config({name!r}, ...) or another name.")
  if num_channels is None:
    folder = os.path.join(manual_dir, task_folder) if manual_dir else task_folder
    json_path = os.path.join(folder, "dataset.json")
    num_channels = len(_modalities(_load_json(json_path), json_path))
  return MsdConfig(name=name, description=description or f"MSD-layout folder {task_folder}.",
                   task_folder=task_folder, num_channels=num_channels,
                   target_spacing=target_spacing, merge_labels=merge_labels, fold=fold,
                   num_folds=num_folds, seed=seed, normalization=normalization)


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


@dataclasses.dataclass(frozen=True)
class _Case:
  case_id: str
  image_paths: tuple[str, ...]  # one file, or nnU-Net channel files.
  label_path: str | None


@dataclasses.dataclass
class _Task:
  folder: str
  json_path: str
  name: str
  channel_names: list[str]
  modality: str  # 'CT' or 'MRI' (every non-CT modality).
  label_names: dict[int, str]  # As in dataset.json, before merging.
  training: list[_Case]
  test: list[_Case]


def _load_json(path: str):
  if not os.path.isfile(path):
    raise DataError(f"{path}: dataset.json not found.")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: malformed JSON ({e}).") from e


def _modalities(meta, json_path: str) -> list[str]:
  """dataset.json's `modality` as a list in channel order."""
  mod = meta.get("modality") if isinstance(meta, dict) else None
  if not isinstance(mod, dict) or not mod:
    raise DataError(f"{json_path}: needs a non-empty 'modality' object, e.g. {{\"0\": \"CT\"}}.")
  if sorted(mod) != sorted(str(c) for c in range(len(mod))):
    raise DataError(f"{json_path}: 'modality' keys {sorted(mod)} must be "
                    f"\"0\"..\"{len(mod) - 1}\".")
  return [str(mod[str(c)]) for c in range(len(mod))]


def _strip_ext(path: str) -> str:
  base = os.path.basename(path)
  for ext in (".nii.gz", ".nii"):
    if base.endswith(ext):
      return base[:-len(ext)]
  return base


def _resolve_image(folder: str, rel: str, num_channels: int, json_path: str) -> tuple[str, ...]:
  """The listed file, else its nnU-Net channel files `<stem>_0000.nii.gz`, ..."""
  path = os.path.normpath(os.path.join(folder, rel))
  if os.path.isfile(path):
    return (path,)
  stem = os.path.join(os.path.dirname(path), _strip_ext(path))
  for ext in (".nii.gz", ".nii"):
    files = tuple(f"{stem}_{c:04d}{ext}" for c in range(num_channels))
    if all(os.path.isfile(f) for f in files):
      return files
  raise DataError(f"{path}: image file listed in {json_path} not found.")


def _read_task(folder: str, cfg: MsdConfig) -> _Task:
  """Parses and checks dataset.json and that its files exist."""
  if not os.path.isdir(folder):
    raise DataError(f"{folder}: MSD task folder not found (config {cfg.name!r}, "
                    f"task_folder {cfg.task_folder!r}).")
  json_path = os.path.join(folder, "dataset.json")
  meta = _load_json(json_path)
  if not isinstance(meta, dict):
    raise DataError(f"{json_path}: must hold a JSON object.")
  channel_names = _modalities(meta, json_path)
  if len(channel_names) != cfg.num_channels:
    raise DataError(f"{json_path}: lists {len(channel_names)} modalities {channel_names}, but "
                    f"config {cfg.name!r} expects {cfg.num_channels} channels.")
  is_ct = [m.upper() == "CT" for m in channel_names]
  if any(is_ct) and not all(is_ct):
    raise DataError(f"{json_path}: mixing CT and non-CT channels {channel_names} is not supported.")
  labels = meta.get("labels")
  try:
    label_names = {int(k): str(v) for k, v in labels.items()}
  except (AttributeError, ValueError, TypeError) as e:
    raise DataError(f"{json_path}: 'labels' must map integer ids to names, got {labels!r}.") from e
  if 0 not in label_names or len(label_names) < 2 or min(label_names) < 0 \
      or max(label_names) > 255:
    raise DataError(f"{json_path}: 'labels' {labels!r} needs background \"0\" and at least one "
                    "other class, ids in [0, 255].")

  images_tr = os.path.join(folder, "imagesTr")
  listed = os.listdir(images_tr) if os.path.isdir(images_tr) else []
  if not any(nifti.is_nifti_path(f) and not nifti.is_junk_path(f) for f in listed):
    raise DataError(f"{images_tr}: no NIfTI training images (missing or empty imagesTr).")

  training = meta.get("training")
  if not isinstance(training, list) or not training:
    raise DataError(f"{json_path}: 'training' must be a non-empty list of "
                    "{\"image\": ..., \"label\": ...}.")
  cases = []
  for entry in training:
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) \
        or not isinstance(entry.get("label"), str):
      raise DataError(f"{json_path}: training entry {entry!r} needs 'image' and 'label' paths.")
    if nifti.is_junk_path(entry["image"]):
      continue
    label = os.path.normpath(os.path.join(folder, entry["label"]))
    if not os.path.isfile(label):
      raise DataError(f"{label}: label file listed in {json_path} not found.")
    images = _resolve_image(folder, entry["image"], cfg.num_channels, json_path)
    cases.append(_Case(_strip_ext(entry["image"]), images, label))
  test = []
  for entry in meta.get("test") or []:
    rel = entry.get("image") if isinstance(entry, dict) else entry
    if not isinstance(rel, str):
      raise DataError(f"{json_path}: test entry {entry!r} is not a path.")
    if nifti.is_junk_path(rel):
      continue
    test.append(_Case(_strip_ext(rel), _resolve_image(folder, rel, cfg.num_channels, json_path),
                      None))
  for split, split_cases in (("training", cases), ("test", test)):
    ids = [c.case_id for c in split_cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
      raise DataError(f"{json_path}: duplicate {split} case ids {dup}.")
  if len(cases) < cfg.num_folds:
    raise DataError(f"{json_path}: {len(cases)} training cases, fewer than num_folds="
                    f"{cfg.num_folds}.")
  return _Task(folder=folder, json_path=json_path, name=str(meta.get("name", "")),
               channel_names=channel_names, modality="CT" if all(is_ct) else "MRI",
               label_names=label_names, training=cases, test=test)


def _label_map(task: _Task, merges) -> tuple[np.ndarray, list[str]]:
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


def _check_headers(case: _Case, task: _Task) -> nifti.NiftiMeta:
  """Header-only checks of one case (cheap, run on every case before any
  example is written); returns the image's geometry."""
  try:
    metas = [nifti.read_meta(p) for p in case.image_paths]
    for m in metas[1:]:
      nifti.check_same_geometry(metas[0], m)
    channels = sum(m.num_channels for m in metas)
    if channels != len(task.channel_names):
      raise InputError(f"{case.image_paths[0]}: {channels} channels, but {task.json_path} lists "
                       f"{len(task.channel_names)} modalities {task.channel_names}.")
    if case.label_path:
      label = nifti.read_meta(case.label_path)
      if label.num_channels != 1:
        raise InputError(f"{case.label_path}: a label map must be 3D, got "
                         f"{label.num_channels} channels.")
      nifti.check_same_geometry(metas[0], label)
  except InputError as e:
    raise DataError(f"Case {case.case_id!r}: {e}") from e
  return metas[0]


def _load_case(case: _Case, task: _Task):
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
                    f"but {task.json_path} lists {len(task.channel_names)} modalities.")
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


# --------------------------------------------------------------- builder


class Msd(tfds.core.GeneratorBasedBuilder):
  """Medical Segmentation Decathlon task, preprocessed for 3D U²-Net."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = list(_REGISTERED.values())
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the task archives (TaskXX_Name.tar) from http://medicaldecathlon.com/
  and extract them into manual_dir, giving e.g. <manual_dir>/Task02_Heart/
  with dataset.json, imagesTr/, labelsTr/, imagesTs/.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=common.features(self.builder_config.num_channels),
        homepage="http://medicaldecathlon.com/",
        metadata=tfds.core.MetadataDict(),
    )

  def _task_dir(self, dl_manager) -> str:
    folder = self.builder_config.task_folder
    if os.path.isabs(folder):
      return folder
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except (AssertionError, ValueError) as e:
      raise DataError(f"MSD config {self.builder_config.name!r}: task folder {folder!r} is "
                      f"relative, but the manual_dir is missing or empty ({e}).") from e
    return os.path.join(manual_dir, folder)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    task = _read_task(self._task_dir(dl_manager), cfg)
    lut, class_names = _label_map(task, cfg.merge_labels)
    metas = {c.case_id: _check_headers(c, task) for c in task.training + task.test}

    train_ids, val_ids = fold_split([c.case_id for c in task.training], cfg.fold,
                                    cfg.num_folds, cfg.seed)
    by_id = {c.case_id: c for c in task.training}
    train = [by_id[i] for i in train_ids]
    val = [by_id[i] for i in val_ids]

    if cfg.target_spacing is not None:
      target = tuple(cfg.target_spacing)
    else:
      target = tuple(float(s) for s in np.median(
          [metas[c.case_id].spacing for c in task.training], axis=0))

    stats = None
    if task.modality == "CT" and cfg.normalization == "nnunet":
      # Train split only: validation/test intensities must not leak in.
      pairs_a, pairs_b = itertools.tee(_load_case(c, task)[:2] for c in train)
      try:
        stats = preprocess.ct_stats((p[0] for p in pairs_a), (p[1] for p in pairs_b))
      except InputError as e:
        raise DataError(f"{task.json_path}: CT statistics of the train split: {e}") from e

    md = self.info.metadata
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
    splits = {"train": self._generate_examples(train, **ctx),
              "validation": self._generate_examples(val, **ctx)}
    if task.test:
      splits["test"] = self._generate_examples(task.test, **ctx)
    return splits

  def _generate_examples(self, cases, *, task, lut, num_classes, target,
                         stats) -> Iterator[tuple[str, dict]]:
    for case in cases:
      image, label, meta = _load_case(case, task)
      if label is not None:
        label = lut[label]
      try:
        out = preprocess.preprocess_case(
            image, meta.spacing, task.modality, target, stats=stats, label=label,
            num_classes=num_classes, scheme=self.builder_config.normalization)
      except InputError as e:
        raise DataError(f"Case {case.case_id!r} ({case.image_paths[0]}): {e}") from e
      yield case.case_id, common.example(
          out["image"], out["label"], spacing=out["spacing"],
          original_spacing=out["original_spacing"], original_shape=out["original_shape"],
          affine=meta.affine, crop_box=out["crop_box"], case_id=case.case_id,
          has_label=label is not None)
