"""The named choices of config fields that several layers check (core: no imports).

Defined once here so that `config_utils.validate` (which checks a config
before any work) and the modules that act on a choice (`train/losses.py`,
`train/optim.py`) agree without the config layer importing training code.
"""

# train.loss (train/losses.py `segmentation_loss`).
LOSS_KINDS = ("lovasz_focal", "ce", "focal", "lovasz", "dice", "dice_ce")
# train.domain_updates (train/optim.py): idle domains bit-identical | one Adam over all.
DOMAIN_UPDATES = ("isolated", "official")
# train.update_scaling (train/optim.py): scale-aware kernel updates.
UPDATE_SCALINGS = ("none", "param_rms", "trust_ratio")
# data.source (data/datasets.py; also a `source:` prefix of a data.tasks entry) /
# data.normalization (data/preprocess.py).
SOURCES = ("synthetic", "msd", "nnunet")
NORMALIZATIONS = ("nnunet", "official")
# model.* (model/layers.py, model/depthwise.py, model/dense.py).
MODES = ("separable", "independent", "shared", "series_adapter", "parallel_adapter")
DOWNSAMPLES = ("separable", "dense")
DEPTHWISE_IMPLS = ("auto", "lax", "shift", "fused")
DENSE_IMPLS = ("auto", "lax", "shift")
COMPUTE_DTYPES = ("float32", "bfloat16")
# train.* (train/optim.py, train/schedules.py, train/losses.py, data/pipeline.py, train/loop.py).
WEIGHT_DECAY_MODES = ("adamw", "l2")
SCHEDULES = ("constant", "poly", "plateau", "loss_plateau")
LOVASZ_CLASSES = ("present", "all")
SAMPLINGS = ("nnunet", "official")
NAN_POLICIES = ("stop", "skip")
# eval.* (infer/sliding_window.py, infer/postprocess.py, infer/evaluate.py).
BLENDS = ("gaussian", "official")
EVAL_POSTPROCESS = ("none", "official")
EVAL_DICE_GRIDS = ("preprocessed", "original")
