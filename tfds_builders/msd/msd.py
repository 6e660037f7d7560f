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
`info.metadata`. Everything after parsing dataset.json is shared with the
`nnunet` builder (tfds_builders/volumes.py).

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
import os
from typing import Iterator

import tensorflow_datasets as tfds

from tfds_builders import volumes
from tfds_builders.volumes import fold_split  # noqa: F401 (msd.fold_split)
from u2net_jax.data import nifti
from u2net_jax.domains import MSD_DOMAINS
from u2net_jax.errors import ConfigError, DataError

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
    volumes.check_config(self, "MSD")


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
  parts = [task] + volumes.variant_parts(
      fold=fold, num_folds=num_folds, seed=seed, normalization=normalization, merge=merge,
      base_merge=base.merge_labels, spacing=spacing, base_spacing=base.target_spacing)
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
    num_channels = len(_modalities(volumes.load_json(json_path), json_path))
  return MsdConfig(name=name, description=description or f"MSD-layout folder {task_folder}.",
                   task_folder=task_folder, num_channels=num_channels,
                   target_spacing=target_spacing, merge_labels=merge_labels, fold=fold,
                   num_folds=num_folds, seed=seed, normalization=normalization)


# ------------------------------------------------------------ dataset.json


def _modalities(meta, json_path: str) -> list[str]:
  """dataset.json's `modality` as a list in channel order."""
  mod = meta.get("modality") if isinstance(meta, dict) else None
  if not isinstance(mod, dict) or not mod:
    raise DataError(f"{json_path}: needs a non-empty 'modality' object, e.g. {{\"0\": \"CT\"}}.")
  if sorted(mod) != sorted(str(c) for c in range(len(mod))):
    raise DataError(f"{json_path}: 'modality' keys {sorted(mod)} must be "
                    f"\"0\"..\"{len(mod) - 1}\".")
  return [str(mod[str(c)]) for c in range(len(mod))]


def _resolve_image(folder: str, rel: str, num_channels: int, json_path: str) -> tuple[str, ...]:
  """The listed file, else its nnU-Net channel files `<stem>_0000.nii.gz`, ..."""
  path = os.path.normpath(os.path.join(folder, rel))
  if os.path.isfile(path):
    return (path,)
  stem = os.path.join(os.path.dirname(path), volumes.strip_ext(path))
  for ext in volumes.NIFTI_ENDINGS:
    files = tuple(f"{stem}_{c:04d}{ext}" for c in range(num_channels))
    if all(os.path.isfile(f) for f in files):
      return files
  raise DataError(f"{path}: image file listed in {json_path} not found.")


def _read_task(folder: str, cfg: MsdConfig) -> volumes.Task:
  """Parses and checks dataset.json and that its files exist."""
  if not os.path.isdir(folder):
    raise DataError(f"{folder}: MSD task folder not found (config {cfg.name!r}, "
                    f"task_folder {cfg.task_folder!r}).")
  json_path = os.path.join(folder, "dataset.json")
  meta = volumes.load_json(json_path)
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
    cases.append(volumes.Case(volumes.strip_ext(entry["image"]), images, label))
  test = []
  for entry in meta.get("test") or []:
    rel = entry.get("image") if isinstance(entry, dict) else entry
    if not isinstance(rel, str):
      raise DataError(f"{json_path}: test entry {entry!r} is not a path.")
    if nifti.is_junk_path(rel):
      continue
    test.append(volumes.Case(volumes.strip_ext(rel),
                             _resolve_image(folder, rel, cfg.num_channels, json_path), None))
  for split, split_cases in (("training", cases), ("test", test)):
    ids = [c.case_id for c in split_cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
      raise DataError(f"{json_path}: duplicate {split} case ids {dup}.")
  if len(cases) < cfg.num_folds:
    raise DataError(f"{json_path}: {len(cases)} training cases, fewer than num_folds="
                    f"{cfg.num_folds}.")
  return volumes.Task(folder=folder, json_path=json_path, name=str(meta.get("name", "")),
                      channel_names=channel_names, modality="CT" if all(is_ct) else "MRI",
                      label_names=label_names, training=cases, test=test)


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
    return volumes.dataset_info(self, homepage="http://medicaldecathlon.com/")

  def _task_dir(self, dl_manager) -> str:
    return volumes.source_folder(self, dl_manager, "MSD config {name}: task folder")

  def _split_generators(self, dl_manager):
    return volumes.split_generators(self, _read_task(self._task_dir(dl_manager),
                                                     self.builder_config))

  def _generate_examples(self, cases, **ctx) -> Iterator[tuple[str, dict]]:
    yield from volumes.generate_examples(cases, normalization=self.builder_config.normalization,
                                         **ctx)
