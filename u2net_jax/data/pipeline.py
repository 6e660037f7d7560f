"""Training input pipeline: one domain per global step, random augmented patches.

The batch of global step `s` is a pure function of (seed, s): the domain
comes from the step (`domain_for_step`, the same on every host), global sample
j from a NumPy generator seeded with (seed, s, j) and from the cases of its
data shard (each shard a disjoint part of every domain; each process reads
only its own shards). So the iterator's
whole state is the next step number — a resumed run sees exactly the patches
an uninterrupted run would — and worker threads can build batches in any
order. grain runs `batch(step)` in parallel and prefetches.

Foreground oversampling (nnU-Net's rule): of every 1/fg_fraction consecutive
global samples, one is centred on a foreground voxel of a random present
class; the others are centred uniformly in the volume. Volumes smaller than
the patch, and patches reaching over the border, are padded with 0
(background / mean intensity after normalization).

Batch: {'image': float32 (B, P0, P1, P2, C_max), 'label': int32 (B, P0, P1, P2),
        'domain': int32 (), 'case': int32 (B,)}; channels are zero-padded to the
largest channel count of all domains so one compiled step serves them all.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np

from u2net_jax.data import augment
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError, DataError

# Foreground coordinates kept per class and case (random subset).
_MAX_FG_COORDS = 20000


@dataclasses.dataclass
class Case:
  """One volume in memory."""
  case_id: str
  image: np.ndarray          # (D, H, W, C) float32
  label: np.ndarray          # (D, H, W) uint8
  fg_coords: dict            # class id -> (N, 3) int32 voxel indices


def make_case(case_id: str, image: np.ndarray, label: np.ndarray, num_classes: int,
              seed: int = 0) -> Case:
  image = np.asarray(image, np.float32)
  if image.ndim == 3:
    image = image[..., None]
  label = np.asarray(label, np.uint8)
  if image.shape[:3] != label.shape:
    raise DataError(f"case {case_id}: image {image.shape} and label {label.shape} differ.")
  rng = np.random.default_rng(seed)
  coords = {}
  for c in range(1, num_classes):
    idx = np.argwhere(label == c).astype(np.int32)
    if len(idx) > _MAX_FG_COORDS:
      idx = idx[rng.choice(len(idx), _MAX_FG_COORDS, replace=False)]
    if len(idx):
      coords[c] = idx
  return Case(case_id, image, label, coords)


def owned_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """The data shards process `process_index` reads (contiguous, disjoint)."""
  if num_shards % process_count:
    raise ConfigError(f"data.num_shards={num_shards} is not a multiple of the "
                      f"{process_count} processes.")
  per = num_shards // process_count
  return list(range(process_index * per, (process_index + 1) * per))


def shard(items: Sequence, process_index: int, process_count: int) -> list:
  """Shard `process_index`'s disjoint share of `items` (round-robin over sorted order)."""
  if not 0 <= process_index < process_count:
    raise ConfigError(f"shard index {process_index} not in [0, {process_count}).")
  return list(items)[process_index::process_count]


def domain_for_step(step: int, names: Sequence[str], weights: Sequence[float] | None = None,
                    seed: int = 0) -> int:
  """Index of the domain trained at global `step` (identical on every host).

  Round-robin by default; with `weights`, a seeded draw per step.
  """
  n = len(names)
  if weights is None:
    return step % n
  w = np.asarray(weights, np.float64)
  if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
    raise ConfigError(f"domain weights {list(weights)} must be {n} non-negative numbers.")
  rng = np.random.default_rng([seed, 0x5EED, step])
  return int(rng.choice(n, p=w / w.sum()))


class PatchSampler:
  """Builds training batches; `batch(step)` is deterministic.

  The global batch of `batch_size` samples is split evenly over `num_shards`
  data shards; shard v owns samples [v·n, (v+1)·n) with n = batch_size /
  num_shards and draws its cases from its own disjoint case list. Sample j of
  step s uses the generator (seed, s, j). A process builds the samples of the
  shards it owns (`shards`), so the global batch is the same whatever the
  number of processes, as long as `num_shards` is.
  """

  def __init__(self, cases: dict, domains: Sequence[DomainSpec], *,
               patch_size, batch_size: int, seed: int = 0, fg_fraction: float = 1 / 3,
               augment_cfg: augment.AugmentConfig | None = None,
               domain_weights: Sequence[float] | None = None,
               num_shards: int = 1, pad_channels_to: int | None = None):
    """`cases`: {domain: [Case]} (one shard) or {domain: {shard id: [Case]}}."""
    self.domains = tuple(domains)
    self.names = tuple(d.name for d in self.domains)
    shards = {}
    for n in self.names:
      c = cases.get(n)
      shards[n] = dict(c) if isinstance(c, dict) else {0: list(c or [])}
    self.shard_ids = tuple(sorted(shards[self.names[0]]))
    missing = [n for n in self.names
               if set(shards[n]) != set(self.shard_ids) or not all(shards[n].values())]
    if missing:
      raise DataError(f"No training cases for domain(s) {missing} in data shards "
                      f"{list(self.shard_ids)}.")
    self.cases = shards
    self.num_shards = int(num_shards)
    if batch_size % self.num_shards:
      raise ConfigError(f"batch size {batch_size} is not divisible by {num_shards} data shards.")
    self.per_shard = batch_size // self.num_shards
    self.patch_size = tuple(int(p) for p in patch_size)
    self.batch_size = self.per_shard * len(self.shard_ids)  # this process's samples
    self.seed = int(seed)
    if not 0 <= fg_fraction <= 1:
      raise ConfigError(f"fg_fraction {fg_fraction} must be in [0, 1].")
    self.fg_fraction = fg_fraction
    self.augment = augment_cfg or augment.AugmentConfig()
    self.domain_weights = domain_weights
    self.channels = pad_channels_to or max(d.in_channels for d in self.domains)

  def domain_index(self, step: int) -> int:
    return domain_for_step(step, self.names, self.domain_weights, self.seed)

  def _is_foreground_sample(self, k: int) -> bool:
    # Exactly fg_fraction of consecutive samples, deterministically.
    return math.floor((k + 1) * self.fg_fraction + 1e-9) > math.floor(k * self.fg_fraction + 1e-9)

  def sample(self, case: Case, rng: np.random.Generator, foreground: bool):
    """One augmented (image, label) patch of `case`."""
    if foreground and case.fg_coords:
      classes = sorted(case.fg_coords)
      coords = case.fg_coords[classes[rng.integers(len(classes))]]
      center = coords[rng.integers(len(coords))]
    else:
      center = [rng.integers(n) for n in case.label.shape]
    img, lab = augment.spatial_patch(case.image, case.label, center, self.patch_size, rng,
                                     self.augment)
    return augment.intensity(img, rng, self.augment), lab

  def batch(self, step: int) -> dict:
    """This process's part of the global batch of `step` (its shards' samples)."""
    d = self.domain_index(step)
    name = self.names[d]
    images = np.zeros((self.batch_size, *self.patch_size, self.channels), np.float32)
    labels = np.zeros((self.batch_size, *self.patch_size), np.int32)
    case_ids = np.zeros((self.batch_size,), np.int32)
    row = 0
    for v in self.shard_ids:
      cases = self.cases[name][v]
      for i in range(self.per_shard):
        j = v * self.per_shard + i  # global sample index
        rng = np.random.default_rng([self.seed, step, j])
        ci = int(rng.integers(len(cases)))
        img, lab = self.sample(cases[ci], rng, self._is_foreground_sample(
            step * self.per_shard * self.num_shards + j))
        images[row, ..., :img.shape[-1]] = img
        labels[row] = lab
        case_ids[row] = ci
        row += 1
    return {"image": images, "label": labels, "domain": np.int32(d), "case": case_ids}

  def case_id(self, domain: int, row: int, case_index: int) -> str:
    """The case id behind `batch['case'][row]` of a batch of domain index `domain`."""
    v = self.shard_ids[row // self.per_shard]
    return self.cases[self.names[domain]][v][case_index].case_id

  def dataset(self, start_step: int, num_steps: int, *, num_threads: int = 2,
              prefetch: int = 4):
    """A grain IterDataset of `batch(step)` for steps [start_step, start_step+num_steps)."""
    import grain  # pylint: disable=g-import-not-at-top
    ds = grain.MapDataset.range(start_step, start_step + num_steps).map(self.batch)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                prefetch_buffer_size=prefetch))

  def iterate(self, start_step: int, num_steps: int, **kw) -> Iterator[dict]:
    return iter(self.dataset(start_step, num_steps, **kw))
