"""u2net_jax: 3D U²-Net (Huang et al., MICCAI 2019) in JAX/Flax.

The folder tree is the architecture; imports go downward only (checked by
tests/test_layout.py, which also finds no import cycle between modules):

  run.py, experiments/, benchmarks/    use anything
  param_table                          app level (--mode=params)
  infer/   sliding window, whole-volume prediction, post-processing,
           predictor, model_source (workdir or export folder?), predict,
           export (writer) / exported (loader), review, evaluate (metrics of
           a domain)
  train/   train.py (train_and_evaluate, a table of contents) over loop, step,
           state, inputs, evaluation, summary, restore; checkpoints, losses,
           optimizers, schedules, extension by a new domain
           (infer/ and train/ may use each other's modules, never in a cycle)
  config_utils   the config's domains and the checks that need data/model
  data/    NIfTI, preprocessing and its plans, the official resize, datasets,
           the input pipeline, augmentation        → core only
  model/   layers, dense/depthwise convolutions, the U²-Net, one-domain views
                                                    → core only
  core     errors, io (atomic writes), domains (DomainSpec), config (typed,
           frozen configs: every key's type and default; typed_config
           casts a mapping into them), options (named
           config choices), metrics, logging_utils, host_memory (returning
           freed heap to the OS)                    → nothing of u2net_jax

Loading an export (`infer/exported.py`), and telling one from a workdir
(`infer/model_source.py`), imports neither Flax nor `model/`.
"""

__version__ = "0.1.0"
