"""`eval.dice_grid`: metrics on the preprocessed grid or, as the official code,
on the source grid against the source NIfTI label (FIDELITY.md "grid of the Dice")."""

import os

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from test_msd_builder import _rewrite_json, write_task  # tiny MSD task folders
from u2net_jax import config_utils, metrics
from u2net_jax.infer import evaluate, postprocess
from u2net_jax.data import preprocess, reference
from u2net_jax.domains import DomainSpec
from experiments import five_domain
from u2net_jax.errors import ConfigError, DataError, InputError

EVAL = ml_collections.ConfigDict(dict(overlap=0.5, window_batch=2, mirror=False,
                                      blend="gaussian", postprocess="none",
                                      surface_tolerance_mm=2.0))


def _threshold_fn(x):
  """Probabilities of class 1 where channel 0 > 0: a model that copies the image."""
  p1 = 1.0 / (1.0 + np.exp(-8.0 * x[..., :1]))
  return np.concatenate([1.0 - p1, p1], -1)


def _hand_case():
  """One example: source (8, 6, 6) at 1 mm, crop box D 2:6, H 1:5, W 1:5, stored at
  (2, 1, 1) mm, so the stored grid is (2, 4, 4) and each stored voxel is 2 source voxels
  along D. The image is +1 on the stored foreground [1, 1:3, 1:3] (4 voxels), -1 elsewhere;
  the stored label is the same, so the preprocessed-grid Dice is 1."""
  fg = np.zeros((2, 4, 4), np.uint8)
  fg[1, 1:3, 1:3] = 1
  ex = dict(image=np.where(fg, 1.0, -1.0).astype(np.float32)[..., None], label=fg,
            spacing=np.array([2.0, 1.0, 1.0], np.float32),
            original_spacing=np.array([1.0, 1.0, 1.0], np.float32),
            original_shape=np.array([8, 6, 6], np.int32),
            crop_box=np.array([[2, 6], [1, 5], [1, 5]], np.int32), case_id="hand_000")
  # Source label: the stored foreground back on the source grid, D 2+2..2+4 = 4:6,
  # H and W 1+1..1+3 = 2:4 (8 voxels), plus 4 voxels outside the crop box (D = 7).
  source = np.zeros((8, 6, 6), np.uint8)
  source[4:6, 2:4, 2:4] = 1
  source[7, 0:2, 0:2] = 1
  return ex, source


SPEC = DomainSpec("liver", ("CT",), ("background", "liver"), "CT", (2.0, 1.0, 1.0), (2, 4, 4))


def test_original_grid_dice_sees_foreground_outside_the_crop_box():
  ex, source = _hand_case()
  seen = []

  def ref(example):
    seen.append(example["case_id"])
    return source, (1.0, 1.0, 1.0)

  pre = evaluate.evaluate_domain(_threshold_fn, [ex], SPEC, (2, 4, 4), EVAL)
  org = evaluate.evaluate_domain(_threshold_fn, [ex], SPEC, (2, 4, 4), EVAL, reference=ref)
  assert seen == ["hand_000"]
  assert pre["grid"] == "preprocessed" and org["grid"] == "original"
  assert pre["dice"] == {"liver": 1.0}
  # Prediction on the source grid: the 8 voxels [4:6, 2:4, 2:4], all in the reference
  # (12 voxels): Dice = 2·8 / (8 + 12) = 0.8.
  assert org["dice"]["liver"] == pytest.approx(0.8)
  assert org["mean_dice"] == pytest.approx(0.8)
  assert org["per_case"] == [{"case_id": "hand_000", "dice": {"liver": pytest.approx(0.8)}}]
  # HD95 and surface Dice are on the source grid too: the missed voxels are far away.
  assert pre["hd95_mm"]["liver"] == 0.0 and org["hd95_mm"]["liver"] > 0.0
  assert org["surface_dice"]["liver"] < 1.0


def test_to_original_grid_pastes_the_resampled_prediction_into_the_crop_box():
  ex, source = _hand_case()
  pred, label, spacing = evaluate.to_original_grid(ex["label"], ex, lambda e: (source, (1, 1, 1)),
                                                   2)
  expected = np.zeros((8, 6, 6), np.uint8)
  expected[4:6, 2:4, 2:4] = 1
  np.testing.assert_array_equal(pred, expected)
  np.testing.assert_array_equal(label, source)
  assert spacing == (1.0, 1.0, 1.0)


def test_original_grid_errors_name_the_case():
  ex, source = _hand_case()
  with pytest.raises(DataError, match=r"hand_000.*crop_box"):
    evaluate.to_original_grid(ex["label"], {k: v for k, v in ex.items() if k != "crop_box"},
                              lambda e: (source, (1, 1, 1)), 2)
  with pytest.raises(DataError, match=r"hand_000.*spacing \(1\.0, 1\.0, 2\.0\)"):
    evaluate.to_original_grid(ex["label"], ex, lambda e: (source, (1.0, 1.0, 2.0)), 2)
  with pytest.raises(DataError, match=r"hand_000.*\(8, 6, 5\)"):
    evaluate.to_original_grid(ex["label"], ex, lambda e: (source[..., :5], (1, 1, 1)), 2)
  with pytest.raises(DataError, match=r"hand_000.*not the preprocessed grid"):
    evaluate.to_original_grid(ex["label"][:1], ex, lambda e: (source, (1, 1, 1)), 2)


# -- msd_reference on a tiny MSD folder --------------------------------------------------


def _nifti_label(path):
  """(D, H, W) of a label file, read here with nibabel alone (array = file.T)."""
  return np.asarray(nib.load(path).dataobj).astype(np.int64).transpose(2, 1, 0)


@pytest.fixture()
def liver_task(tmp_path):
  """Task03_Liver in MSD layout: CT, labels 0 / 1 / 2 (tumour)."""
  manual = tmp_path / "manual"
  task = write_task(manual, "Task03_Liver", modality=("CT",), ct=True, junk=False)
  return str(manual), task


def _example(case_id, shape=(8, 10, 12)):
  return {"case_id": case_id, "original_shape": np.array(shape, np.int32)}


def test_msd_reference_merges_tumour_into_liver_and_keeps_the_build_axes(liver_task):
  manual, task = liver_task
  path = os.path.join(task, "labelsTr", "toy_003.nii.gz")
  raw = _nifti_label(path)
  assert set(np.unique(raw)) == {0, 1, 2}
  label, spacing = reference.msd_reference(manual, "liver")(_example(b"toy_003"))
  assert label.dtype == np.uint8 and label.shape == (8, 10, 12)
  np.testing.assert_array_equal(label, np.where(raw == 2, 1, raw))  # official L330–333
  # (z, y, x) = pixdim (k, j, i): case 3 has z 2.6 mm, y 1.0, x 0.8 (write_task).
  np.testing.assert_allclose(spacing, (2.6, 1.0, 0.8), rtol=1e-6)
  # Without the merge the tumour stays a class: the mapping is the build's.
  kept, _ = reference.msd_reference(manual, "liver", merge_labels=())(_example("toy_003"))
  np.testing.assert_array_equal(kept, raw)


def test_msd_reference_errors_name_the_file(liver_task, tmp_path):
  manual, task = liver_task
  ref = reference.msd_reference(manual, "liver")
  path = os.path.join(task, "labelsTr", "toy_001.nii.gz")
  with pytest.raises(DataError, match=r"toy_001\.nii\.gz.*original_shape \(8, 10, 13\)"):
    ref(_example("toy_001", (8, 10, 13)))
  with pytest.raises(DataError, match=r"labelsTr/toy_777\.nii\.gz.*'training' list"):
    ref(_example("toy_777"))
  os.remove(path)
  with pytest.raises(DataError, match=r"toy_001\.nii\.gz: label of case 'toy_001' not found"):
    ref(_example("toy_001"))
  # A new reference reads dataset.json as the build does: the listed file is missing.
  with pytest.raises(DataError, match=r"toy_001\.nii\.gz: label file listed in .* not found"):
    reference.msd_reference(manual, "liver")
  with pytest.raises(DataError, match="Task03_Liver: MSD task folder not found"):
    reference.msd_reference(str(tmp_path / "nowhere"), "liver")


def test_msd_reference_refuses_label_values_not_in_dataset_json(liver_task):
  manual, task = liver_task
  path = os.path.join(task, "labelsTr", "toy_002.nii.gz")
  img = nib.load(path)
  data = np.asarray(img.dataobj).copy()
  data[0, 0, 0] = 7
  nib.save(nib.Nifti1Image(data, img.affine), path)
  with pytest.raises(DataError, match=r"toy_002\.nii\.gz: label values \[7\]"):
    reference.msd_reference(manual, "liver")(_example("toy_002"))


# -- the training loop's evaluation on a built tiny MSD dataset -------------------------


def test_run_evaluation_scores_msd_cases_on_the_source_grid(tmp_path, monkeypatch):
  from u2net_jax.train import train  # pylint: disable=g-import-not-at-top
  from u2net_jax.data import datasets  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  # CT with a zero border (cropped away by the build) and labels 0 / 1; every label
  # also marks the source voxel (0, 0, 0), outside the crop box: only the source grid sees it.
  task = write_task(manual, "Task03_Liver", modality=("CT",), junk=False)
  # Liver's build merges 2 -> 1, so dataset.json lists a tumour class (no voxel has it).
  _rewrite_json(task, labels={"0": "background", "1": "liver", "2": "tumour"})
  for name in os.listdir(os.path.join(task, "labelsTr")):
    path = os.path.join(task, "labelsTr", name)
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(data, img.affine), path)
  config = five_domain.get_config("msd")
  config.data.tasks = "liver"
  config.data.manual_dir = str(manual)
  config.data.data_dir = str(tmp_path / "tfds")
  assert config.eval.dice_grid == "original"
  specs = config_utils.validate(config, needs_data=True)
  dirs = datasets.ensure_built(config, specs, log=lambda *_: None)
  val = {"liver": datasets.read_examples(dirs["liver"], "validation")}
  assert len(val["liver"]) == 2
  # A perfect model on the stored grid: it predicts the stored label.
  stored = {id(ex["image"]): ex["label"] for ex in val["liver"]}
  monkeypatch.setattr("u2net_jax.train.evaluation.make_predict_fn",
                      lambda parts, device: lambda params, i: None)
  monkeypatch.setattr(evaluate, "predict_volume",
                      lambda fn, image, *a, **k: stored[id(image)].copy())

  res = train.run_evaluation(None, None, specs, val, config, (16, 16, 16), 1,
                             lambda *_: None)["liver"]
  config.eval.dice_grid = "preprocessed"
  pre = train.run_evaluation(None, None, specs, val, config, (16, 16, 16), 1,
                             lambda *_: None)["liver"]
  assert (res["grid"], pre["grid"]) == ("original", "preprocessed")
  expected = []
  for ex in val["liver"]:
    # What the official code does: post-process on the preprocessed grid, paste into
    # the crop box of the source volume, compare with the source label file.
    pred = postprocess.official(ex["label"], 2, postprocess.OFFICIAL_COMPONENTS.get("liver", 1))
    pred = preprocess.invert_label(pred, ex["crop_box"], ex["original_shape"],
                                   ex["original_spacing"], ex["spacing"], 2, order=0)
    source = _nifti_label(os.path.join(task, "labelsTr", f"{ex['case_id']}.nii.gz"))
    assert source[0, 0, 0] == 1 and pred[0, 0, 0] == 0
    expected.append(metrics.dice(pred, source, 2)[0])
  assert [c["dice"]["liver"] for c in res["per_case"]] == pytest.approx(expected)
  assert res["dice"]["liver"] == pytest.approx(np.mean(expected))
  assert res["dice"]["liver"] < pre["dice"]["liver"]


# -- config ------------------------------------------------------------------------------


def test_dice_grid_config_defaults_and_validation():
  default, msd_preset = five_domain.get_config(""), five_domain.get_config("msd")
  assert default.eval.dice_grid == "preprocessed" and msd_preset.eval.dice_grid == "original"
  config_utils.validate(default)
  config_utils.validate(msd_preset)
  default.eval.dice_grid = "original"
  with pytest.raises(ConfigError, match=r"dice_grid='original' needs MSD data.*'synthetic'"):
    config_utils.validate(default)
  msd_preset.eval.dice_grid = "source"
  with pytest.raises(ConfigError, match=r"eval.dice_grid 'source' is not one of"):
    config_utils.validate(msd_preset)
  # Configs saved before the option existed evaluate on the preprocessed grid.
  del default.eval["dice_grid"]
  config_utils.validate(default)


def test_nearest_label_resize_keeps_ids_and_matches_hand_values():
  # order 0 = the official evaluation's nearest resampling: every output voxel
  # takes the id of the source voxel whose cell holds its centre.
  label = np.array([[[0, 1, 2, 2]]], np.uint8)  # (1, 1, 4)
  up = preprocess.resize_label(label, (1, 1, 8), 3, order=0)
  np.testing.assert_array_equal(up[0, 0], [0, 0, 1, 1, 2, 2, 2, 2])
  down = preprocess.resize_label(np.repeat(up, 2, axis=0), (1, 1, 4), 3, order=0)
  np.testing.assert_array_equal(down[0, 0], [0, 1, 2, 2])
  with pytest.raises(InputError, match="order"):
    preprocess.resize_label(label, (1, 1, 8), 3, order=3)


def test_official_postprocessing_scores_after_it_and_keeps_the_raw_dice():
  """A spurious blob away from the organ: removed by `eval.postprocess=official`
  (largest component), and the Dice before it is in the result too."""
  image = -np.ones((8, 12, 12, 1), np.float32)
  label = np.zeros((8, 12, 12), np.uint8)
  image[2:6, 2:6, 2:6] = 1.0   # the organ (64 voxels), labelled
  label[2:6, 2:6, 2:6] = 1
  image[3:5, 8:10, 8:10] = 1.0  # a blob of the same intensity (8 voxels), not labelled
  ex = dict(image=image, label=label, spacing=np.ones(3, np.float32), case_id="blob_000")
  spec = DomainSpec("liver", ("CT",), ("background", "liver"), "CT", (1.0, 1.0, 1.0), (8, 12, 12))
  post = ml_collections.ConfigDict(EVAL.to_dict())
  post.postprocess = "official"
  none = evaluate.evaluate_domain(_threshold_fn, [ex], spec, (8, 12, 12), EVAL)
  done = evaluate.evaluate_domain(_threshold_fn, [ex], spec, (8, 12, 12), post)
  assert none["mean_dice"] == pytest.approx(2 * 64 / (64 + 72))
  assert "mean_dice_raw" not in none
  assert done["mean_dice"] == pytest.approx(1.0)
  assert done["dice_raw"] == {"liver": pytest.approx(none["mean_dice"])}
  assert done["mean_dice_raw"] == pytest.approx(none["mean_dice"])
