"""Config → built TFDS datasets → cases in memory.

`ensure_built` builds whatever the config's domains need on first use (the
synthetic benchmark on any machine; MSD from `config.data.manual_dir`), with
the same atomic builds as `python -m tfds_builders build`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from u2net_jax.data import pipeline
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError, DataError


def _synthetic_config(config, domain: str):
  from tfds_builders.synthetic_organs import synthetic_organs  # pylint: disable=g-import-not-at-top
  syn = config.data.synthetic
  shape = tuple(syn.shape) or None
  n_tr = syn.num_train or None
  n_va = syn.num_validation or None
  seed = syn.base_seed
  if shape is None and n_tr is None and n_va is None and seed == 0:
    from tfds_builders import registry  # pylint: disable=g-import-not-at-top
    return registry.resolve_config("synthetic_organs", domain)
  tag = "x".join(map(str, shape)) if shape else "default"
  name = f"{domain}_{tag}_n{n_tr or 'd'}_{n_va or 'd'}_s{seed}"
  return synthetic_organs.make_config(domain, name=name, base_seed=seed, num_train=n_tr,
                                      num_validation=n_va, shape=shape)


def _msd_config(config, domain: str):
  from tfds_builders.msd import msd  # pylint: disable=g-import-not-at-top
  return msd.task_config(domain, fold=config.data.fold, normalization=config.data.normalization)


def builder_config(config, domain: str):
  """(builder name, BuilderConfig) for `domain` under `config.data.source`."""
  if config.data.source == "synthetic":
    return "synthetic_organs", _synthetic_config(config, domain)
  if config.data.source == "msd":
    return "msd", _msd_config(config, domain)
  raise ConfigError(f"config.data.source {config.data.source!r} is not synthetic or msd.")


def ensure_built(config, domains: Sequence[DomainSpec], *, log=print) -> dict[str, str]:
  """{domain name: dataset dir}, building missing datasets first."""
  from tfds_builders import registry  # pylint: disable=g-import-not-at-top
  manual_dir = config.data.manual_dir or None
  if config.data.source == "msd" and not manual_dir:
    raise ConfigError(
        "The msd preset reads MSD data: pass --config.data.manual_dir=/path/to/MSD "
        "(the folder holding Task02_Heart, Task03_Liver, ...).")
  if manual_dir and not os.path.isdir(manual_dir):
    raise ConfigError(f"config.data.manual_dir {manual_dir!r} is not a folder.")
  out = {}
  for d in domains:
    name, cfg = builder_config(config, d.name)
    cls = registry.builder_class(name)
    final = cls(config=cfg, data_dir=config.data.data_dir, file_format="array_record").data_dir
    if not os.path.exists(os.path.join(final, "dataset_info.json")):
      log(f"building dataset {name}/{cfg.name} into {config.data.data_dir} ...")
    out[d.name] = registry.build(name, cfg, config.data.data_dir, manual_dir=manual_dir)
  return out


def _builder(dataset_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder_from_directory(dataset_dir)
  except Exception as e:  # TFDS raises several types for a broken folder.
    raise DataError(f"{dataset_dir} is not a readable TFDS dataset: {e}") from None


def metadata(dataset_dir: str) -> dict:
  """The dataset info metadata (class names, CT stats, threshold baseline, ...)."""
  return dict(_builder(dataset_dir).info.metadata or {})


def read_examples(dataset_dir: str, split: str) -> list[dict]:
  """All examples of `split`, sorted by case id."""
  builder = _builder(dataset_dir)
  if split not in builder.info.splits:
    raise DataError(f"{dataset_dir} has no split {split!r}; it has {list(builder.info.splits)}.")
  source = builder.as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  for ex in examples:
    cid = ex["case_id"]
    ex["case_id"] = cid.decode() if isinstance(cid, bytes) else str(cid)
  return sorted(examples, key=lambda ex: ex["case_id"])


def load_cases(dataset_dir: str, split: str, spec: DomainSpec, *, process_index: int = 0,
               process_count: int = 1, seed: int = 0) -> list[pipeline.Case]:
  """This process's shard of `split` as in-memory `Case`s."""
  examples = read_examples(dataset_dir, split)
  mine = pipeline.shard(examples, process_index, process_count)
  if not mine:
    raise DataError(
        f"{dataset_dir} split {split!r} has {len(examples)} cases: too few for "
        f"{process_count} processes.")
  cases = []
  for i, ex in enumerate(mine):
    image = np.asarray(ex["image"], np.float32)
    if image.shape[-1] != spec.in_channels:
      raise DataError(f"{dataset_dir} case {ex['case_id']}: {image.shape[-1]} channels, domain "
                      f"{spec.name!r} expects {spec.in_channels}.")
    cases.append(pipeline.make_case(ex["case_id"], image, ex["label"], spec.num_classes,
                                    seed=seed + i))
  return cases
