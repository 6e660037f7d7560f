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
