"""The `:msd` preset's official choices, switched on together in one CPU-sized run.

The preset itself needs MSD data and a GPU; here its config is kept whole —
loss, optimizer, schedule, downsampling, window blend, post-processing,
sampling and augmentation as the official code does them (FIDELITY.md) — and
only the sizes and the data source are overridden, so every official option
is exercised end to end on the synthetic domains.
"""

import json
import os

import numpy as np

import pytest

import smoke_workdir
from u2net_jax import config_utils
from u2net_jax.data import rescale
from u2net_jax.train import train

from experiments import five_domain  # pylint: disable=g-import-not-at-top,wrong-import-position

# End to end (trains or runs run.py): `pytest -m 'not slow'` skips the module.
pytestmark = pytest.mark.slow

# Only sizes, data source and cadence differ from :msd.
SMOKE_SIZES = {
    "data.source": "synthetic", "data.tasks": "heart,prostate", "data.patch_size": (16, 16, 16),
    "data.synthetic.shape": (24, 24, 24), "data.synthetic.num_train": 4,
    "data.synthetic.num_validation": 2, "model.features_root": 4, "model.num_levels": 3,
    "model.depthwise_impl": "lax", "train.steps": 6, "train.log_every": 2,
    "train.checkpoint_every": 0, "train.eval_every": 0, "eval.window_batch": 2,
    "train.num_devices": 1,  # batch 2 as official; the test process has 8 CPU devices
    # The plateau rule on 2-step "epochs", a 1-epoch window and a huge
    # min_delta: it must halve the lr at every epoch after the first.
    "train.plateau_epoch_steps": 2, "train.plateau_window": 1, "train.plateau_min_delta": 1e9,
    # The official resize at CPU size: heart 8×24×16 and prostate 4×24×24 source
    # patches (≤ the 24³ volumes) resized to the 16³ model patch, as 80×192×128
    # and 20×192×192 are to 128³ in :msd.
    "data.source_patch": "heart:8x24x16,prostate:4x24x24",
    # :msd's 'original' grid scores against the source NIfTI labels, which
    # synthetic data has none of (tests/test_dice_grid.py covers that path).
    "eval.dice_grid": "preprocessed",
}


def msd_smoke_config(data_dir):
  c = five_domain.get_config("msd")
  for key, value in SMOKE_SIZES.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  c.data.data_dir = data_dir
  return c


def test_msd_official_options_train_and_evaluate_on_synthetic_data(tmp_path, tmp_path_factory,
                                                                   monkeypatch):
  config = msd_smoke_config(smoke_workdir.data_dir(tmp_path_factory))
  official = five_domain.get_config("msd")
  # The run really uses the preset's official choices.
  for key in ("train.loss", "train.lovasz_classes", "train.focal_detach", "train.grad_clip",
              "train.schedule", "train.domain_updates", "train.weight_decay_mode",
              "train.sampling", "train.small_classes", "model.downsample",
              "model.compute_dtype", "eval.blend", "eval.postprocess"):
    section, leaf = key.split(".")
    assert config[section][leaf] == official[section][leaf], key
  assert (config.train.loss, config.train.lovasz_classes, config.train.focal_detach) == (
      "lovasz_focal", "all", True)
  assert config.train.schedule == "loss_plateau" and config.train.grad_clip == 0.0
  assert (config.eval.blend, config.eval.postprocess) == ("official", "official")
  assert config.train.sampling == "official" and config.augment.to_dict() == \
      official.augment.to_dict()
  assert (config.augment.elastic_mode, config.augment.image_order) == ("official", 3)
  # The preset resizes every official task's patch; here heart's and prostate's.
  assert set(rescale.source_patches(official)) == {
      "heart", "liver", "hippocampus", "prostate", "pancreas", "spleen"}
  assert rescale.source_patches(config) == {"heart": (8, 24, 16), "prostate": (4, 24, 24)}
  config_utils.validate(config)
  resized = []  # (input shape, output shape) of every image resize, training and evaluation
  resize_image = rescale.resize_image
  monkeypatch.setattr(rescale, "resize_image",
                      lambda x, shape: (resized.append((x.shape[:3], tuple(shape))),
                                        resize_image(x, shape))[1])
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir)
  assert config_utils.load_config(workdir).data.source_patch == "heart:8x24x16,prostate:4x24x24"
  # Training: source patches -> 16³. Evaluation: whole (padded) volumes by 16/source
  # per axis (a 24³ heart volume -> 48×16×24), then windows of 16³.
  assert {((8, 24, 16), (16, 16, 16)), ((4, 24, 24), (16, 16, 16))} <= set(resized)
  for src in ((8, 24, 16), (4, 24, 24)):
    assert any(i != src and o == rescale.scaled_shape(i, src, (16, 16, 16))
               for i, o in resized), (src, sorted(set(resized)))
  assert summary["step"] == 6
  # Epochs end at steps 2, 4, 6: the first sets the reference, the next two halve.
  assert summary["lr_scale"] == 0.25 and not summary["stopped_by_lr_floor"]
  for d in summary["domains"].values():
    assert 0.0 <= d["mean_dice"] <= 1.0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  lrs = [r["lr"] for r in records if "lr" in r]
  # Logged before the halving at 6.
  assert np.isclose(lrs[0], 3e-4) and np.isclose(lrs[-1], 3e-4 * 0.5)
