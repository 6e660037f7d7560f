"""Config → built TFDS datasets → cases in memory.

`tasks` resolves `config.data.tasks` into domains and their datasets: each
entry `[name=][source:]ref` (u2net_jax/config.py `task_entries`) reads the
synthetic benchmark, an MSD task from `config.data.manual_dir`, or an nnU-Net
v2 dataset folder — so one run mixes sources, one domain per entry.
`ensure_built` builds whatever the config's domains need on first use, with
the same atomic builds as `python -m tfds_builders build`; reads check each
dataset's recorded checksums (data/integrity.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from u2net_jax import config as config_lib
from u2net_jax import options
from u2net_jax.data import integrity
from u2net_jax.data import pipeline
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Task:
  """One `config.data.tasks` entry, resolved: domain `name` reads `source`'s dataset `ref`.

  Attributes:
    ref: synthetic / msd: the builder's task ('heart'); nnunet: the absolute
      DatasetXXX_Name folder (it need not exist once its dataset is built).
  """
  name: str
  source: str
  ref: str


def _nnunet_task(config, entry: config_lib.TaskEntry) -> Task:
  from tfds_builders.nnunet import raw  # pylint: disable=g-import-not-at-top
  try:
    folder = raw.find(entry.ref, config.data.manual_dir or "")
  except ConfigError as e:
    raise ConfigError(f"config.data.tasks entry {entry.text!r}: {e}") from None
  return Task(entry.name or raw.domain_name(folder), "nnunet", folder)


def tasks(config) -> list[Task]:
  """The domains of `config.data.tasks`, in order; names unique (ConfigError otherwise)."""
  out = []
  for e in config_lib.task_entries(config.data.tasks, config.data.source):
    out.append(_nnunet_task(config, e) if e.source == "nnunet" else
               Task(e.name or e.ref, e.source, e.ref))
  names = [t.name for t in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ConfigError(f"config.data.tasks gives the domain name(s) {dup} more than once; name "
                      "one with 'name=source:ref', e.g. 'hippocampus_nn=nnunet:Dataset004_"
                      "Hippocampus'.")
  return out


def task_of(config, domain: str) -> Task:
  """The entry of `domain`; a domain no entry names is read from `data.source` by its name."""
  for t in tasks(config):
    if t.name == domain:
      return t
  entry = config_lib.TaskEntry(domain, config.data.source, domain, domain)
  return _nnunet_task(config, entry) if entry.source == "nnunet" else Task(
      domain, entry.source, domain)


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


def _msd_config(config, task: str):
  from tfds_builders.msd import msd  # pylint: disable=g-import-not-at-top
  return msd.task_config(task, fold=config.data.fold, normalization=config.data.normalization)


def _nnunet_config(config, folder: str):
  from tfds_builders.nnunet import nnunet  # pylint: disable=g-import-not-at-top
  return nnunet.dataset_config(folder, fold=config.data.fold,
                               normalization=config.data.normalization)


def builder_config(config, domain: str):
  """(builder name, BuilderConfig) of `domain`'s dataset (its `data.tasks` entry's source)."""
  t = task_of(config, domain)
  if t.source == "synthetic":
    return "synthetic_organs", _synthetic_config(config, t.ref)
  if t.source == "msd":
    return "msd", _msd_config(config, t.ref)
  if t.source == "nnunet":
    return "nnunet", _nnunet_config(config, t.ref)
  raise ConfigError(f"config.data.source {t.source!r} is not one of {options.SOURCES}.")


def nnunet_dir(config, folder: str) -> str:
  """Where the dataset of nnU-Net folder `folder` is (or will be) built; found by name alone."""
  from tfds_builders.nnunet import raw  # pylint: disable=g-import-not-at-top
  name = raw.config_name(folder, fold=config.data.fold, normalization=config.data.normalization)
  return os.path.join(config.data.data_dir, raw.BUILDER, name, raw.VERSION)


def _stored_metadata(dataset_dir: str) -> dict | None:
  """The built dataset's metadata.json (None if not built), without opening it in TFDS."""
  path = os.path.join(dataset_dir, "metadata.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      md = json.load(f)
    if not isinstance(md, dict):
      raise ValueError("not a JSON object")
    return md
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is unreadable ({e}); delete {dataset_dir} to have it "
                    "rebuilt.") from None


def nnunet_spec_fields(config, folder: str) -> dict:
  """channel_names, class_names, modality, spacing of an nnU-Net domain.

  From its built dataset's metadata if built (what training reads; the raw
  folder may be gone), else from the folder (dataset.json and image headers).
  """
  directory = nnunet_dir(config, folder)
  md = _stored_metadata(directory)
  if md is None:
    from tfds_builders.nnunet import raw  # pylint: disable=g-import-not-at-top
    return raw.domain_fields(folder)
  try:
    return {"channel_names": tuple(md["channel_names"]),
            "class_names": tuple(md["class_names"]), "modality": md["modality"],
            "spacing": tuple(md["target_spacing"])}
  except (KeyError, TypeError) as e:
    raise DataError(f"{directory}/metadata.json lacks {e}; delete {directory} to have it "
                    "rebuilt.") from None


def ensure_built(config, domains: Sequence[DomainSpec], *, log=print) -> dict[str, str]:
  """{domain name: dataset dir}, building missing datasets first."""
  from tfds_builders import registry  # pylint: disable=g-import-not-at-top
  manual_dir = config.data.manual_dir or None
  refs = {d.name: task_of(config, d.name) for d in domains}
  if any(t.source == "msd" for t in refs.values()):
    if not manual_dir:
      raise ConfigError(
          "The msd preset reads MSD data: pass --config.data.manual_dir=/path/to/MSD "
          "(the folder holding Task02_Heart, Task03_Liver, ...).")
    if not os.path.isdir(manual_dir):
      raise ConfigError(f"config.data.manual_dir {manual_dir!r} is not a folder.")
  out = {}
  for d in domains:
    t = refs[d.name]
    if t.source == "nnunet" and os.path.exists(
        os.path.join(nnunet_dir(config, t.ref), "dataset_info.json")):
      # Built: no need to read the raw folder (which may be gone).
      out[d.name] = _check_nnunet_folder(nnunet_dir(config, t.ref), t.ref, log)
      continue
    name, cfg = builder_config(config, d.name)
    cls = registry.builder_class(name)
    final = cls(config=cfg, data_dir=config.data.data_dir, file_format="array_record").data_dir
    if not os.path.exists(os.path.join(final, "dataset_info.json")):
      log(f"building dataset {name}/{cfg.name} into {config.data.data_dir} ...")
    manual = t.ref if t.source == "nnunet" else manual_dir
    out[d.name] = registry.build(name, cfg, config.data.data_dir, manual_dir=manual)
  return out


def _check_nnunet_folder(dataset_dir: str, folder: str, log) -> str:
  """Warns when the dataset found by name was built from another folder of that name."""
  built_from = (_stored_metadata(dataset_dir) or {}).get("task_folder", "")
  if built_from and os.path.normpath(built_from) != os.path.normpath(folder):
    log(f"warning: {dataset_dir} was built from {built_from}, not {folder} (same folder name); "
        f"delete it to rebuild from {folder}.")
  return dataset_dir


def _builder(dataset_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Sizes of every file, content of the small ones TFDS reads here (dataset_info.json, ...).
  integrity.verify(dataset_dir, hash_if=lambda name: name.endswith(".json"))
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
  # The split's shards, hashed once per process (TFDS names them <builder>-<split>.<format>-...).
  integrity.verify(dataset_dir, hash_if=lambda name: name.startswith(f"{builder.name}-{split}."))
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
