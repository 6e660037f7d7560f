r"""u2net_jax command line: one entry point, dispatch on --mode.

  python run.py --config=experiments/five_domain.py[:preset] [--config.a.b=v] \
      [--workdir=DIR] [--mode=params]
  python run.py --mode=predict --workdir=DIR --domain=NAME --input=IN --output=OUT
  python run.py --mode=export --workdir=DIR [--domain=NAME]
"""

import sys
import traceback

from u2net_jax import host_memory

if __name__ == "__main__":
  # First, before JAX is imported: glibc reads its malloc tunables at start-up.
  host_memory.restart_with_hugepages()

from absl import app
from absl import flags
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Run directory (default runs/<config stem>[_<preset>]).")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "params", "predict", "export"],
                  "train: train then evaluate (resumes from the workdir's checkpoints); "
                  "evaluate: evaluate the workdir's best/latest checkpoint; "
                  "params: print and write parameter counts; "
                  "predict: segment NIfTI scans (--domain, --input, --output); "
                  "export: write <workdir>/export/<domain>/ for every (or --domain's) domain.")
flags.DEFINE_string("domain", "", "predict/export: the domain to use, e.g. heart.")
flags.DEFINE_string("input", "", "predict: a NIfTI file (3D, or 4D with channels last), "
                    "nnU-Net channel files CASE_0000.nii.gz (name the _0000 one), or a folder.")
flags.DEFINE_string("output", "", "predict: a .nii.gz file (one input case) or a folder.")
flags.DEFINE_bool("save_probabilities", False,
                  "predict: also write <case>_probabilities.nii.gz (4D, uint8 scaled by 1/255).")
flags.DEFINE_enum("postprocess", "auto", ["auto", "on", "off"],
                  "predict: keep each class's largest connected component — auto: only for "
                  "the classes where that raised the validation Dice (decided once per "
                  "checkpoint and stored in the workdir), on: every class, off: none.")
flags.DEFINE_bool("progress", True, "predict: progress bars (cases, windows) on stderr.")
config_flags.DEFINE_config_file("config", None, "Config file, path.py[:preset].",
                                lock_config=True)
FLAGS = flags.FLAGS


def _config_and_preset():
  value = FLAGS["config"].serialize().split("=", 1)[-1]
  path, _, preset = value.partition(":")
  return FLAGS.config, path, preset


def _command_line_error(e: Exception) -> str:
  """One line for a flag that does not parse: a bad value, field or config file."""
  arg = e.args[0] if e.args else e
  while isinstance(arg, KeyError) and arg.args:  # AttributeError(KeyError(text))
    arg = arg.args[0]
  lines = [l.strip() for l in str(arg).splitlines() if l.strip()]
  if isinstance(e, (AttributeError, KeyError)):  # --config.a.b=v names no such field
    return "a --config.* override names no such config field: " + " ".join(lines)
  if isinstance(e, OSError):  # the --config file does not load
    return f"could not load the --config file: {lines[-1] if lines else e}"
  if len(lines) > 1:  # the config file raised: keep the flag and the exception
    return f"{lines[0]} {lines[-1]}"
  return lines[0] if lines else type(e).__name__


def _parse_flags(argv):
  """absl's flag parsing; any error is one line on stderr and exit code 2, no traceback."""
  try:
    argv = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get("seed")  # A config file that failed to load raises only when used.
    return argv
  except Exception as e:  # pylint: disable=broad-except — flags.Error and what config files raise
    print(f"error: {_command_line_error(e)}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from u2net_jax import logging_utils  # pylint: disable=g-import-not-at-top
  if not FLAGS["verbosity"].present:
    # --verbosity=0 brings the libraries' INFO logs back.
    logging_utils.quiet_library_logs()
  # Imported here so `--help` stays fast.
  from u2net_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from u2net_jax import config_utils, param_table  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import peers, train  # pylint: disable=g-import-not-at-top
  from u2net_jax.infer import export, model_source, predict  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.config is None:
      if FLAGS.mode == "train" or not FLAGS.workdir:
        raise U2NetError("--config is required, e.g. --config=experiments/five_domain.py "
                         "(evaluate needs --config or --workdir of a trained run)")
      workdir = FLAGS.workdir
      # predict also runs from an export folder (W/export/<domain>), which has no config.
      config = (model_source.open_source(workdir).config if FLAGS.mode == "predict"
                else config_utils.load_config(workdir))
    else:
      config, path, preset = _config_and_preset()
      workdir = FLAGS.workdir or config_utils.default_workdir(path, preset)
    if config is not None:
      config = config_lib.parse(config)  # typed and frozen from here on (u2net_jax/config.py)
    if FLAGS.mode == "params":
      param_table.run(config, workdir)
    elif FLAGS.mode == "train":
      train.train_and_evaluate(config, workdir)
    elif FLAGS.mode == "evaluate":
      train.evaluate_workdir(config, workdir)
    elif FLAGS.mode == "predict":
      predict.run(config, workdir, domain=FLAGS.domain, input_path=FLAGS.input,
                  output=FLAGS.output, postprocess_mode=FLAGS.postprocess,
                  save_probabilities=FLAGS.save_probabilities, progress=FLAGS.progress)
    elif FLAGS.mode == "export":
      export.run(config, workdir, domain=FLAGS.domain, postprocess_mode=FLAGS.postprocess)
  except U2NetError as e:
    # sys.exit, or os._exit in a multi-process run (no wait for peers that may be dead).
    peers.exit_process(2, str(e))
  except Exception:  # pylint: disable=broad-except
    if not jax.distributed.is_initialized():
      raise
    # Multi-process: the traceback, then out without JAX's shutdown barrier (as above).
    traceback.print_exc()
    peers.exit_process(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
