"""TF-free replacement for `tfds build` (which imports TensorFlow).

  python -m tfds_builders build <builder> [--config NAME] [--manual_dir DIR]
      [--data_dir DIR] [--overwrite]

Without --config every config of the builder is built (nnunet: every dataset
folder at or in --manual_dir). Datasets land in
`<data_dir>/<builder>/<config>/<version>/`.

  python -m tfds_builders build msd --config heart --manual_dir /data/MSD
  python -m tfds_builders build nnunet --manual_dir /data/nnUNet_raw/Dataset004_Hippocampus
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  parser = argparse.ArgumentParser(prog="python -m tfds_builders")
  sub = parser.add_subparsers(dest="command", required=True)
  build = sub.add_parser("build", help="build a dataset")
  build.add_argument("builder", help="synthetic_organs, msd or nnunet")
  build.add_argument("--config", default=None, help="config name (default: all)")
  build.add_argument("--manual_dir", default=None,
                     help="msd: folder holding TaskXX_Name; nnunet: a DatasetXXX_Name folder "
                     "or the nnUNet_raw folder holding them")
  build.add_argument("--data_dir", default="data/tfds", help="TFDS data_dir")
  build.add_argument("--overwrite", action="store_true", help="rebuild existing versions")
  args = parser.parse_args(argv)

  from tfds_builders import registry  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  try:
    configs = [args.config] if args.config else registry.config_names(args.builder, args.manual_dir)
    for name in configs:
      t0 = time.time()
      path = registry.build(args.builder, name, args.data_dir, manual_dir=args.manual_dir,
                            overwrite=args.overwrite)
      print(f"built {args.builder}/{name} -> {path} ({time.time() - t0:.1f} s)", flush=True)
  except U2NetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
