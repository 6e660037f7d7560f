"""Name → builder lookup shared by the command line and `run.py`.

`msd` and `synthetic_organs` have registered configs (names); `nnunet` has
one config per dataset folder, found from `manual_dir` (a DatasetXXX_Name
folder, or the nnUNet_raw folder holding several: `--config` then picks one
by folder name, config name or domain name).
"""

from __future__ import annotations

import os
import shlex

from u2net_jax.errors import ConfigError, DataError

BUILDERS = ("synthetic_organs", "msd", "nnunet")


def builder_class(name: str):
  if name == "synthetic_organs":
    from tfds_builders.synthetic_organs import synthetic_organs  # pylint: disable=g-import-not-at-top
    return synthetic_organs.SyntheticOrgans
  if name == "msd":
    from tfds_builders.msd import msd  # pylint: disable=g-import-not-at-top
    return msd.Msd
  if name == "nnunet":
    from tfds_builders.nnunet import nnunet  # pylint: disable=g-import-not-at-top
    return nnunet.Nnunet
  raise DataError(f"Unknown builder {name!r}; known: {list(BUILDERS)}.")


def _nnunet_manual_dir(manual_dir: str | None) -> str:
  if not manual_dir:
    raise DataError("Builder 'nnunet' needs --manual_dir: an nnU-Net v2 DatasetXXX_Name folder, "
                    "or the nnUNet_raw folder holding them.")
  return manual_dir


def config_names(name: str, manual_dir: str | None = None) -> list[str]:
  """Every config the command line builds without --config (nnunet: each folder found)."""
  if name == "nnunet":
    from tfds_builders.nnunet import raw  # pylint: disable=g-import-not-at-top
    return [raw.config_name(f) for f in raw.list_datasets(_nnunet_manual_dir(manual_dir))]
  return [c.name for c in builder_class(name).BUILDER_CONFIGS]


def resolve_config(name: str, config, manual_dir: str | None = None):
  """A BuilderConfig object from a name (or passes an object through)."""
  if not isinstance(config, str):
    return config
  if name == "nnunet":
    from tfds_builders.nnunet import nnunet, raw  # pylint: disable=g-import-not-at-top
    try:
      folder = raw.find(config, _nnunet_manual_dir(manual_dir))
    except ConfigError as e:
      raise DataError(f"Builder 'nnunet' has no config {config!r}: {e}") from None
    return nnunet.dataset_config(folder)
  for c in builder_class(name).BUILDER_CONFIGS:
    if c.name == config:
      return c
  raise DataError(f"Builder {name!r} has no config {config!r}; known: {config_names(name)}.")


def rebuild_command(name: str, cfg, manual_dir: str | None = None) -> str:
  """The command line that rebuilds `name`/`cfg`, less `--data_dir` (the reader of a
  dataset adds the folder it is in); '' for a config variant that only Python or
  run.py makes."""
  if name == "nnunet":
    from tfds_builders.nnunet import nnunet  # pylint: disable=g-import-not-at-top
    folder = cfg.task_folder
    if not os.path.isabs(folder):
      folder = os.path.join(manual_dir or "", folder)
    if not nnunet.is_default(cfg):
      return ""
    args = ["--config", cfg.name, "--manual_dir", os.path.abspath(folder)]
  elif builder_class(name).builder_configs.get(cfg.name) is cfg:
    args = ["--config", cfg.name] + (["--manual_dir", os.path.abspath(manual_dir)]
                                     if manual_dir else [])
  else:
    return ""
  return shlex.join(["python", "-m", "tfds_builders", "build", name, *args, "--overwrite"])


def build(name: str, config, data_dir: str, *, manual_dir: str | None = None,
          overwrite: bool = False) -> str:
  """Builds `name`/`config` into `data_dir` atomically; returns the dataset dir."""
  from tfds_builders import common  # pylint: disable=g-import-not-at-top
  cls = builder_class(name)
  cfg = resolve_config(name, config, manual_dir)
  return common.build_atomically(
      lambda d: cls(config=cfg, data_dir=d, file_format="array_record"), data_dir,
      manual_dir=manual_dir, overwrite=overwrite,
      rebuild=rebuild_command(name, cfg, manual_dir))
