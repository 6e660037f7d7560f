"""The training run's input: datasets built, this process's shards, the patch sampler."""

from __future__ import annotations

import time
from typing import NamedTuple

import jax

from u2net_jax import config_utils
from u2net_jax.data import augment, datasets, pipeline, plans, rescale


class TrainingData(NamedTuple):
  """What the loop reads: training batches, validation cases, dataset metadata."""
  sampler: pipeline.PatchSampler  # batch(step): this process's part of step's global batch
  val: dict  # domain name → its validation examples
  meta: dict  # domain name → datasets.metadata (threshold baseline, ...)


def load_training_data(config, specs, workdir: str, batch: int, patch, channels: int,
                       log) -> TrainingData:
  """Builds missing datasets, reads this process's shards; writes the workdir's plans.

  `batch`: the global batch size; `patch`: (D, H, W) voxels; inputs are
  zero-padded to `channels`.
  """
  tcfg = config.train
  t_data = time.time()
  dirs = datasets.ensure_built(config, specs, log=log) if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("datasets_built")
    dirs = datasets.ensure_built(config, specs, log=log)
  # Data shards: each process reads only its own, disjoint part of every domain.
  num_shards = config.data.num_shards or jax.process_count()
  mine = pipeline.owned_shards(num_shards, jax.process_index(), jax.process_count())
  cases = {d.name: {v: datasets.load_cases(dirs[d.name], "train", d, process_index=v,
                                           process_count=num_shards) for v in mine}
           for d in specs}
  val = {d.name: datasets.read_examples(dirs[d.name], "validation") for d in specs}
  meta_ds = {d.name: datasets.metadata(dirs[d.name]) for d in specs}
  if jax.process_index() == 0:  # What predict/export need to preprocess like this data.
    plans.write(workdir, [plans.from_metadata(d, meta_ds[d.name], dirs[d.name]) for d in specs])
  log(f"data ready in {time.time() - t_data:.1f} s: " + ", ".join(
      f"{n} {sum(map(len, c.values()))} train/{len(val[n])} val" for n, c in cases.items()))
  weights = config_utils.domain_weights(config, specs)
  sampler = pipeline.PatchSampler(
      cases, specs, patch_size=patch, batch_size=batch, seed=config.seed,
      fg_fraction=tcfg.fg_fraction,
      augment_cfg=augment.AugmentConfig.from_config(config.augment),
      domain_weights=weights, num_shards=num_shards, pad_channels_to=channels,
      sampling=tcfg.sampling, small_class_prob=tcfg.small_class_prob, fore_prob=tcfg.fore_prob,
      small_classes=pipeline.parse_class_map(tcfg.small_classes),
      source_patches=rescale.source_patches(config))
  return TrainingData(sampler, val, meta_ds)
