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
  c = ml_collections.ConfigDict()
  c.preset = preset or "default"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"          # 'synthetic' or 'msd'
  c.data.tasks = FIVE_DOMAINS          # comma-separated domain names
  c.data.data_dir = "data/tfds"        # TFDS data_dir (built on first use)
  c.data.manual_dir = ""               # MSD root holding TaskXX_Name folders
  c.data.fold = 0                      # of a seeded 5-fold split
  c.data.num_shards = 0                # data shards (0 = one per process)
  c.data.patch_size = (32, 32, 32)     # voxels (D, H, W)
  c.data.source_patch = ""             # 'domain:DxHxW,..': cut there, resized to patch_size
  c.data.normalization = "nnunet"      # msd data: 'nnunet' or 'official' (preprocess.py)
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.shape = ()          # () = each domain's default volume size
  c.data.synthetic.num_train = 0       # 0 = default (24)
  c.data.synthetic.num_validation = 0  # 0 = default (8)
  c.data.synthetic.base_seed = 0

  c.model = ml_collections.ConfigDict()
  # separable | independent | shared | series_adapter | parallel_adapter
  c.model.mode = "separable"
  c.model.downsample = "separable"     # 'dense' = the official code's stride-2 convs
  c.model.features_root = 8            # F0; level l has F0·2^l features
  c.model.num_levels = 4
  # () = isotropic stride 2 at every level; (p_D, p_H, p_W) = the official
  # `nums_pool_per_axis` (anisotropic; num_levels = max + 1; dense downsampling).
  c.model.pool_per_axis = ()
  c.model.deep_supervision = True
  c.model.depthwise_impl = "auto"      # auto|lax|shift|fused
  c.model.dense_impl = "auto"          # auto|lax|shift (dense k³ convs; auto = shift on CPU)
  c.model.compute_dtype = "float32"    # or bfloat16 (float32 master weights)

  c.train = ml_collections.ConfigDict()
  # 1,400 steps with 'official' domain updates and Adam 2e-2: mean Dice
  # 0.865 where the previous default (isolated, 1e-2) needed 3,000 steps for
  # ~0.9 (README "Choosing the update rule": 1,400-step runs of each candidate).
  c.train.steps = 1400
  c.train.batch_size = 2               # global, one domain per step
  c.train.num_devices = 0              # 0 = every device of every process
  # Adam 2e-2 with poly decay (1,400 steps, official updates: 0.865 vs
  # 0.842 at 1e-2; README "Choosing the update rule").
  c.train.lr = 2e-2                    # shared weights
  c.train.lr_domain = 0.0              # per-domain weights (0 = same as lr)
  c.train.weight_decay = 5e-5
  c.train.weight_decay_domain = -1.0   # < 0: same as weight_decay
  c.train.weight_decay_mode = "adamw"  # or 'l2' (torch Adam, the official code)
  # How idle domains are updated (u2net_jax/optim.py): 'isolated' (bit-identical)
  # or 'official' (one Adam over all weights, as the official PyTorch code).
  # official: 300-step mean Dice 0.544 vs 0.259 isolated (README).
  c.train.domain_updates = "official"
  # Scale-aware kernel updates: none | param_rms | trust_ratio (optim.py).
  # none: at 1,400 steps param_rms (lr 0.3, isolated) reached 0.775 against
  # 0.842 for official + plain Adam 1e-2 (README).
  c.train.update_scaling = "none"
  c.train.schedule = "poly"            # constant | poly | plateau | loss_plateau (official)
  # plateau: halve on no validation gain at an evaluation. loss_plateau: the
  # official rule (u2net_jax/schedules.py): halve when the mean of the last
  # `window` epoch losses improves < min_delta; stop below min_lr.
  c.train.plateau_epoch_steps = 300
  c.train.plateau_window = 20
  c.train.plateau_min_delta = 1e-4
  c.train.plateau_min_lr = 1e-8
  c.train.warmup_steps = 50
  c.train.grad_clip = 5.0
  c.train.grad_accum = 1
  c.train.loss = "dice_ce"             # msd: the official code's Lovász-Softmax + focal
  c.train.lovasz_classes = "present"   # lovasz*: 'present' or 'all' (official)
  c.train.focal_detach = False         # focal*: no gradient through (1-p)^γ (official)
  c.train.fg_fraction = 0.5            # patches centred on foreground (nnU-Net: 1/3)
  # 'official': the official code's batch rule and placement (data/pipeline.py):
  # the first ceil(B/3)+1 samples hold foreground (smallest class with
  # small_class_prob), the rest smallest/foreground/random; fg anywhere in the patch.
  c.train.sampling = "nnunet"
  c.train.small_class_prob = 0.3
  c.train.fore_prob = 0.3
  c.train.small_classes = ""           # 'domain:class,...'; default the highest class id
  c.train.domain_weights = ""          # '' = round-robin; else e.g. '1,1,2,1,1'
  c.train.freeze_shared = False
  c.train.frozen_domains = ""
  c.train.nan_policy = "stop"          # or 'skip'
  c.train.log_every = 50
  c.train.eval_every = 0               # 0 = only at the end
  c.train.checkpoint_every = 250
  c.train.max_to_keep = 2
  c.train.data_threads = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.overlap = 0.5
  c.eval.mirror = False
  # Window blend: gaussian (nnU-Net) | official (u2net_jax/infer/sliding_window.py).
  c.eval.blend = "gaussian"
  c.eval.postprocess = "none"          # none | official (closing + largest 1-2 components)
  c.eval.window_batch = 4
  c.eval.max_cases = 0                 # 0 = all validation cases
  c.eval.during_training_max_cases = 0  # evaluations every eval_every steps (0 = max_cases)
  c.eval.surface_tolerance_mm = 2.0
  c.eval.dice_grid = "preprocessed"    # metrics grid: preprocessed | original (MSD source files)

  # Off for the short synthetic run (it learns faster without); on for msd.
  # The official code's transforms are options (u2net_jax/data/augment.py; the
  # msd preset below sets them).
  c.augment = ml_collections.ConfigDict(dict(
      enabled=False, p_flip=0.5, flip_axes=(0, 1, 2), p_rotate=0.2, rotate_axes=(0, 1, 2),
      max_angle_deg=15.0, angle_range_deg=(), p_scale=0.2, scale_range=(0.85, 1.25),
      scale_mode="uniform", p_elastic=0.0, elastic_mode="fixed",
      elastic_alpha_range=(0.0, 750.0), elastic_sigma_range=(10.0, 13.0), image_order=1,
      p_gamma=0.3, p_brightness=0.15, p_contrast=0.15, p_noise=0.1))

  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False        # jax.distributed.initialize() (auto on Cloud TPU)
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.cpu_collectives = ""   # 'gloo' for multi-process CPU runs

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
  return c
