"""--mode=predict: NIfTI scans in, label maps on the same grid out.

One case goes: load (3D, 4D or channel files) → the training preprocessing
(`preprocess.preprocess_case`: crop to non-zero, resample to the plan's
spacing, normalize) → streamed sliding window (`sliding_window`, bounded
memory; with a source patch, inside the official resize, `volume`) →
arg-max → optional largest-component filter → `preprocess.invert_label`
(back into the crop box, resampled to the source grid) → a uint8 NIfTI with
the input's affine, header geometry and shape (+ optional probability maps).

A `Predictor` is a domain's plan plus a window function; it comes from a
workdir's checkpoint (`from_workdir`) or from an export (`exported.load`) —
`model_source.open_source` decides which a path is — and the rest of the
pipeline does not care which.

This module imports neither JAX nor Flax; a workdir's predictor does (`model_source`).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import numpy as np

from u2net_jax.data import preprocess
from u2net_jax.data.plans import DomainPlan
from u2net_jax.errors import ConfigError, InputError, U2NetError
from u2net_jax.infer import inputs, model_source, outputs, postprocess
from u2net_jax.infer.model_source import (  # noqa: F401 (predict.from_params, ...)
    from_params, from_workdir, resolve_domain)
from u2net_jax.infer.predictor import Predictor  # noqa: F401 (predict.Predictor)

POSTPROCESS_MODES = ("auto", "on", "off")


class CasesFailed(U2NetError):
  """Some cases of a predict run failed; every other case was written.

  Attributes:
    done: the written cases' infos (`predict_cases`).
    failed: (case id, reason) of each failed case.
  """

  def __init__(self, done: list[dict], failed: list[tuple[str, str]]):
    self.done, self.failed = done, failed
    total = len(done) + len(failed)
    super().__init__(f"{len(failed)} of {total} case(s) failed, the other {len(done)} were "
                     "written: " + "; ".join(f"{c}: {r}" for c, r in failed))


# ----------------------------------------------------------------------------
# One case.

def invert_probabilities(probs: np.ndarray, crop_box, original_shape) -> np.ndarray:
  """Probabilities on the preprocessed grid -> uint8-quantized on the source grid.

  Args:
    probs: (D', H', W', K) on the grid `preprocess_case` produced.
    crop_box: (3, 2) [start, stop) of the non-zero crop on the source grid.
    original_shape: source (D, H, W).
  Returns:
    uint8 (D, H, W, K) (`outputs.quantize` scale): linear resampling into the
    crop box; outside it, background = 1.
  """
  box = np.asarray(crop_box, np.int64).reshape(3, 2)
  box_shape = tuple(int(b - a) for a, b in box)
  k = probs.shape[-1]
  out = np.zeros(tuple(int(s) for s in original_shape) + (k,), np.uint8)
  out[..., 0] = 255
  sl = tuple(slice(int(a), int(b)) for a, b in box)
  for c in range(k):
    # One channel at a time, straight into the output: no (D, H, W, K) float copy.
    r = preprocess._resize_volume(probs[..., c].astype(np.float32), box_shape, order=1)  # pylint: disable=protected-access
    out[sl + (c,)] = outputs.quantize(r, inplace=True)
  return out


def prepare(image: np.ndarray, spacing, plan: DomainPlan) -> dict:
  """The training preprocessing of one raw scan (`preprocess.preprocess_case`).

  Args:
    image: (D, H, W, C) float32 raw intensities (HU for CT).
    spacing: mm (z, y, x) of `image`.
    plan: the domain's plan.
  Returns:
    `preprocess_case`'s dict: image on the model's grid, crop box, source
    shape and spacing.
  """
  if image.ndim != 4 or image.shape[-1] != plan.in_channels:
    raise InputError(f"image of shape {image.shape}: domain {plan.name!r} expects "
                     f"(D, H, W, {plan.in_channels}).")
  return preprocess.preprocess_case(image, spacing, plan.modality, plan.target_spacing,
                                    stats=plan.ct_stats, scheme=plan.normalization)


def segment_prepared(pre: dict, predictor: Predictor, *, lcc_classes=(),
                     keep_probabilities: bool = False, progress=None,
                     stats: dict | None = None):
  """`segment` from `prepare`'s output (which it consumes: its image is dropped)."""
  plan = predictor.plan
  if stats is not None:
    stats["model_grid"] = tuple(int(s) for s in pre["image"].shape[:3])
  labels, probs = predictor.predict_volume(pre.pop("image"), keep_probabilities=keep_probabilities,
                                           progress=progress, stats=stats)
  if len(lcc_classes):
    labels = postprocess.keep_largest(labels, lcc_classes)
  out = preprocess.invert_label(labels, pre["crop_box"], pre["original_shape"],
                                pre["original_spacing"], plan.target_spacing, plan.num_classes)
  del labels
  if probs is not None:
    probs = invert_probabilities(probs, pre["crop_box"], pre["original_shape"])
  return out, probs


def segment(image: np.ndarray, spacing, predictor: Predictor, *, lcc_classes=(),
            keep_probabilities: bool = False, progress=None, stats: dict | None = None):
  """Segments one scan on its own grid.

  Args:
    image: (D, H, W, C) float32 raw intensities (HU for CT).
    spacing: mm (z, y, x) of `image`.
    predictor: the domain's `Predictor`.
    lcc_classes: class ids whose largest connected component alone is kept
      (applied on the model's grid, before inversion).
    keep_probabilities: also return the probability maps.
    progress: called with (windows done, windows total).
    stats: if given, receives 'buffer_bytes', 'windows' and 'model_grid' (D', H', W').
  Returns:
    (labels uint8 (D, H, W), probabilities uint8 (D, H, W, K) quantized or None).
  """
  return segment_prepared(prepare(image, spacing, predictor.plan), predictor,
                          lcc_classes=lcc_classes, keep_probabilities=keep_probabilities,
                          progress=progress, stats=stats)


# ----------------------------------------------------------------------------
# Post-processing decision.

def lcc_classes(predictor: Predictor, mode: str) -> list[int]:
  """Class ids to filter for --postprocess=`mode` (auto uses the stored decision)."""
  if mode not in POSTPROCESS_MODES:
    raise ConfigError(f"--postprocess {mode!r} is not one of {POSTPROCESS_MODES}.")
  if mode == "off":
    return []
  if mode == "on":
    return list(range(1, predictor.plan.num_classes))
  return postprocess.classes_to_filter(predictor.decision or {}, predictor.plan.class_names)


def validation_examples(plan: DomainPlan, config=None, *, split: str = "validation",
                        log=print) -> list[dict]:
  """The labelled examples of `split` of the domain's dataset ([] if unavailable)."""
  from u2net_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import U2NetError  # pylint: disable=g-import-not-at-top
  directory = plan.dataset_dir
  try:
    if (not directory or not os.path.isdir(directory)) and config is not None:
      from u2net_jax import domains  # pylint: disable=g-import-not-at-top
      spec = domains.DomainSpec(plan.name, plan.channel_names, plan.class_names,
                                plan.modality, plan.target_spacing, plan.patch_size)
      directory = datasets.ensure_built(config, [spec], log=log)[plan.name]
    if not directory or not os.path.isdir(directory):
      return []
    examples = datasets.read_examples(directory, split)
  except U2NetError as e:
    log(f"warning: no {split} cases of {plan.name!r} ({e})")
    return []
  return [ex for ex in examples if bool(ex.get("has_label", True))]


def decide_postprocessing(predictor: Predictor, examples, *, progress=None) -> dict:
  """The largest-component decision of `predictor` on labelled preprocessed examples."""
  preds, labels = [], []
  for ex in examples:
    pred, _ = predictor.predict_volume(np.asarray(ex["image"], np.float32))
    preds.append(pred)
    labels.append(np.asarray(ex["label"]))
    if progress:
      progress()
  return postprocess.decide(preds, labels, predictor.plan.class_names)


def ensure_decision(predictor: Predictor, workdir: str, config=None, *, log=print) -> dict | None:
  """The stored decision for the predictor's step, computing and storing it if missing."""
  found = postprocess.read_decision(workdir, predictor.plan.name, predictor.step)
  if found is not None:
    predictor.decision = found
    return found
  examples = validation_examples(predictor.plan, config, log=log)
  if not examples:
    log(f"warning: no labelled validation cases for {predictor.plan.name!r}: "
        "largest-component post-processing stays off (--postprocess=on forces it).")
    return None
  log(f"deciding post-processing of {predictor.plan.name!r} on {len(examples)} validation "
      "case(s) (once per checkpoint) ...")
  decision = decide_postprocessing(predictor, examples)
  postprocess.write_decision(workdir, predictor.plan.name, predictor.step, decision,
                             len(examples))
  for name, d in decision.items():
    log(f"  {name}: Dice {d['dice_before']:.3f} -> {d['dice_after']:.3f} with the largest "
        f"component only: {'apply' if d['apply'] else 'skip'}")
  predictor.decision = decision
  return decision


# ----------------------------------------------------------------------------
# The command.

def _progress_bar(total: int, desc: str, position: int = 0, leave: bool = True):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, position=position, leave=leave, file=sys.stderr,
              dynamic_ncols=True, mininterval=0.5)


def plan_cases(input_path: str, output: str, plan: DomainPlan):
  """(cases, their metas, label paths), all checked before anything is read or written."""
  cases = inputs.discover(input_path)
  metas = [inputs.check_case(c, plan) for c in cases]
  return cases, metas, inputs.output_paths(cases, input_path, output)


def predict_case(predictor: Predictor, case, path: str, *, classes, save_probabilities: bool,
                 progress: bool) -> dict:
  """Predicts one case (from `plan_cases`) and writes its outputs; returns its info."""
  t0 = time.time()
  image, meta = inputs.load(case)
  inner = _progress_bar(0, case.case_id, position=1, leave=False) if progress else None

  def tick(i, n):
    if inner is not None:
      inner.total = n
      inner.n = i
      inner.refresh()

  try:
    stats = {}
    pre = prepare(image, meta.spacing, predictor.plan)
    del image  # the raw scan is not needed past preprocessing
    label, probs = segment_prepared(pre, predictor, lcc_classes=classes,
                                    keep_probabilities=save_probabilities, progress=tick,
                                    stats=stats)
  finally:
    if inner is not None:
      inner.close()
  outputs.save_label(path, label, meta)
  info = {"case_id": case.case_id, "output": path, "seconds": time.time() - t0,
          "shape": meta.shape, **stats}
  if probs is not None:
    info["probabilities"] = inputs.probabilities_path(path)
    outputs.save_probabilities(info["probabilities"], probs, meta)
  return info


def predict_cases(predictor: Predictor, cases, label_paths, *, postprocess_mode: str = "auto",
                  save_probabilities: bool = False, progress: bool = True, log=print) -> list[dict]:
  """Predicts `cases` (from `plan_cases`) and writes their outputs; returns per-case info.

  A case that fails once its headers were checked (truncated voxel data,
  NaN voxels, out of memory in the sliding window, ...) does not stop the
  others: it is reported as it happens and all failures are raised at the end
  (`CasesFailed`). Outputs are written atomically, so a failed case leaves no
  partial file.
  """
  classes = lcc_classes(predictor, postprocess_mode)
  names = [predictor.plan.class_names[c] for c in classes]
  log(f"{predictor.plan.name}: {len(cases)} case(s); largest-component filter on "
      f"{names or 'no class'} (--postprocess={postprocess_mode})")
  bar = _progress_bar(len(cases), "cases") if progress else None
  done, failed = [], []
  for case, path in zip(cases, label_paths):
    try:
      done.append(predict_case(predictor, case, path, classes=classes,
                               save_probabilities=save_probabilities, progress=progress))
    except Exception as e:  # pylint: disable=broad-except — one bad case must not lose the rest
      if not isinstance(e, U2NetError):  # unexpected: keep the traceback for a bug report
        traceback.print_exc(file=sys.stderr)
      reason = str(e) if isinstance(e, U2NetError) else f"{type(e).__name__}: {e}"
      failed.append((case.case_id, reason))
      log(f"warning: case {case.case_id} failed ({reason}); going on with the others.")
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  if failed:
    raise CasesFailed(done, failed)
  return done


def run(config, workdir: str, *, domain: str, input_path: str, output: str,
        postprocess_mode: str = "auto", save_probabilities: bool = False,
        progress: bool = True, log=print) -> list[dict]:
  """--mode=predict from a workdir (or from an export folder given as workdir).

  Every input is checked (domain, files, headers, channel counts, output
  names) before the checkpoint is read or anything is written. A case that
  fails after that is skipped; `CasesFailed` at the end names each (exit 2).
  """
  if postprocess_mode not in POSTPROCESS_MODES:
    raise ConfigError(f"--postprocess {postprocess_mode!r} is not one of {POSTPROCESS_MODES}.")
  if not input_path:
    raise InputError("--input is required: a NIfTI file, channel files or a folder.")
  source = model_source.open_source(workdir, config)
  plan = source.plan(domain, log=log)
  cases, _, label_paths = plan_cases(input_path, output, plan)
  predictor = source.predictor(domain, log=log)
  if postprocess_mode == "auto" and predictor.decision is None and source.config is not None:
    ensure_decision(predictor, workdir, source.config, log=log)
  try:
    done = predict_cases(predictor, cases, label_paths, postprocess_mode=postprocess_mode,
                         save_probabilities=save_probabilities, progress=progress, log=log)
  except CasesFailed as e:
    _report(e.done, log)
    raise
  _report(done, log)
  return done


def _report(done: list[dict], log) -> None:
  for d in done:
    log(f"wrote {d['output']} ({d['seconds']:.1f} s)")
