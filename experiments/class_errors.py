r"""Where one class's errors are: confusion with the others, and how many lie at its border.

For a trained workdir and one domain, predicts every validation case (the
evaluation's sliding window and `eval.postprocess`), then counts, over all
cases, the confusion matrix and, for class `--class_id`:
  - missed voxels (label c, predicted other) that touch background (within
    one voxel, 26-neighbourhood) — against the base rate of the class's
    voxels that touch background;
  - false voxels (predicted c, label other) in the one-voxel shell around the
    class, split into background and other classes;
  - the share of errors in the class's first and last slice (array axis 0).

  python experiments/class_errors.py --workdir=runs/five_domain --domain=prostate --class_id=1

Prints one JSON object.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app
from absl import flags
from scipy import ndimage

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (not at import: tests import the counting functions)."""
  flags.DEFINE_string("workdir", "runs/five_domain", "A trained workdir.")
  flags.DEFINE_string("domain", "prostate", "Domain to look at.")
  flags.DEFINE_integer("class_id", 1, "Foreground class id (prostate: 1 = peripheral zone).")

_NEAR = ndimage.generate_binary_structure(3, 3)  # 26-neighbourhood


def error_counts(pred: np.ndarray, label: np.ndarray, c: int, num_classes: int) -> dict:
  """Counts of one case: (D, H, W) predicted and reference class ids, class `c`."""
  k = num_classes
  conf = np.bincount((label.astype(np.int64) * k + pred).ravel(), minlength=k * k)
  is_c = label == c
  touches_bg = is_c & ndimage.binary_dilation(label == 0, _NEAR)
  shell = ndimage.binary_dilation(is_c, _NEAR) & ~is_c
  missed = is_c & (pred != c)
  false = (pred == c) & ~is_c
  zs = np.where(is_c.any(axis=(1, 2)))[0]
  end = np.zeros(label.shape[0], bool)
  if zs.size:
    end[[zs.min(), zs.max()]] = True
  return {"confusion": conf.reshape(k, k), "voxels": int(is_c.sum()),
          "voxels_touching_background": int(touches_bg.sum()),
          "missed": int(missed.sum()),
          "missed_touching_background": int((missed & touches_bg).sum()),
          "false": int(false.sum()),
          "false_in_shell_background": int((false & shell & (label == 0)).sum()),
          "false_in_shell_other_class": int((false & shell & (label > 0)).sum()),
          "errors_in_end_slices": int(((missed | false) & end[:, None, None]).sum())}


def total(counts: list[dict]) -> dict:
  """Sums of `error_counts` over cases, with the shares the docstring names."""
  out = {k: sum(c[k] for c in counts) for k in counts[0] if k != "confusion"}
  out["confusion"] = sum(c["confusion"] for c in counts).tolist()
  share = lambda a, b: round(a / b, 3) if b else None
  out["share_of_voxels_touching_background"] = share(out["voxels_touching_background"],
                                                     out["voxels"])
  out["share_of_missed_touching_background"] = share(out["missed_touching_background"],
                                                     out["missed"])
  out["share_of_false_in_background_shell"] = share(out["false_in_shell_background"],
                                                    out["false"])
  out["share_of_errors_in_end_slices"] = share(out["errors_in_end_slices"],
                                               out["missed"] + out["false"])
  return out


def main(argv):
  del argv
  from u2net_jax import logging_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.infer import model_source, postprocess, predict  # pylint: disable=g-import-not-at-top
  logging_utils.quiet_library_logs()
  source = model_source.open_source(FLAGS.workdir)
  predictor = source.predictor(FLAGS.domain)
  k = predictor.plan.num_classes
  official = source.config.eval.postprocess == "official"
  counts = []
  for ex in predict.validation_examples(predictor.plan, source.config):
    pred, _ = predictor.predict_volume(np.asarray(ex["image"], np.float32))
    if official:
      pred = postprocess.official(pred, k, postprocess.OFFICIAL_COMPONENTS.get(FLAGS.domain, 1))
    counts.append(error_counts(pred, np.asarray(ex["label"]), FLAGS.class_id, k))
  print(json.dumps({"workdir": FLAGS.workdir, "domain": FLAGS.domain,
                    "class_id": FLAGS.class_id, "cases": len(counts),
                    "postprocess": source.config.eval.postprocess, **total(counts)}, indent=1))


if __name__ == "__main__":
  define_flags()
  app.run(main)
