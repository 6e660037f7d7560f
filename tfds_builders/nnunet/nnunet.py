"""`nnunet`: any nnU-Net v2 raw dataset folder (`DatasetXXX_Name/`) in TFDS.

The folder layout, names and what is refused: see raw.py. Everything after
parsing is the MSD builder's (tfds_builders/volumes.py): the same features,
preprocessing (crop → resample to the training median spacing → CT or
z-score normalization), seeded 5-fold split of `imagesTr` (`train` /
`validation`), unlabeled `test` split from `imagesTs` (if any), metadata and
bad-input errors. Labels are dataset.json's `labels`, renumbered 0..K-1 in
increasing value if they have gaps; channels are its `channel_names`.

Build (no registered configs: one config per folder):

  python -m tfds_builders build nnunet --manual_dir /data/nnUNet_raw/Dataset004_Hippocampus
  python -m tfds_builders build nnunet --manual_dir /data/nnUNet_raw [--config hippocampus]

or in Python:

  common.build_atomically(
      lambda d: nnunet.Nnunet(config=nnunet.dataset_config(folder), data_dir=d,
                              file_format="array_record"), data_dir)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import tensorflow_datasets as tfds

from tfds_builders import volumes
from tfds_builders.nnunet import raw
from u2net_jax.errors import DataError


@dataclasses.dataclass(eq=False)
class NnunetConfig(tfds.core.BuilderConfig):
  """One nnU-Net dataset folder with its split and preprocessing settings.

  Attributes: as `msd.MsdConfig` (task_folder is the DatasetXXX_Name folder,
  absolute or relative to manual_dir; target_spacing None = the training
  median; merge_labels (from, to) value pairs; fold, num_folds, seed,
  normalization).
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
    volumes.check_config(self, "nnU-Net")


def dataset_config(folder: str, *, fold: int = 0, num_folds: int = 5, seed: int = 0,
                   normalization: str = "nnunet", merge_labels=(), target_spacing=None,
                   num_channels: int | None = None) -> NnunetConfig:
  """The config of dataset `folder` (made absolute) with these settings.

  Named `raw.config_name(folder, ...)`: `dataset004_hippocampus` for the
  defaults, settings that differ appended. num_channels None = read from
  dataset.json now (a DataError naming it if that fails).
  """
  folder = os.path.abspath(folder)
  if num_channels is None:
    num_channels = len(raw.read_header(folder)[2])
  name = raw.config_name(folder, fold=fold, num_folds=num_folds, seed=seed,
                         normalization=normalization, merge_labels=merge_labels,
                         target_spacing=target_spacing)
  return NnunetConfig(name=name, description=f"nnU-Net v2 dataset {folder}.",
                      task_folder=folder, num_channels=num_channels,
                      target_spacing=target_spacing, merge_labels=merge_labels, fold=fold,
                      num_folds=num_folds, seed=seed, normalization=normalization)


def is_default(cfg: NnunetConfig) -> bool:
  """Whether `cfg` is its folder's default config (the one the command line builds)."""
  return cfg.name == raw.config_name(cfg.task_folder) and (
      cfg.fold, cfg.num_folds, cfg.seed, cfg.normalization, cfg.merge_labels,
      cfg.target_spacing) == (0, 5, 0, "nnunet", (), None)


class Nnunet(tfds.core.GeneratorBasedBuilder):
  """An nnU-Net v2 raw dataset, preprocessed for 3D U²-Net."""

  VERSION = tfds.core.Version(raw.VERSION)
  RELEASE_NOTES = {raw.VERSION: "Initial release."}
  BUILDER_CONFIGS = []  # One per folder: `dataset_config(folder)`.
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  manual_dir is an nnU-Net v2 raw dataset folder DatasetXXX_Name/ (dataset.json,
  imagesTr/, labelsTr/, optional imagesTs/), or the nnUNet_raw folder holding them.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return volumes.dataset_info(self, homepage="https://github.com/MIC-DKFZ/nnUNet")

  def _dataset_dir(self, dl_manager) -> str:
    return volumes.source_folder(self, dl_manager, "nnU-Net config {name}: dataset folder")

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    folder = self._dataset_dir(dl_manager)
    task = raw.read(folder, num_folds=cfg.num_folds)
    if len(task.channel_names) != cfg.num_channels:
      raise DataError(f"{task.json_path}: lists {len(task.channel_names)} channel_names "
                      f"{task.channel_names}, but config {cfg.name!r} expects "
                      f"{cfg.num_channels} channels.")
    splits = volumes.split_generators(self, task)
    md = self.info.metadata
    md["source"] = raw.BUILDER
    md["domain_name"] = raw.domain_name(folder)
    md["file_ending"] = task.file_ending
    return splits

  def _generate_examples(self, cases, **ctx) -> Iterator[tuple[str, dict]]:
    yield from volumes.generate_examples(cases, normalization=self.builder_config.normalization,
                                         **ctx)
