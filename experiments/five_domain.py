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
  c.data.patch_size = (48, 48, 48)     # voxels (D, H, W)

  c.model = ml_collections.ConfigDict()
  c.model.mode = "separable"           # separable|independent|shared|series_adapter|parallel_adapter
  c.model.downsample = "separable"     # 'dense' = the official code's stride-2 convs
  c.model.features_root = 16           # F0; level l has F0·2^l features
  c.model.num_levels = 4
  c.model.deep_supervision = True
  c.model.depthwise_impl = "auto"      # auto|lax|shift
  c.model.compute_dtype = "float32"    # or bfloat16 (float32 master weights)

  if preset == "msd":
    c.data.source = "msd"
    c.data.patch_size = (128, 128, 128)
    c.model.num_levels = 6
  elif preset == "smoke":
    c.data.tasks = "heart,prostate"
    c.data.patch_size = (16, 16, 16)
    c.model.features_root = 4
    c.model.num_levels = 3
  return c
