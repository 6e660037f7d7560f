"""Training input pipeline: one domain per global step, random augmented patches.

The batch of global step `s` is a pure function of (seed, s): the domain
comes from the step (`domain_for_step`, the same on every host), global sample
j from a NumPy generator seeded with (seed, s, j) and from the cases of its
data shard (each shard a disjoint part of every domain; each process reads
only its own shards). So the iterator's
whole state is the next step number — a resumed run sees exactly the patches
an uninterrupted run would — and worker threads can build batches in any
order. grain runs `batch(step)` in parallel and prefetches.

Foreground oversampling, `sampling='nnunet'` (default): of every
1/fg_fraction consecutive global samples, one is centred on a foreground voxel
of a random present class; the others are centred uniformly in the volume.
`sampling='official'`: the official 3D U²-Net code's batch composition and
patch placement (`official_kind`, `official_center`). Volumes smaller than
the patch, and patches reaching over the border, are padded with 0
(background / mean intensity after normalization).

Source patches (`data.source_patch`, the official `unifyPatch='resize'`): a
domain with one is sampled, placed and spatially augmented at its source patch
size, then resized to the model's patch (`rescale.resize_image`, cubic;
`rescale.resize_label`, nearest); intensity augmentation follows, at the
model's patch.

Batch: {'image': float32 (B, P0, P1, P2, C_max), 'label': int32 (B, P0, P1, P2),
        'domain': int32 (), 'case': int32 (B,)}; channels are zero-padded to the
largest channel count of all domains so one compiled step serves them all.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np

from u2net_jax import options
from u2net_jax.data import augment, rescale
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError, DataError

# Foreground coordinates kept per class and case (random subset).
_MAX_FG_COORDS = 20000
SAMPLINGS = options.SAMPLINGS
# Official sampling: augmented tries before falling back to a plain crop
# (cc_augment.py L137: `if n < 10 and modified_coords`).
_OFFICIAL_TRIES = 10


@dataclasses.dataclass
class Case:
  """One volume in memory."""
  case_id: str
  image: np.ndarray          # (D, H, W, C) float32
  label: np.ndarray          # (D, H, W) uint8
  fg_coords: dict            # class id -> (N, 3) int32 voxel indices
  # class id -> number of its voxels (fg_coords may hold a subset of them)
  fg_counts: dict = dataclasses.field(default_factory=dict)


def make_case(case_id: str, image: np.ndarray, label: np.ndarray, num_classes: int,
              seed: int = 0) -> Case:
  image = np.asarray(image, np.float32)
  if image.ndim == 3:
    image = image[..., None]
  label = np.asarray(label, np.uint8)
  if image.shape[:3] != label.shape:
    raise DataError(f"case {case_id}: image {image.shape} and label {label.shape} differ.")
  rng = np.random.default_rng(seed)
  coords, counts = {}, {}
  for c in range(1, num_classes):
    idx = np.argwhere(label == c).astype(np.int32)
    if len(idx):
      counts[c] = len(idx)
    if len(idx) > _MAX_FG_COORDS:
      idx = idx[rng.choice(len(idx), _MAX_FG_COORDS, replace=False)]
    if len(idx):
      coords[c] = idx
  return Case(case_id, image, label, coords, counts)


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


def parse_class_map(text: str) -> dict[str, int]:
  """'prostate:1,heart:1' -> {'prostate': 1, 'heart': 1} ('' -> {})."""
  out = {}
  for item in filter(None, (t.strip() for t in str(text or "").split(","))):
    name, sep, value = item.partition(":")
    try:
      if not sep:
        raise ValueError
      out[name.strip()] = int(value)
    except ValueError:
      raise ConfigError(f"class map entry {item!r} in {text!r} is not 'domain:class_id'.") from None
  return out


def official_kind(j: int, batch_size: int, u: float, has_small: bool, has_fore: bool, *,
                  small_prob: float = 0.3, fore_prob: float = 0.3) -> str | None:
  """Patch type of sample `j` (0-based) of a batch in the official code.

  train.py `gen_batch` L95–133 with one u ~ U(0, 1) per sample (L96): samples
  j <= ceil(B/3) (sic, `<=`, so B = 2 makes both) must hold foreground:
  'small' if u < small_prob and the case has the smallest class, else 'fore',
  or None when the case has no foreground (the official code then takes the
  next case). Later samples: 'small' if u < small_prob (and present), 'fore'
  if 1 - u < fore_prob (and present), else 'any'.
  """
  if j <= math.ceil(batch_size / 3):
    if u < small_prob and has_small:
      return "small"
    return "fore" if has_fore else None
  if u < small_prob and has_small:
    return "small"
  if 1 - u < fore_prob and has_fore:
    return "fore"
  return "any"


def official_center(n: int, p: int, rng: np.random.Generator, voxel: int | None = None) -> int:
  """Official patch centre along one axis (patch start = centre - p // 2).

  n: volume size, p: patch size, voxel: the chosen foreground voxel's index
  (None for an 'any' patch). The official code first pads the volume
  symmetrically to >= p (tinies.pad2gePatch L90–118), then (cc_augment.py
  L110–131, with patch_center_dist_from_border = int(p/2), data_utils.py L110):
  foreground: centre ~ randint(max(int(p/2)-1, c-(p/2-1)), min(c+(p/2-1),
  n-(int(p/2)-1))), upper bound exclusive, so the voxel lands anywhere from
  index 2 to p-1 of an even patch and the patch may start one voxel before
  the volume; 'any': centre ~ randint(int(p/2), n-int(p/2)), the patch inside.
  """
  pad = max(math.ceil((p - n) / 2), 0)
  n_pad, half = n + 2 * pad, int(p / 2)
  if voxel is None:
    low, upper = half, n_pad - half
  else:
    c = voxel + pad
    low = int(max(half - 1, c - (p / 2 - 1)))
    upper = int(min(c + (p / 2 - 1), n_pad - (half - 1)))
  ctr = low if upper <= low else int(rng.integers(low, upper))
  return ctr - pad


class PatchSampler:
  """Builds training batches; `batch(step)` is deterministic.

  The global batch of `batch_size` samples is split evenly over `num_shards`
  data shards; shard v owns samples [v·n, (v+1)·n) with n = batch_size /
  num_shards and draws its cases from its own disjoint case list. Sample j of
  step s uses the generator (seed, s, j). A process builds the samples of the
  shards it owns (`shards`), so the global batch is the same whatever the
  number of processes, as long as `num_shards` is.

  `sampling='official'` replaces `fg_fraction` by the official composition
  (`official_kind`: small_class_prob, fore_prob; the smallest class of a domain
  is `small_classes[name]`, default its highest class id as the official code's
  `num_class - 1`, which for prostate is 1 (PZ) instead) and placement
  (`official_center`); a patch that lost its target class or is all zero
  after augmentation is drawn again (new voxel, centre and augmentation), and
  after 10 tries taken unaugmented (flips kept), as cc_augment.py L137–195.

  `source_patches` {domain: (S0, S1, S2)}: those domains' patches are cut at
  that size and resized to `patch_size` (module docstring); others are cut at
  `patch_size`. Entries of domains not trained here are ignored.
  """

  def __init__(self, cases: dict, domains: Sequence[DomainSpec], *,
               patch_size, batch_size: int, seed: int = 0, fg_fraction: float = 1 / 3,
               augment_cfg: augment.AugmentConfig | None = None,
               domain_weights: Sequence[float] | None = None,
               num_shards: int = 1, pad_channels_to: int | None = None,
               sampling: str = "nnunet", small_class_prob: float = 0.3,
               fore_prob: float = 0.3, small_classes: dict | None = None,
               source_patches: dict | None = None):
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
    # Per domain: the size patches are cut at (resized to patch_size if it differs).
    table = dict(source_patches or {})
    for name, src in table.items():
      if len(tuple(src)) != 3 or min(int(s) for s in src) <= 0:
        raise ConfigError(f"source patch {tuple(src)} of domain {name!r} is not 3 positive sizes.")
    self.source_patch = {n: rescale.source_patch_of(table, n, self.patch_size) or self.patch_size
                         for n in self.names}
    self.batch_size = self.per_shard * len(self.shard_ids)  # this process's samples
    self.seed = int(seed)
    if not 0 <= fg_fraction <= 1:
      raise ConfigError(f"fg_fraction {fg_fraction} must be in [0, 1].")
    self.fg_fraction = fg_fraction
    self.augment = augment_cfg or augment.AugmentConfig()
    self.domain_weights = domain_weights
    self.channels = pad_channels_to or max(d.in_channels for d in self.domains)
    if sampling not in SAMPLINGS:
      raise ConfigError(f"sampling {sampling!r}; use one of {SAMPLINGS}.")
    self.sampling = sampling
    for k, v in (("small_class_prob", small_class_prob), ("fore_prob", fore_prob)):
      if not 0 <= v <= 1:
        raise ConfigError(f"{k} {v} must be in [0, 1].")
    self.small_class_prob, self.fore_prob = float(small_class_prob), float(fore_prob)
    # Entries for domains not trained here are ignored (one map serves all presets).
    small_classes = dict(small_classes or {})
    self.small_class = {}
    for d in self.domains:
      c = int(small_classes.get(d.name, d.num_classes - 1))
      if not 1 <= c < d.num_classes:
        raise ConfigError(f"small class {c} of domain {d.name!r} is not a foreground class "
                          f"(1..{d.num_classes - 1}).")
      self.small_class[d.name] = c

  def domain_index(self, step: int) -> int:
    return domain_for_step(step, self.names, self.domain_weights, self.seed)

  def _is_foreground_sample(self, k: int) -> bool:
    # Exactly fg_fraction of consecutive samples, deterministically.
    return math.floor((k + 1) * self.fg_fraction + 1e-9) > math.floor(k * self.fg_fraction + 1e-9)

  def _to_model_patch(self, img: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A source-size patch resized to `patch_size` (returned as is if already that size)."""
    if img.shape[:3] == self.patch_size:
      return img, lab
    return rescale.resize_image(img, self.patch_size), rescale.resize_label(lab, self.patch_size)

  def sample(self, case: Case, rng: np.random.Generator, foreground: bool, patch=None):
    """One augmented (image, label) patch of `case` at patch_size.

    Cut and spatially augmented at `patch` (default patch_size), then resized.
    """
    if foreground and case.fg_coords:
      classes = sorted(case.fg_coords)
      coords = case.fg_coords[classes[rng.integers(len(classes))]]
      center = coords[rng.integers(len(coords))]
    else:
      center = [rng.integers(n) for n in case.label.shape]
    img, lab = augment.spatial_patch(case.image, case.label, center, patch or self.patch_size,
                                     rng, self.augment)
    img, lab = self._to_model_patch(img, lab)
    return augment.intensity(img, rng, self.augment), lab

  def official_sample(self, cases: Sequence[Case], ci: int, j: int, small: int,
                      rng: np.random.Generator,
                      patch=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample j of a batch with the official sampling: (image, label, case index).

    The patch is cut, checked and augmented at `patch` (default patch_size), not resized.
    """
    patch = tuple(patch or self.patch_size)
    u = rng.random()
    batch = self.per_shard * self.num_shards
    kind = official_kind(j, batch, u, small in cases[ci].fg_coords, bool(cases[ci].fg_coords),
                         small_prob=self.small_class_prob, fore_prob=self.fore_prob)
    if kind is None:
      # The official code moves on to the next queued case, keeping u:
      # equivalent to a case drawn among those with foreground.
      with_fg = [i for i, c in enumerate(cases) if c.fg_coords]
      if with_fg:
        ci = with_fg[int(rng.integers(len(with_fg)))]
      kind = official_kind(j, batch, u, small in cases[ci].fg_coords,
                           bool(cases[ci].fg_coords), small_prob=self.small_class_prob,
                           fore_prob=self.fore_prob) or "any"
    case = cases[ci]
    fore = sorted(case.fg_coords)
    # Official 'fore': uniform over all foreground voxels (np.where(seg > 0)),
    # so a class is picked in proportion to its voxel count.
    counts = np.array([case.fg_counts.get(c, len(case.fg_coords[c])) for c in fore], np.float64)

    def draw(cfg):
      # Every try draws a new voxel, centre and augmentation (cc_augment.py L85–139).
      voxel = (None,) * 3
      if kind != "any":
        c = small if kind == "small" else fore[int(rng.choice(len(fore), p=counts / counts.sum()))]
        voxel = case.fg_coords[c][rng.integers(len(case.fg_coords[c]))]
      center = [official_center(n, p, rng, None if v is None else int(v))
                for n, p, v in zip(case.label.shape, patch, voxel)]
      return augment.spatial_patch(case.image, case.label, center, patch, rng, cfg)

    def accepted(img, lab):
      target = {"any": True, "fore": np.any(lab > 0), "small": np.any(lab == small)}[kind]
      return bool(target) and bool(np.any(img != 0))

    for _ in range(_OFFICIAL_TRIES):
      img, lab = draw(self.augment)
      if accepted(img, lab):
        return img, lab, ci
    img, lab = draw(dataclasses.replace(self.augment, p_rotate=0.0, p_scale=0.0, p_elastic=0.0))
    return img, lab, ci

  def batch(self, step: int) -> dict:
    """This process's part of the global batch of `step` (its shards' samples)."""
    d = self.domain_index(step)
    name = self.names[d]
    source = self.source_patch[name]
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
        if self.sampling == "official":
          img, lab, ci = self.official_sample(cases, ci, j, self.small_class[name], rng, source)
          img, lab = self._to_model_patch(img, lab)
          img = augment.intensity(img, rng, self.augment)
        else:
          img, lab = self.sample(cases[ci], rng, self._is_foreground_sample(
              step * self.per_shard * self.num_shards + j), source)
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
