r"""The universal model on five domains (3D U²-Net, Huang et al. 2019).

Presets (`--config=experiments/five_domain.py[:preset]`):
  (default)  synthetic five-domain benchmark, sized for a 2-core CPU.
  msd        the paper's setting on Medical Segmentation Decathlon data:
             `--config.data.manual_dir=/path/to/MSD` (folders TaskXX_Name),
             F0 = 16, 6 levels, 128³ patches.
  smoke      everything tiny, for tests.

Examples:
  python run.py --config=experiments/five_domain.py
  python run.py --config=experiments/five_domain.py:msd --mode=params
  python run.py --config=experiments/five_domain.py --config.model.mode=shared
"""

import ml_collections

from u2net_jax import config as config_lib

FIVE_DOMAINS = "heart,liver,hippocampus,prostate,pancreas"


# The official per-task independent models (u2net_torch_src/config.py L61–67:
# patch_sizes, batch_sizes, nums_pool_per_axis; train_model_no_adapters.py):
# task → (patch (D, H, W) trained without resizing, batch, pools per axis).
OFFICIAL_INDEPENDENT = {
    "heart": ((80, 192, 128), 2, (4, 5, 5)),
    "liver": ((128, 128, 128), 2, (5, 5, 5)),
    "hippocampus": ((40, 56, 40), 9, (3, 3, 3)),
    "prostate": ((20, 192, 192), 4, (2, 5, 5)),
    "pancreas": ((96, 160, 128), 2, (4, 5, 5)),
    "spleen": ((96, 160, 128), 2, (4, 5, 5)),
}


def official_independent(config: ml_collections.ConfigDict,
                         task: str) -> ml_collections.ConfigDict:
  """`config` as the authors' independent model of one task: its own run.

  One domain, `model.mode='independent'`, the task's official patch (cut at
  the target spacing, not resized), batch and anisotropic pooling
  (`model.pool_per_axis`, num_levels = max + 1: hippocampus 4 levels). Every
  other setting (loss, schedule, ≤ steps, augmentation, sampling) is the
  preset's, as in the official code, where both scripts share `train.py`.
  """
  if task not in OFFICIAL_INDEPENDENT:
    raise ValueError(f"No official independent setting for task {task!r}; "
                     f"known: {sorted(OFFICIAL_INDEPENDENT)}.")
  patch, batch, pools = OFFICIAL_INDEPENDENT[task]
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.tasks = task
  c.data.patch_size = patch
  c.data.source_patch = ""
  c.model.mode = "independent"
  c.model.pool_per_axis = pools
  c.model.num_levels = max(pools) + 1
  c.train.batch_size = batch
  return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Returns the config for `preset` ('' = default, 'msd' or 'smoke')."""
  if preset not in ("", "default", "msd", "smoke"):
    raise ValueError(f"Unknown preset {preset!r}; use '', 'msd' or 'smoke'.")
  # Every key and its default: u2net_jax/config.py (the default preset is its
  # defaults; the comments there say how each default was chosen).
  c = config_lib.defaults()
  c.preset = preset or "default"

  # Off for the short synthetic run (it learns faster without); on for msd.
  # The official code's transforms are options (u2net_jax/data/augment.py; the
  # msd preset below sets them).
  c.augment = ml_collections.ConfigDict(dict(
      enabled=False, p_flip=0.5, flip_axes=(0, 1, 2), p_rotate=0.2, rotate_axes=(0, 1, 2),
      max_angle_deg=15.0, angle_range_deg=(), p_scale=0.2, scale_range=(0.85, 1.25),
      scale_mode="uniform", p_elastic=0.0, elastic_mode="fixed",
      elastic_alpha_range=(0.0, 750.0), elastic_sigma_range=(10.0, 13.0), image_order=1,
      p_gamma=0.3, p_brightness=0.15, p_contrast=0.15, p_noise=0.1))

  if preset == "msd":
    c.data.source = "msd"
    c.data.normalization = "official"
    c.data.patch_size = (128, 128, 128)
    c.data.source_patch = ("heart:80x192x128,liver:128x128x128,hippocampus:40x56x40,"  # official
                           "prostate:20x192x192,pancreas:96x160x128,spleen:96x160x128")  # resize
    c.model.features_root = 16
    c.model.num_levels = 6
    c.model.compute_dtype = "float32"   # official: fp32 (bfloat16 halves memory; an option)
    c.train.steps = 90_000               # official: 300 epochs × 300 steps
    c.train.lr = 3e-4
    c.train.domain_updates = "official"  # the official code's single Adam (unmeasured here)
    # Official (FIDELITY.md): Lovász over all classes + focal γ 2 with (1-p)^γ
    # detached, no gradient clipping, dense stride-2 downsampling.
    c.train.loss = "lovasz_focal"
    c.train.lovasz_classes = "all"
    c.train.focal_detach = True
    c.train.grad_clip = 0.0
    c.model.downsample = "dense"
    c.train.fg_fraction = 1 / 3          # unused with official sampling
    c.train.sampling = "official"        # train.py gen_batch + cc_augment.py placement
    c.train.small_classes = "prostate:1"  # cc_augment.py: PZ is prostate's "small" class
    c.augment.update(dict(               # data_utils.py augment_patch, config.py
        enabled=True, p_rotate=0.3, rotate_axes=(0,), angle_range_deg=(0.0, 360.0),
        p_scale=0.5, scale_mode="official", scale_range=(0.75, 1.25),
        p_flip=0.15, flip_axes=(2,), p_elastic=0.3, elastic_mode="official",
        elastic_alpha_range=(0.0, 750.0), elastic_sigma_range=(10.0, 13.0), image_order=3,
        p_gamma=0.0, p_brightness=0.0, p_contrast=0.0, p_noise=0.0))
    c.train.weight_decay = 5e-4
    c.train.weight_decay_mode = "l2"
    c.train.schedule = "loss_plateau"
    c.train.warmup_steps = 0
    c.train.eval_every = 6000           # official: every 20 epochs (from epoch 100)
    c.train.checkpoint_every = 1000
    c.train.max_to_keep = 3
    c.eval.window_batch = 2
    c.eval.overlap = 0.5                # official: centres every 64 voxels of 128³
    c.eval.blend = "official"
    c.eval.postprocess = "official"
    c.eval.dice_grid = "original"       # official: Dice vs the source NIfTI label
  elif preset == "smoke":
    c.data.tasks = "heart,prostate"
    c.data.patch_size = (16, 16, 16)
    c.data.synthetic.shape = (24, 24, 24)
    c.data.synthetic.num_train = 4
    c.data.synthetic.num_validation = 2
    c.model.features_root = 4
    c.model.num_levels = 3
    # Grouped conv compiles 2× faster than the fused 'shift' depthwise (which
    # wins at real sizes); tests compare the two directly.
    c.model.depthwise_impl = "lax"
    c.model.dense_impl = "shift"  # fixed (no autotuning per test run; auto's CPU choice)
    c.augment.enabled = True  # end-to-end tests exercise the augmentation path
    c.train.steps = 6
    # The bit-identity tests (idle domains, resume, extension) run on smoke;
    # the official path has its own tests (test_optim, test_train).
    c.train.domain_updates = "isolated"
    c.train.batch_size = 8
    c.train.warmup_steps = 0
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.eval.window_batch = 2
    c.eval.overlap = 0.5  # a quarter of the default's windows: tests evaluate often
  return c
