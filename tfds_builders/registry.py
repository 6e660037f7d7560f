"""Name → builder lookup shared by the command line and `run.py`."""

from __future__ import annotations

from u2net_jax.errors import DataError

BUILDERS = ("synthetic_organs", "msd")


def builder_class(name: str):
  if name == "synthetic_organs":
    from tfds_builders.synthetic_organs import synthetic_organs  # pylint: disable=g-import-not-at-top
    return synthetic_organs.SyntheticOrgans
  if name == "msd":
    from tfds_builders.msd import msd  # pylint: disable=g-import-not-at-top
    return msd.Msd
  raise DataError(f"Unknown builder {name!r}; known: {list(BUILDERS)}.")


def config_names(name: str) -> list[str]:
  return [c.name for c in builder_class(name).BUILDER_CONFIGS]


def resolve_config(name: str, config):
  """A BuilderConfig object from a name (or passes an object through)."""
  if not isinstance(config, str):
    return config
  for c in builder_class(name).BUILDER_CONFIGS:
    if c.name == config:
      return c
  raise DataError(f"Builder {name!r} has no config {config!r}; known: {config_names(name)}.")


def build(name: str, config, data_dir: str, *, manual_dir: str | None = None,
          overwrite: bool = False) -> str:
  """Builds `name`/`config` into `data_dir` atomically; returns the dataset dir."""
  from tfds_builders import common  # pylint: disable=g-import-not-at-top
  cls = builder_class(name)
  cfg = resolve_config(name, config)
  return common.build_atomically(
      lambda d: cls(config=cfg, data_dir=d, file_format="array_record"), data_dir,
      manual_dir=manual_dir, overwrite=overwrite)
