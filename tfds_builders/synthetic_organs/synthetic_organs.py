"""TFDS builder `synthetic_organs`: the embedded five(+1)-domain benchmark.

One config per domain of `generator.DOMAINS` (heart, liver, hippocampus,
prostate, pancreas, spleen). Cases go through the same preprocessing as MSD
data (`u2net_jax.data.preprocess`: crop to non-zero, resample — a no-op here —
and CT/MRI intensity normalization with training-set CT statistics), so the
stored examples have exactly the MSD builder's features.

Dataset info metadata: `threshold_baseline_dice` (validation Dice of the best
single intensity threshold chosen on the training cases, on the stored
normalized images; < 0.6 by contract), `window_baseline_dice` (same for the
best intensity window lo <= x < hi; < 0.5 by contract), `threshold_baseline_dice_raw`
and `window_baseline_dice_raw` (the same on raw intensities), `ct_stats`,
`class_names`, `channel_names`, `modality`, `target_spacing`, `normalization`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common
from tfds_builders.synthetic_organs import generator


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """One synthetic domain. `shape=None`: the domain's default volume size."""
  domain: str = "heart"
  base_seed: int = 0
  num_train: int | None = None
  num_validation: int | None = None
  shape: tuple[int, int, int] | None = None


def make_config(domain: str, *, name: str | None = None, base_seed: int = 0,
                num_train: int | None = None, num_validation: int | None = None,
                shape=None) -> SyntheticConfig:
  """A config for `domain` (e.g. a smaller variant for tests: pass `name`)."""
  generator.get_domain(domain)
  return SyntheticConfig(name=name or domain, domain=domain, base_seed=base_seed,
                         num_train=num_train, num_validation=num_validation,
                         shape=None if shape is None else tuple(int(s) for s in shape),
                         description=f"Synthetic {domain}-like volumes.")


def _nifti_affine(dhw_affine: np.ndarray) -> np.ndarray:
  """The generator's affine maps (d, h, w); stored affines map NIfTI (i, j, k) = (w, h, d)."""
  swap = np.eye(4)[[2, 1, 0, 3]]  # its own inverse
  return np.asarray(dhw_affine, np.float64) @ swap


class SyntheticOrgans(tfds.core.GeneratorBasedBuilder):
  """Seeded synthetic organ volumes mimicking the MSD domains."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Liver cases no longer solved by an intensity window (contrast "
                            "phase, steatosis, liver-like spleen, thick wall muscle); "
                            "window_baseline_dice metadata. Other domains unchanged."}
  BUILDER_CONFIGS = [make_config(name) for name in generator.DOMAINS]

  def _info(self) -> tfds.core.DatasetInfo:
    dom = generator.get_domain(self.builder_config.domain)
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=common.features(dom.in_channels),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    from u2net_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    dom = generator.get_domain(cfg.domain)
    raw = {split: list(generator.generate_split(
        dom, split, cfg.base_seed,
        cfg.num_train if split == "train" else cfg.num_validation, cfg.shape))
           for split in generator.SPLITS}
    stats = None
    if dom.modality == "CT":
      stats = preprocess.ct_stats([c["image"] for c in raw["train"]],
                                  [c["label"] for c in raw["train"]])
    examples = {}
    for split, cases in raw.items():
      examples[split] = []
      for c in cases:
        p = preprocess.preprocess_case(
            c["image"], c["spacing"], dom.modality, c["spacing"], stats=stats,
            label=c["label"], num_classes=dom.num_classes)
        examples[split].append(common.example(
            p["image"], p["label"], spacing=p["spacing"],
            original_spacing=p["original_spacing"], original_shape=p["original_shape"],
            affine=_nifti_affine(c["affine"]), crop_box=p["crop_box"],
            case_id=c["case_id"]))
    n = dom.num_classes
    md = self.info.metadata
    md["threshold_baseline_dice"] = float(generator.threshold_baseline_dice(
        examples["train"], examples["validation"], n))
    md["threshold_baseline_dice_raw"] = float(generator.threshold_baseline_dice(
        raw["train"], raw["validation"], n))
    md["window_baseline_dice"] = float(generator.window_baseline_dice(
        examples["train"], examples["validation"], n))
    md["window_baseline_dice_raw"] = float(generator.window_baseline_dice(
        raw["train"], raw["validation"], n))
    md["ct_stats"] = None if stats is None else {k: float(v) for k, v in stats.items()}
    md["class_names"] = list(dom.class_names)
    md["channel_names"] = list(dom.channel_names)
    md["modality"] = dom.modality
    md["target_spacing"] = [float(s) for s in raw["train"][0]["spacing"]]
    md["normalization"] = "nnunet"
    return {split: self._generate_examples(ex) for split, ex in examples.items()}

  def _generate_examples(self, examples):
    for ex in examples:
      yield ex["case_id"], ex
