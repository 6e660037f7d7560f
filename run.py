r"""u2net_jax command line: one entry point, dispatch on --mode.

  python run.py --config=experiments/five_domain.py[:preset] [--config.a.b=v] \
      [--workdir=DIR] [--mode=params]
"""

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Run directory (default runs/<config stem>[_<preset>]).")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "params"],
                  "train: train then evaluate (resumes from the workdir's checkpoints); "
                  "evaluate: evaluate the workdir's best/latest checkpoint; "
                  "params: print and write parameter counts.")
config_flags.DEFINE_config_file("config", None, "Config file, path.py[:preset].",
                                lock_config=True)
FLAGS = flags.FLAGS


def _config_and_preset():
  value = FLAGS["config"].serialize().split("=", 1)[-1]
  path, _, preset = value.partition(":")
  return FLAGS.config, path, preset


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # "Unable to initialize backend 'tpu'" on every CPU run is noise.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  # Imported here so `--help` stays fast.
  from u2net_jax import config_utils, param_table, train  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.config is None:
      if FLAGS.mode == "train" or not FLAGS.workdir:
        raise U2NetError("--config is required, e.g. --config=experiments/five_domain.py "
                         "(evaluate needs --config or --workdir of a trained run)")
      workdir = FLAGS.workdir
      config = config_utils.load_config(workdir)
    else:
      config, path, preset = _config_and_preset()
      workdir = FLAGS.workdir or config_utils.default_workdir(path, preset)
    if FLAGS.mode == "params":
      param_table.run(config, workdir)
    elif FLAGS.mode == "train":
      train.train_and_evaluate(config, workdir)
    elif FLAGS.mode == "evaluate":
      train.evaluate_workdir(config, workdir)
  except U2NetError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
