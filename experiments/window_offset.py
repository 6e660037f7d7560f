r"""How good is one window's prediction of a voxel, by where the voxel sits in the window?

Sliding-window inference blends many windows per voxel; how much the overlap
matters depends on how much a window's prediction degrades away from its
centre. For a trained workdir and each domain, this tiles every validation
case with windows every `--stride` voxels, predicts each window alone (no
blending, no post-processing) and pools, over all (window, voxel) pairs, the
foreground confusion by the voxel's offset from the window centre — the
Chebyshev distance max_axis |i - (p - 1)/2| in voxels, in bins of `--bin`.
The Dice of a bin is the mean over foreground classes of 2TP / (2TP + FP + FN)
of the pairs in it.

With overlap 0.5 (stride p/2) the best-placed window of a voxel can still
hold it p/4 off centre per axis; with 0.75, p/8. So if the Dice falls between
those bins, the overlap gain is explained by the windows' off-centre error.

  python experiments/window_offset.py --workdir=runs/five_domain

Prints one JSON object {"domains": {domain: {bin: {"dice", "foreground_pairs"}}}};
`--summarize=a.json,b.json,...` tables several (mean ± sd, e.g. over seeds).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (not at import: tests import the counting functions)."""
  flags.DEFINE_string("workdir", "runs/five_domain", "A trained workdir.")
  flags.DEFINE_list("domains", [], "Domains to look at (default: every domain of the run).")
  flags.DEFINE_integer("stride", 8, "Voxels between window origins along every axis.")
  flags.DEFINE_integer("bin", 4, "Width of an offset bin, voxels.")
  flags.DEFINE_integer("max_cases", 0, "Validation cases per domain (0 = all).")
  flags.DEFINE_list("summarize", [], "Instead: JSON files of earlier runs (e.g. one per "
                    "seed) → a markdown table of mean ± sd per domain and bin.")


def offset_bins(patch, width: int) -> np.ndarray:
  """(P0, P1, P2) int: the bin of each window voxel's Chebyshev offset from the centre."""
  grids = np.meshgrid(*[np.abs(np.arange(p) - (p - 1) / 2) for p in patch], indexing="ij")
  return (np.maximum.reduce(grids) // width).astype(np.int64)


def origins(shape, patch, stride: int) -> list[tuple[int, ...]]:
  """Window origins every `stride` voxels, the last one on the far edge (the evaluation's rule)."""
  from u2net_jax.infer import sliding_window  # pylint: disable=g-import-not-at-top
  per_axis = [sliding_window.window_starts(n, p, 1 - stride / p) for n, p in zip(shape, patch)]
  return list(itertools.product(*per_axis))


def confusion_by_bin(pred: np.ndarray, label: np.ndarray, bins: np.ndarray,
                     num_classes: int, num_bins: int) -> np.ndarray:
  """(num_bins, num_classes, 3) TP, FP, FN of one window: pred, label, bins (P0, P1, P2)."""
  out = np.zeros((num_bins, num_classes, 3), np.int64)
  b = bins.ravel()
  p, t = pred.ravel(), label.ravel()
  for c in range(1, num_classes):
    for j, mask in enumerate(((p == c) & (t == c), (p == c) & (t != c), (p != c) & (t == c))):
      out[:, c, j] = np.bincount(b[mask], minlength=num_bins)[:num_bins]
  return out


def dice_by_bin(counts: np.ndarray, width: int) -> dict:
  """{"lo-hi": {"dice", "pairs"}} from summed `confusion_by_bin` counts."""
  out = {}
  for i, per_class in enumerate(counts):
    tp, fp, fn = per_class[1:, 0], per_class[1:, 1], per_class[1:, 2]
    denom = 2 * tp + fp + fn
    present = denom > 0
    dice = float(np.mean(2 * tp[present] / denom[present])) if present.any() else None
    out[f"{i * width}-{(i + 1) * width}"] = {
        "dice": None if dice is None else round(dice, 4),
        "foreground_pairs": int((tp + fn).sum())}
  return out


def domain_counts(predictor, examples, stride: int, width: int) -> np.ndarray:
  """Summed `confusion_by_bin` over every window of every example."""
  patch = tuple(predictor.plan.patch_size)
  k = predictor.plan.num_classes
  bins = offset_bins(patch, width)
  nb = int(bins.max()) + 1
  total = np.zeros((nb, k, 3), np.int64)
  for ex in examples:
    image = np.asarray(ex["image"], np.float32)
    label = np.asarray(ex["label"])
    if any(n < p for n, p in zip(label.shape, patch)):
      continue  # windows would need padding; not what this measures
    starts = origins(label.shape, patch, stride)
    batch = predictor.window_batch
    for i in range(0, len(starts), batch):
      group = starts[i:i + batch]
      sl = [tuple(slice(o, o + p) for o, p in zip(s, patch)) for s in group]
      windows = np.stack([image[s] for s in sl] + [np.zeros_like(image[sl[0]])]
                         * (batch - len(group)))
      probs = np.asarray(predictor(windows))[:len(group)]
      for s, pr in zip(sl, probs):
        total += confusion_by_bin(pr.argmax(-1), label[s], bins, k, nb)
  return total


def summary_table(results: list[dict]) -> str:
  """Markdown: rows domains, columns offset bins, cells mean ± sd over `results`."""
  first = results[0]["domains"]
  bins = list(next(iter(first.values())))
  lines = ["| domain | " + " | ".join(f"offset {b} voxels" for b in bins) + " |",
           "|---|" + "---:|" * len(bins)]
  for domain in first:
    cells = []
    for b in bins:
      v = np.array([r["domains"][domain][b]["dice"] for r in results], np.float64)
      cells.append(f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if v.size > 1 else ""))
    lines.append(f"| {domain} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if FLAGS.summarize:
    results = []
    for path in FLAGS.summarize:
      with open(path) as f:
        results.append(json.load(f))
    print(summary_table(results), end="")
    return
  from u2net_jax import logging_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.infer import model_source, predict  # pylint: disable=g-import-not-at-top
  logging_utils.quiet_library_logs()
  source = model_source.open_source(FLAGS.workdir)
  result = {"workdir": FLAGS.workdir, "stride": FLAGS.stride, "bin": FLAGS.bin, "domains": {}}
  for predictor in source.predictors(",".join(FLAGS.domains)):
    examples = predict.validation_examples(predictor.plan, source.config)
    if FLAGS.max_cases:
      examples = examples[:FLAGS.max_cases]
    counts = domain_counts(predictor, examples, FLAGS.stride, FLAGS.bin)
    result["domains"][predictor.plan.name] = dice_by_bin(counts, FLAGS.bin)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  define_flags()
  app.run(main)
