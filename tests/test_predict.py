"""--mode=predict: geometry round trips, bounded memory, post-processing, bad inputs."""

import dataclasses
import json
import os
import re
import shutil
import tracemalloc

import ml_collections
import nibabel as nib
import numpy as np
import pytest

import smoke_workdir
from u2net_jax import config_utils
from u2net_jax.infer import exported, inputs, model_source, postprocess, predict, review
from u2net_jax.data import plans
from u2net_jax.infer import sliding_window, volume
from u2net_jax.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  return smoke_workdir.trained(tmp_path_factory)


def oblique_affine(zooms=(0.9, 1.7, 2.5), flips=(-1, 1, -1)):
  """(4, 4) voxel → world map: rotated, anisotropic, with flipped axes."""
  a, b, c = np.deg2rad([20.0, -15.0, 30.0])
  rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
  ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
  rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
  affine = np.eye(4)
  affine[:3, :3] = rz @ ry @ rx @ np.diag(np.multiply(zooms, flips))
  affine[:3, 3] = [12.5, -40.0, 7.25]
  return affine


def write_nifti(path, data, affine=None):
  affine = oblique_affine() if affine is None else affine
  img = nib.Nifti1Image(np.asarray(data), affine)
  img.set_qform(affine, code=1)
  img.set_sform(affine, code=2)
  nib.save(img, str(path))
  return str(path)


def phantom(shape=(30, 26, 20), channels=1, seed=0):
  """(i, j, k[, c]) float32: noise, a bright box, a zero border on two sides."""
  rng = np.random.default_rng(seed)
  data = rng.normal(1.0, 0.03, size=shape).astype(np.float32)
  data[8:20, 6:18, 5:14] += 3.0
  data[:3] = 0
  data[:, -2:] = 0
  if channels > 1:
    data = np.stack([data * (c + 1) for c in range(channels)], axis=-1)
  return data


# -- streamed sliding window ------------------------------------------------------

def _toy_predict(k):
  w = np.linspace(-1.0, 1.0, k, dtype=np.float32)

  def fn(x):
    logits = x[..., :1] * w + np.cos(x[..., :1] * 3 + w)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  return fn


@pytest.mark.parametrize("shape,batch,mirror", [((21, 13, 18), 3, False), ((5, 9, 12), 2, True)])
def test_streamed_windows_equal_the_whole_volume_sliding_window(shape, batch, mirror):
  rng = np.random.default_rng(1)
  image = rng.normal(size=shape + (2,)).astype(np.float32)
  fn, patch, k = _toy_predict(3), (8, 8, 8), 3
  ref = sliding_window.sliding_window(image, fn, patch, k, batch_size=batch, mirror=mirror)
  out = np.concatenate([s for _, _, s in sliding_window.stream_slabs(
      image, fn, patch, k, batch_size=batch, mirror=mirror)], axis=0)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  labels, probs = sliding_window.predict_labels(image, fn, patch, k, batch_size=batch,
                                                mirror=mirror, keep_probabilities=True)
  np.testing.assert_array_equal(labels, np.argmax(ref, -1))
  np.testing.assert_allclose(probs, ref, atol=1e-3)


def test_official_window_positions_repeat_the_last_window_as_the_official_loop():
  # evaluate.batch_segmentation: centres range(64, W + 64, 64) clamped to W - 64.
  # W = 200: centres 64, 128, 136, 136 -> starts 0, 64, 72, 72.
  assert sliding_window.window_starts(200, 128, 0.5, "official") == [0, 64, 72, 72]
  assert sliding_window.window_starts(256, 128, 0.5, "official") == [0, 64, 128, 128]
  assert sliding_window.window_starts(128, 128, 0.5, "official") == [0, 0]
  assert sliding_window.window_starts(200, 128, 0.5) == [0, 64, 72]  # nnU-Net-like: once each


def test_official_window_weights_are_the_official_codes():
  # tinies.calPatchWeights' docstring: for a 128³ patch, w[0,0,0] = 0 (+1e-20),
  # w[0,0,1] ≈ 0.005, w[100,100,100] ≈ 0.4375, w[64,64,64] = 1.
  w = sliding_window.linear_weights((128, 128, 128))
  assert w[64, 64, 64] == 1.0 and w[0, 0, 0] == pytest.approx(1e-20, rel=1e-3)
  assert w[0, 0, 1] == pytest.approx(0.005, abs=5e-4)
  assert w[127, 0, 0] == pytest.approx(0.005, abs=5e-4)
  assert w[100, 100, 100] == pytest.approx(0.4375, abs=1e-3)
  # Hand value on 4³: distances to (2, 2, 2); d_max = √12 at (0,0,0), d_min 0.
  w4 = sliding_window.linear_weights((4, 4, 4))
  assert w4[3, 2, 2] == pytest.approx(1 - 1 / np.sqrt(12), rel=1e-6)


def test_official_blend_gives_the_labels_of_summed_weighted_logits():
  # The official code sums w·logits over windows and takes the arg-max; we
  # blend log-probabilities (logits minus a per-voxel constant): same labels.
  rng = np.random.default_rng(3)
  shape, patch, k = (12, 10, 9), (8, 8, 8), 3
  image = rng.normal(size=shape + (1,)).astype(np.float32)
  proj = rng.normal(size=(k,)).astype(np.float32)

  def logits_of(x):
    return np.sin(x[..., :1] * proj * 3) * 4

  def probs_fn(x):
    z = logits_of(x)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  w = sliding_window.linear_weights(patch)
  total = np.zeros(shape + (k,), np.float64)
  for sl in sliding_window.windows(shape, patch, 0.5, "official"):
    total[sl] += logits_of(image[sl]) * w[..., None]
  expected = np.argmax(total, -1)
  ref = sliding_window.sliding_window(image, probs_fn, patch, k, blend="official")
  np.testing.assert_array_equal(np.argmax(ref, -1), expected)
  np.testing.assert_allclose(ref.sum(-1), 1.0, rtol=1e-5)
  labels, _ = sliding_window.predict_labels(image, probs_fn, patch, k, blend="official")
  np.testing.assert_array_equal(labels, expected)
  out = np.concatenate([s for _, _, s in sliding_window.stream_slabs(
      image, probs_fn, patch, k, blend="official")], axis=0)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  with pytest.raises(InputError, match="blend 'box'"):
    sliding_window.sliding_window(image, probs_fn, patch, k, blend="box")


def _peak_bytes(fn):
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_streaming_memory_does_not_grow_with_depth():
  """A deep volume: naive stitching holds (D, H, W, K) floats, the stream one window's depth."""
  patch, k = (8, 8, 8), 4
  fn = _toy_predict(k)
  image = np.random.default_rng(0).normal(size=(240, 24, 24, 1)).astype(np.float32)
  naive_accumulator = 240 * 24 * 24 * (k + 1) * 4
  stats = {}
  peak = _peak_bytes(lambda: sliding_window.predict_labels(image, fn, patch, k, stats=stats))
  assert stats["buffer_bytes"] == 8 * 24 * 24 * (k + 1) * 4
  # labels (1 byte/voxel) + one slab buffer + a batch: far below the naive sums.
  assert peak < naive_accumulator / 4, (peak, naive_accumulator)
  assert _peak_bytes(lambda: sliding_window.sliding_window(image, fn, patch, k)) > naive_accumulator
  # Twice as deep: the same buffer.
  deeper = np.concatenate([image, image])
  stats2 = {}
  sliding_window.predict_labels(deeper, fn, patch, k, stats=stats2)
  assert stats2["buffer_bytes"] == stats["buffer_bytes"]


# -- the pipeline on a fake model: geometry and inversion -----------------------------

def _threshold_predictor(plan):
  """Class 1 where the (normalized) first channel is positive: no model needed."""
  def fn(x):
    p1 = 1.0 / (1.0 + np.exp(-8.0 * x[..., :1]))
    return np.concatenate([1.0 - p1] + [np.zeros_like(p1)] * (plan.num_classes - 2) + [p1], -1)
  return predict.Predictor(plan=plan, fn=fn, window_batch=3)


def _plan(spacing, channels=("MRI",), classes=("background", "organ")):
  return plans.DomainPlan("organ", "MRI", channels, classes, spacing, patch_size=(8, 8, 8))


@pytest.mark.parametrize("target", [(2.5, 1.7, 0.9), (2.0, 2.0, 2.0)])
def test_segmentation_lands_on_the_input_grid(tmp_path, target):
  """Oblique, anisotropic, flipped input; output grid = input grid, voxels in place."""
  data = phantom()
  src = write_nifti(tmp_path / "case.nii.gz", data)
  plan = _plan(target)
  p = _threshold_predictor(plan)
  cases, _, paths = predict.plan_cases(src, str(tmp_path / "out" / "seg.nii.gz"), plan)
  predict.predict_cases(p, cases, paths, postprocess_mode="off", save_probabilities=True,
                        progress=False, log=lambda *_: None)
  out = nib.load(paths[0])
  ref = nib.load(src)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
  assert out.header.get_zooms() == ref.header.get_zooms()
  assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
  np.testing.assert_allclose(out.header.get_qform(), ref.header.get_qform(), atol=1e-6)
  seg = np.asarray(out.dataobj)
  assert seg.dtype == np.uint8
  truth = np.zeros(data.shape, np.uint8)
  truth[8:20, 6:18, 5:14] = 1
  inter = np.sum((seg == 1) & (truth == 1))
  dice = 2 * inter / (np.sum(seg == 1) + np.sum(truth == 1))
  if target == (2.5, 1.7, 0.9):  # the input's own spacing: no resampling, exact
    np.testing.assert_array_equal(seg, truth)
  else:
    assert dice > 0.85
  assert not seg[:3].any() and not seg[:, -2:].any()  # outside the non-zero crop
  probs = nib.load(inputs.probabilities_path(paths[0]))
  assert probs.shape == ref.shape + (2,)
  np.testing.assert_allclose(probs.affine, ref.affine, atol=1e-6)
  pf = probs.get_fdata()
  assert pf.min() >= 0 and pf.max() <= 1.0 + 1e-6
  np.testing.assert_allclose(pf.sum(-1), 1.0, atol=2 / 255)


def test_channel_files_and_4d_files_give_the_same_case(tmp_path):
  data = phantom(channels=2)
  folder = tmp_path / "in"
  folder.mkdir()
  write_nifti(folder / "b_0000.nii.gz", data[..., 0])
  write_nifti(folder / "b_0001.nii.gz", data[..., 1])
  write_nifti(folder / "a.nii.gz", data)
  (folder / "dataset.json").write_text("{}")
  found = inputs.discover(str(folder))
  assert [c.case_id for c in found] == ["a", "b"]
  assert [len(c.paths) for c in found] == [1, 2]
  assert inputs.discover(str(folder / "b_0000.nii.gz")) == [found[1]]
  plan = _plan((2.5, 1.7, 0.9), channels=("T2", "ADC"))
  a, _ = inputs.load(found[0])
  b, _ = inputs.load(found[1])
  np.testing.assert_array_equal(a, b)
  p = _threshold_predictor(plan)
  cases, _, paths = predict.plan_cases(str(folder), str(tmp_path / "out"), plan)
  predict.predict_cases(p, cases, paths, postprocess_mode="off", progress=False,
                        log=lambda *_: None)
  assert sorted(os.listdir(tmp_path / "out")) == ["a.nii.gz", "b.nii.gz"]
  np.testing.assert_array_equal(np.asarray(nib.load(paths[0]).dataobj),
                                np.asarray(nib.load(paths[1]).dataobj))


# -- post-processing ---------------------------------------------------------------

def test_largest_component_rule():
  label = np.zeros((12, 12, 12), np.uint8)
  label[2:7, 2:7, 2:7] = 1
  noisy = label.copy()
  noisy[9:11, 9:11, 9:11] = 1  # a false-positive island
  assert not postprocess.keep_largest(noisy, [1])[9:, 9:, 9:].any()
  assert postprocess.decide([noisy], [label], ["bg", "organ"])["organ"]["apply"]
  two = label.copy()
  two[9:11, 9:11, 9:11] = 1  # two true components: filtering would lose one
  assert not postprocess.decide([two], [two], ["bg", "organ"])["organ"]["apply"]


def test_predictor_with_a_source_patch_predicts_through_the_official_resize(tmp_path):
  """Predictor.predict_volume (predict, exports, review) = volume.predict_labels; a
  whole scan still lands on its own grid."""
  plan = _plan((2.5, 1.7, 0.9))
  p = _threshold_predictor(plan)
  p.source_patch = (4, 6, 4)
  seen = []
  fn = p.fn
  p.fn = lambda x: (seen.append(x.shape), fn(x))[1]
  image = phantom()[..., None] - 2.0  # the box > 0, the rest < 0
  stats = {}
  labels, probs = p.predict_volume(image, keep_probabilities=True, stats=stats)
  assert seen and all(s[1:4] == (8, 8, 8) for s in seen)
  ref, _ = volume.predict_labels(image, fn, (8, 8, 8), 2, source_patch=(4, 6, 4),
                                  batch_size=3)
  np.testing.assert_array_equal(labels, ref)
  assert labels.shape == image.shape[:3] and probs.shape == image.shape[:3] + (2,)
  assert stats["resized_grid"] == (60, 34, 40)  # (30, 26, 20) × (8/4, 8/6, 8/4), floored
  truth = np.zeros(image.shape[:3], np.uint8)
  truth[8:20, 6:18, 5:14] = 1
  assert 2 * np.sum(labels & truth) / (labels.sum() + truth.sum()) > 0.95
  out, _ = predict.segment(phantom()[..., None], (2.5, 1.7, 0.9), p)
  assert out.shape == (30, 26, 20)


# -- workdir or export folder? (model_source) --------------------------------------

def _export_meta_only(directory, plan) -> str:
  """An export folder's meta.json alone: enough to tell it apart and read its plan."""
  os.makedirs(directory, exist_ok=True)
  meta = {"format": exported.FORMAT, "format_version": 1, "domain": plan.name,
          "plan": plan.to_dict()}
  with open(os.path.join(directory, exported.META_FILE), "w") as f:
    json.dump(meta, f)
  return str(directory)


def test_an_export_folder_and_a_workdir_are_told_apart(tmp_path):
  plan = _plan((2.0, 1.0, 1.0))
  folder = _export_meta_only(tmp_path / "export" / "organ", plan)
  source = model_source.open_source(folder)
  assert (source.kind, source.path, source.config) == ("export", folder, None)
  assert source.is_export and source.plan("") == source.plan("organ") == plan
  with pytest.raises(ConfigError, match="holds only 'organ'"):
    source.plan("heart")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"seed": 7}))
  source = model_source.open_source(str(workdir))
  assert source.kind == "workdir" and not source.is_export and source.config.seed == 7
  # With --config, a folder without config.json (nothing trained yet) is its workdir.
  given = ml_collections.ConfigDict({"seed": 1})
  source = model_source.open_source(str(tmp_path / "new"), given)
  assert source.kind == "workdir" and source.config is given


@pytest.mark.parametrize("kind", ["empty", "missing", "other_meta", "broken_meta"])
def test_a_folder_that_is_neither_is_one_clear_error_naming_it(tmp_path, kind):
  path = tmp_path / "neither"
  if kind != "missing":
    path.mkdir()
  if kind == "other_meta":
    (path / "meta.json").write_text(json.dumps({"format": "something else"}))
  elif kind == "broken_meta":
    (path / "meta.json").write_text("{not json")
  message = re.escape(repr(str(path))) + " is neither a workdir .* nor an export folder"
  with pytest.raises(ConfigError, match=message):
    model_source.open_source(str(path))
  with pytest.raises(ConfigError, match=message):
    review.open_predictors(str(path))
  out = tmp_path / "out"
  with pytest.raises(ConfigError, match=message):
    predict.run(None, str(path), domain="heart", input_path=str(tmp_path), output=str(out),
                progress=False, log=lambda *_: None)
  assert not out.exists()


@pytest.mark.slow
def test_cli_predict_from_a_folder_that_is_neither_exits_2_naming_it(tmp_path):
  proc = smoke_workdir.cli("--mode=predict", f"--workdir={tmp_path}", "--domain=heart",
                           f"--input={tmp_path}", f"--output={tmp_path / 'out'}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert f"error: {str(tmp_path)!r} is neither a workdir" in proc.stderr
  assert "Traceback" not in proc.stderr


# -- with the trained smoke model --------------------------------------------------

@pytest.mark.slow
def test_training_stored_the_plans_and_they_match_the_dataset_metadata(smoke):
  workdir, _ = smoke
  stored = plans.read(workdir)
  assert set(stored) == {"heart", "prostate"}
  assert stored["prostate"].channel_names == ("T2", "ADC")
  assert stored["prostate"].patch_size == (16, 16, 16)
  config = config_utils.load_config(workdir)
  specs = config_utils.resolve_domains(config)
  other = str(os.path.join(os.path.dirname(workdir), "no_plans"))
  os.makedirs(other, exist_ok=True)
  assert plans.load(other, config, specs, log=lambda *_: None) == stored


@pytest.mark.slow
def test_predict_end_to_end_with_auto_postprocessing(smoke, tmp_path, monkeypatch):
  workdir, _ = smoke
  config = config_utils.load_config(workdir)
  src = write_nifti(tmp_path / "scan.nii.gz", phantom(shape=(40, 30, 14), channels=2))
  done = predict.run(config, workdir, domain="prostate", input_path=src,
                     output=str(tmp_path / "out"), progress=True, log=lambda *_: None)
  out = nib.load(done[0]["output"])
  assert out.shape == (40, 30, 14)
  np.testing.assert_allclose(out.affine, nib.load(src).affine, atol=1e-6)
  assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
  decisions = json.load(open(os.path.join(workdir, postprocess.DECISIONS_FILE)))
  entry = decisions["prostate"]
  assert entry["cases"] == 2 and set(entry["classes"]) == {"peripheral_zone", "transition_zone"}
  # Decided once per checkpoint: a second run reads it back.
  monkeypatch.setattr(predict, "decide_postprocessing",
                      lambda *a, **k: pytest.fail("decision recomputed"))
  predict.run(config, workdir, domain="prostate", input_path=src, output=str(tmp_path / "out2"),
              progress=False, log=lambda *_: None)


@pytest.mark.slow
def test_large_volume_keeps_the_accumulator_one_window_deep(smoke, tmp_path):
  """A volume 20 windows deep: the sums stay one window deep (P0·H·W·(K+1) floats)."""
  workdir, _ = smoke
  config = config_utils.load_config(workdir)
  p = predict.from_workdir(config, workdir, "heart", log=lambda *_: None)
  image = phantom(shape=(16, 16, 320))  # (i, j, k): 320 slices along D
  image = np.transpose(image, (2, 1, 0))[..., None]
  stats = {}
  label, _ = predict.segment(image, p.plan.target_spacing, p, stats=stats)
  assert label.shape == (320, 16, 16)
  d, h, w = stats["model_grid"]
  assert d == 320
  assert stats["buffer_bytes"] == 16 * max(h, 16) * max(w, 16) * (2 + 1) * 4
  assert stats["buffer_bytes"] * 10 < d * max(h, 16) * max(w, 16) * 3 * 4


BAD = [
    ("prostate", "heart.nii.gz", InputError, "1 channel(s), but domain 'prostate' expects 2"),
    ("heart", "two.nii.gz", InputError, "2 channel(s), but domain 'heart' expects 1"),
    ("liver", "heart.nii.gz", ConfigError, "Unknown domain 'liver'"),
    ("heart", "notes.txt", InputError, "not a NIfTI image"),
    ("heart", "slice2d.nii.gz", InputError, "2D data"),
    ("heart", "slice.nii.gz", InputError, "a 2D image"),
    ("heart", "broken.nii.gz", InputError, "not a readable NIfTI file"),
    ("prostate", "c_0000.nii.gz", InputError, "channel file c_0001 is missing"),
    ("heart", "missing.nii.gz", InputError, "no such file or folder"),
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("bad")
  write_nifti(d / "heart.nii.gz", phantom())
  write_nifti(d / "two.nii.gz", phantom(channels=2))
  nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), str(d / "slice2d.nii.gz"))
  write_nifti(d / "slice.nii.gz", np.ones((20, 20, 1), np.float32))
  write_nifti(d / "c_0000.nii.gz", phantom())
  write_nifti(d / "c_0002.nii.gz", phantom())
  (d / "notes.txt").write_text("not an image")
  (d / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
  return d


@pytest.mark.slow
@pytest.mark.parametrize("domain,name,error,message", BAD)
def test_bad_input_is_one_clear_error_and_writes_nothing(smoke, bad_inputs, tmp_path, domain,
                                                         name, error, message):
  workdir, _ = smoke
  config = config_utils.load_config(workdir)
  out = tmp_path / "out"
  before = sorted(os.listdir(workdir))
  with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
    predict.run(config, workdir, domain=domain, input_path=str(bad_inputs / name),
                output=str(out), progress=False, log=lambda *_: None)
  assert not out.exists()
  assert sorted(os.listdir(workdir)) == before


@pytest.mark.slow
def test_cli_bad_input_exits_non_zero_without_traceback(smoke, bad_inputs, tmp_path):
  workdir, _ = smoke
  out = tmp_path / "out"
  proc = smoke_workdir.cli("--mode=predict", f"--workdir={workdir}", "--domain=prostate",
                           f"--input={bad_inputs / 'heart.nii.gz'}", f"--output={out}")
  assert proc.returncode == 2
  assert "error:" in proc.stderr and "expects 2 (T2, ADC)" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not out.exists()


def test_output_never_overwrites_the_input(bad_inputs):
  plan = _plan((1.0, 1.0, 1.0))
  src = str(bad_inputs / "heart.nii.gz")
  with pytest.raises(InputError, match="would overwrite the input"):
    predict.plan_cases(src, src, plan)
  copy = bad_inputs / "copy"
  copy.mkdir(exist_ok=True)
  shutil.copy(src, copy / "heart.nii.gz")
  with pytest.raises(InputError, match="would overwrite the input"):
    predict.plan_cases(str(copy), str(copy), plan)


def test_official_postprocessing_closes_keeps_the_largest_and_two_when_close_in_size():
  labels = np.zeros((12, 12, 12), np.uint8)
  labels[1:6, 1:6, 1:6] = 1      # 125 voxels with a one-voxel hole ...
  labels[3, 3, 3] = 0            # ... that the closing fills
  labels[8:11, 8:11, 8:11] = 1   # 27 voxels: 27·10 > 125, a second component
  labels[10, 1, 10] = 1          # 1 voxel: never kept
  labels[8:10, 1:3, 1:3] = 2     # class 2: one component, untouched
  one = postprocess.official(labels, 3, components=1)
  assert one[3, 3, 3] == 1 and one[9, 9, 9] == 0 and one[10, 1, 10] == 0
  assert (one == 1).sum() == 125 and (one == 2).sum() == 8
  two = postprocess.official(labels, 3, components=2)
  assert two[9, 9, 9] == 1 and two[10, 1, 10] == 0 and (two == 1).sum() == 125 + 27
  labels[8:11, 8:11, 8:11] = 0
  labels[9, 9, 9:11] = 1         # 2 voxels: 2·10 < 125, dropped even with two
  assert postprocess.official(labels, 3, components=2)[9, 9, 9] == 0
  assert postprocess.OFFICIAL_COMPONENTS["prostate"] == 2


@pytest.mark.slow
def test_export_records_the_source_patch_and_the_loaded_predictor_resizes(smoke, tmp_path):
  from u2net_jax.infer import export, exported  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import train  # pylint: disable=g-import-not-at-top
  workdir, _ = smoke
  config = config_utils.load_config(workdir)
  restored = train.restore_params(config, workdir, needs_data=False)
  params, specs, step = restored.params, restored.specs, restored.step
  spec = next(s for s in specs if s.name == "heart")
  plan = plans.read(workdir)["heart"]
  plain = export.export_domain(config, str(tmp_path / "plain"), spec, plan, params, step,
                               platforms=("cpu",), log=lambda *_: None)
  meta = json.load(open(os.path.join(plain, "meta.json")))
  assert meta["inference"]["source_patch"] is None and meta["format_version"] == 1
  assert exported.load(plain).source_patch is None
  config = dataclasses.replace(  # load_config gives a frozen Config
      config, data=dataclasses.replace(config.data,
                                       source_patch="heart:8x24x16,prostate:4x24x24"))
  path = export.export_domain(config, str(tmp_path / "resized"), spec, plan, params, step,
                              platforms=("cpu",), log=lambda *_: None)
  meta = json.load(open(os.path.join(path, "meta.json")))
  assert meta["inference"]["source_patch"] == [8, 24, 16] and meta["format_version"] == 2
  assert meta["input"]["shape"] == ["b", 16, 16, 16, 1]  # windows: the model's patch
  loaded = exported.load(path)
  in_process = predict.from_params(config, spec, plan, params, step)
  assert loaded.source_patch == in_process.source_patch == (8, 24, 16)
  image = np.random.default_rng(0).normal(size=(20, 30, 17, 1)).astype(np.float32)
  stats = {}
  a, _ = loaded.predict_volume(image, stats=stats)
  b, _ = in_process.predict_volume(image)
  assert a.shape == image.shape[:3] and stats["resized_grid"] == (40, 20, 17)
  assert np.mean(a == b) > 0.999
