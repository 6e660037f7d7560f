"""Tests of the `msd` TFDS builder on tiny MSD-layout task folders in tmp_path."""

import json
import os
import pathlib
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders import common
from tfds_builders.msd import msd
from u2net_jax.data import nifti
from u2net_jax.data import preprocess
from u2net_jax.errors import ConfigError, DataError

NII_SHAPE = (12, 10, 8)  # (i, j, k) in the file; ours is (D, H, W) = (8, 10, 12).
# Case k has pixdim (i, j, k) = (0.8, 1.0, Z_SPACINGS[k]): the median z is 2.5 mm.
Z_SPACINGS = (2.0, 2.2, 2.4, 2.6, 2.8, 3.0)


def _affine(z_spacing):
  c, s = np.cos(0.2), np.sin(0.2)  # Rotated in-plane, flipped x: non-trivial.
  return np.array([[-0.8 * c, -1.0 * s, 0.0, 30.0],
                   [-0.8 * s, 1.0 * c, 0.0, -20.0],
                   [0.0, 0.0, z_spacing, 5.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _save(path, data, affine):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(data, affine), path)


def write_task(root, folder="Task99_Toy", *, modality=("MRI",), ct=False, four_d=True,
               channel_files=False, num_train=6, num_test=2, junk=True):
  """A tiny MSD task. Returns its folder. Images have a zero border (cropped away,
  except CT, whose air is -1000) and labels 0/1 (+2 = 'tumour' for CT)."""
  task = os.path.join(str(root), folder)
  rng = np.random.default_rng(0)
  channels = len(modality)
  labels = {"0": "background", "1": "organ"}
  if ct:
    labels["2"] = "tumour"

  def image(k):
    data = np.full(NII_SHAPE + (channels,), -1000.0 if ct else 0.0, np.float32)
    data[1:11, 1:9, 1:7] = rng.normal(100.0 + 50 * np.arange(channels), 10.0,
                                      (10, 8, 6, channels))
    organ = np.zeros(NII_SHAPE, np.uint8)
    organ[3:9, 2:8, 2:6] = 1
    data[organ > 0] += 40.0 + k
    if ct:
      organ[4:6, 3:5, 3:4] = 2
    return data, organ

  training, test = [], []
  for k in range(num_train + num_test):
    data, lab = image(k)
    affine = _affine(Z_SPACINGS[k % len(Z_SPACINGS)])
    sub = "Tr" if k < num_train else "Ts"
    case = f"toy_{k:03d}"
    if channel_files:
      for c in range(channels):
        _save(f"{task}/images{sub}/{case}_{c:04d}.nii.gz", data[..., c], affine)
    elif channels == 1 and not four_d:
      _save(f"{task}/images{sub}/{case}.nii.gz", data[..., 0], affine)
    else:
      _save(f"{task}/images{sub}/{case}.nii.gz", data, affine)
    if k < num_train:
      _save(f"{task}/labelsTr/{case}.nii.gz", lab, affine)
      training.append({"image": f"./imagesTr/{case}.nii.gz",
                       "label": f"./labelsTr/{case}.nii.gz"})
    else:
      test.append(f"./imagesTs/{case}.nii.gz")
  if junk:  # macOS AppleDouble files of the MSD archives.
    for sub in ("imagesTr", "labelsTr"):
      with open(f"{task}/{sub}/._toy_000.nii.gz", "wb") as f:
        f.write(b"\x00\x05\x16\x07 junk")
  meta = {"name": "Toy", "modality": {str(c): m for c, m in enumerate(modality)},
          "labels": labels, "numTraining": num_train, "numTest": num_test,
          "training": training, "test": test}
  with open(f"{task}/dataset.json", "w") as f:
    json.dump(meta, f, indent=1)
  return task


def build(config, data_dir, manual_dir=None, overwrite=False):
  return common.build_atomically(
      lambda d: msd.Msd(config=config, data_dir=d, file_format="array_record"),
      str(data_dir), manual_dir=str(manual_dir) if manual_dir else None, overwrite=overwrite)


def read(path, split):
  source = tfds.builder_from_directory(path).as_data_source(split)
  return [source[i] for i in range(len(source))]


def label_file(task, case_id):
  return os.path.join(task, "labelsTr", f"{case_id}.nii.gz")


@pytest.fixture(scope="module")
def mri_build(tmp_path_factory):
  """A 1-channel MRI task at its own (per-case) spacing, target = file spacing of
  case 2 in-plane and no z resampling for the case whose spacing is 2.4 mm."""
  root = tmp_path_factory.mktemp("mri")
  task = write_task(root / "manual", four_d=False)
  config = msd.custom_config("toy_mri", "Task99_Toy", manual_dir=str(root / "manual"))
  path = build(config, root / "data", root / "manual")
  return task, path


def test_mri_build_splits_shapes_and_geometry(mri_build):
  task, path = mri_build
  builder = tfds.builder_from_directory(path)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 4, "validation": 2, "test": 2}
  md = builder.info.metadata
  # target_spacing None: per-axis median of the training cases (z, y, x).
  np.testing.assert_allclose(md["target_spacing"], (2.5, 1.0, 0.8), rtol=1e-6)
  assert md["class_names"] == ["background", "organ"]
  assert md["channel_names"] == ["MRI"] and md["modality"] == "MRI"
  assert md["normalization"] == "nnunet" and md["ct_stats"] is None
  assert len(md["train_cases"]) == 4 and len(md["validation_cases"]) == 2

  for split in ("train", "validation"):
    for ex in read(path, split):
      case = common.decode_case_id(ex["case_id"])
      assert case in md[f"{split}_cases"]
      k = int(case.split("_")[1])
      assert ex["has_label"]
      assert ex["image"].dtype == np.float32 and ex["image"].ndim == 4
      assert ex["image"].shape[-1] == 1
      assert ex["label"].dtype == np.uint8 and ex["label"].shape == ex["image"].shape[:3]
      np.testing.assert_allclose(ex["spacing"], md["target_spacing"], rtol=1e-6)
      np.testing.assert_allclose(ex["original_spacing"], (Z_SPACINGS[k], 1.0, 0.8), rtol=1e-6)
      np.testing.assert_array_equal(ex["original_shape"], (8, 10, 12))
      np.testing.assert_allclose(ex["affine"], _affine(Z_SPACINGS[k]), atol=1e-6)
      # The zero border (1 voxel in the file) is cropped on each side.
      np.testing.assert_array_equal(ex["crop_box"], [[1, 7], [1, 9], [1, 11]])
      assert set(np.unique(ex["label"])) == {0, 1}


def test_stored_label_inverts_to_the_source_label_file(mri_build, tmp_path):
  """Prediction path: invert the stored label and write it with the input's geometry."""
  task, path = mri_build
  md = tfds.builder_from_directory(path).info.metadata
  for ex in read(path, "train"):
    case = common.decode_case_id(ex["case_id"])
    back = preprocess.invert_label(ex["label"], ex["crop_box"], ex["original_shape"],
                                   ex["original_spacing"], ex["spacing"],
                                   len(md["class_names"]))
    truth, meta = nifti.load_label(label_file(task, case))
    if np.allclose(ex["original_spacing"], ex["spacing"], atol=1e-3):
      np.testing.assert_array_equal(back, truth)
    else:
      assert 2 * np.sum((back > 0) & (truth > 0)) / (np.sum(back > 0) + np.sum(truth > 0)) > 0.9
    out = str(tmp_path / f"{case}.nii.gz")
    nifti.save_label(out, back, meta)
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(label_file(task, case)).affine)


def test_test_split_is_unlabeled(mri_build):
  _, path = mri_build
  examples = read(path, "test")
  assert sorted(common.decode_case_id(e["case_id"]) for e in examples) == ["toy_006", "toy_007"]
  for ex in examples:
    assert not ex["has_label"] and not ex["label"].any()
    assert ex["label"].shape == ex["image"].shape[:3]


def test_build_and_read_never_import_tensorflow(mri_build):
  read(mri_build[1], "validation")
  assert "tensorflow" not in sys.modules


def test_fold_split_is_disjoint_covering_and_deterministic():
  ids = [f"case_{i:02d}" for i in range(23)]
  vals = [msd.fold_split(ids, f)[1] for f in range(5)]
  assert sorted(sum(vals, [])) == ids
  for f in range(5):
    train, val = msd.fold_split(ids[::-1], f)  # Order of listing does not matter.
    assert val == vals[f] and not set(train) & set(val)
    assert sorted(train + val) == ids
  assert msd.fold_split(ids, 0, seed=1)[1] != vals[0]


def test_fold_config_selects_its_validation_cases(mri_build, tmp_path):
  task, _ = mri_build
  manual = os.path.dirname(task)
  ids = [f"toy_{k:03d}" for k in range(6)]
  config = msd.custom_config("toy_fold3", "Task99_Toy", fold=3, target_spacing=(2.5, 1, 0.8),
                             normalization="official", manual_dir=manual)
  md = tfds.builder_from_directory(build(config, tmp_path, manual)).info.metadata
  train, val = msd.fold_split(ids, 3)
  assert md["validation_cases"] == val and md["train_cases"] == train
  assert md["fold"] == 3 and md["normalization"] == "official"


def test_ct_task_merges_tumour_and_stores_train_only_stats(tmp_path):
  task = write_task(tmp_path / "manual", "Task98_ToyCT", modality=("CT",), ct=True)
  config = msd.custom_config("toy_ct", "Task98_ToyCT", merge_labels=((2, 1),),
                             target_spacing=(2.0, 1.0, 0.8), manual_dir=str(tmp_path / "manual"))
  path = build(config, tmp_path / "data", tmp_path / "manual")
  md = tfds.builder_from_directory(path).info.metadata
  assert md["class_names"] == ["background", "organ"]
  assert md["label_map"] == {"0": 0, "1": 1, "2": 1}

  # Stats are those of the train split's foreground, not of all cases.
  train_imgs, train_labs, all_imgs, all_labs = [], [], [], []
  for k in range(6):
    case = f"toy_{k:03d}"
    img, _ = nifti.load_image(os.path.join(task, "imagesTr", f"{case}.nii.gz"))
    lab, _ = nifti.load_label(label_file(task, case))
    all_imgs.append(img)
    all_labs.append(lab)
    if case in md["train_cases"]:
      train_imgs.append(img)
      train_labs.append(lab)
  stats = md["ct_stats"]
  assert stats == pytest.approx(preprocess.ct_stats(train_imgs, train_labs))
  assert stats != pytest.approx(preprocess.ct_stats(all_imgs, all_labs))

  for ex in read(path, "train") + read(path, "validation"):
    assert set(np.unique(ex["label"])) == {0, 1}  # Tumour merged into organ.
    # CT is not cropped (air is -1000) and is clipped to the foreground range.
    np.testing.assert_array_equal(ex["crop_box"], [[0, 8], [0, 10], [0, 12]])
    hi = (stats["p995"] - stats["mean"]) / stats["std"]
    lo = (stats["p005"] - stats["mean"]) / stats["std"]
    assert ex["image"].max() <= hi + 1e-5 and ex["image"].min() >= lo - 1e-5


@pytest.mark.parametrize("channel_files", [False, True])
def test_two_channel_task(tmp_path, channel_files):
  """4D files (MSD) and nnU-Net channel files give the same 2-channel examples."""
  write_task(tmp_path / "manual", modality=("T2", "ADC"), channel_files=channel_files,
             num_test=0)
  config = msd.custom_config("toy_2ch", "Task99_Toy", target_spacing=(2.5, 1.0, 0.8),
                             manual_dir=str(tmp_path / "manual"))
  assert config.num_channels == 2  # Read from dataset.json.
  path = build(config, tmp_path / "data", tmp_path / "manual")
  builder = tfds.builder_from_directory(path)
  assert "test" not in builder.info.splits  # Empty test list: no split.
  assert builder.info.metadata["channel_names"] == ["T2", "ADC"]
  for ex in read(path, "train"):
    assert ex["image"].shape[-1] == 2
    # Per-channel z-score of the (mostly non-zero) cropped image.
    np.testing.assert_allclose(ex["image"].mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(ex["image"].std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_registered_configs_and_variants():
  names = [c.name for c in msd.Msd.BUILDER_CONFIGS]
  assert names == ["brain_tumour", "heart", "liver", "hippocampus", "prostate", "lung",
                   "pancreas", "hepatic_vessel", "spleen", "colon"]
  heart = msd.Msd.builder_configs["heart"]
  assert heart.task_folder == "Task02_Heart" and heart.target_spacing == (1.37, 1.25, 1.25)
  assert msd.Msd.builder_configs["liver"].merge_labels == ((2, 1),)
  assert msd.Msd.builder_configs["pancreas"].target_spacing == (2.5, 0.8, 0.8)
  assert msd.Msd.builder_configs["prostate"].num_channels == 2
  assert msd.Msd.builder_configs["lung"].target_spacing is None  # Median at build time.
  assert msd.task_config("heart") is heart
  assert msd.task_config("heart", fold=2, normalization="official").name == "heart_fold2_official"
  assert msd.task_config("liver", merge_labels=()).name == "liver_nomerge"
  with pytest.raises(ConfigError):
    msd.task_config("heart", fold=5)
  with pytest.raises(ConfigError):
    msd.custom_config("heart", "/x", num_channels=1)


def test_msd_preset_builds_with_the_official_normalization():
  from experiments import five_domain  # pylint: disable=g-import-not-at-top
  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.data import datasets  # pylint: disable=g-import-not-at-top
  c = five_domain.get_config("msd")
  _, cfg = datasets.builder_config(c, "heart")
  assert cfg.name == "heart_official" and cfg.normalization == "official"
  c.data.normalization = "nnunet"
  assert datasets.builder_config(c, "heart")[1] is msd.Msd.builder_configs["heart"]
  c.data.normalization = "zscore"
  with pytest.raises(ConfigError, match="data.normalization 'zscore'"):
    config_utils.validate(c)


# ------------------------------------------------------------- bad input


def _rewrite_json(task, **changes):
  path = os.path.join(task, "dataset.json")
  with open(path) as f:
    meta = json.load(f)
  meta.update(changes)
  with open(path, "w") as f:
    json.dump(meta, f)


def _replace_label(task, case, fn):
  path = label_file(task, case)
  img = nib.load(path)
  nib.save(nib.Nifti1Image(fn(np.asarray(img.dataobj)), img.affine), path)
  return path


def _replace_image(task, case, data, affine=None):
  path = os.path.join(task, "imagesTr", f"{case}.nii.gz")
  _save(path, data, _affine(2.0) if affine is None else affine)
  return path


def bad_missing_task_folder(task):
  os.rename(task, task + "_gone")
  return task


def bad_missing_json(task):
  os.remove(os.path.join(task, "dataset.json"))
  return os.path.join(task, "dataset.json")


def bad_malformed_json(task):
  path = os.path.join(task, "dataset.json")
  with open(path, "a") as f:
    f.write("{ trailing garbage")
  return path


def bad_missing_image(task):
  path = os.path.join(task, "imagesTr", "toy_003.nii.gz")
  os.remove(path)
  return path


def bad_missing_label(task):
  path = label_file(task, "toy_004")
  os.remove(path)
  return path


def bad_shape_mismatch(task):
  return _replace_image(task, "toy_000", np.ones((12, 10, 7, 1), np.float32))


def bad_affine_mismatch(task):
  affine = _affine(2.0)
  affine[1, 3] += 0.01
  return _replace_image(task, "toy_000", np.ones(NII_SHAPE + (1,), np.float32), affine)


def bad_unknown_label_value(task):
  def add_seven(lab):
    lab = lab.copy()
    lab[5, 5, 5] = 7
    return lab
  return _replace_label(task, "toy_005", add_seven)


def bad_nan_voxels(task):
  data = np.ones(NII_SHAPE + (1,), np.float32)
  data[6, 5, 4, 0] = np.nan
  return _replace_image(task, "toy_000", data)


def bad_truncated_image(task):
  path = os.path.join(task, "imagesTr", "toy_002.nii.gz")
  blob = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(blob[:len(blob) * 2 // 3])
  return path


def bad_not_nifti_label(task):
  path = label_file(task, "toy_001")
  with open(path, "w") as f:
    f.write("<html>404 Not Found</html>")
  return path


def bad_empty_training(task):
  _rewrite_json(task, training=[])
  return os.path.join(task, "dataset.json")


def bad_empty_images_tr(task):
  folder = os.path.join(task, "imagesTr")
  for name in os.listdir(folder):
    if not name.startswith("._"):  # Junk alone does not count as images.
      os.remove(os.path.join(folder, name))
  return folder


def bad_image_channels(task):
  return _replace_image(task, "toy_004", np.ones(NII_SHAPE + (2,), np.float32), _affine(2.8))


def bad_json_channels(task):
  _rewrite_json(task, modality={"0": "T2", "1": "ADC"})
  return os.path.join(task, "dataset.json")


BAD_INPUTS = [
    (bad_missing_task_folder, "task folder not found"),
    (bad_missing_json, "dataset.json not found"),
    (bad_malformed_json, "malformed JSON"),
    (bad_missing_image, "image file .* not found"),
    (bad_missing_label, "label file .* not found"),
    (bad_shape_mismatch, "shape"),
    (bad_affine_mismatch, "affine"),
    (bad_unknown_label_value, r"label values \[7\] are not listed"),
    (bad_nan_voxels, "NaN/inf"),
    (bad_truncated_image, "truncated or corrupt"),
    (bad_not_nifti_label, "not a readable NIfTI"),
    (bad_empty_training, "'training' must be a non-empty list"),
    (bad_empty_images_tr, "empty imagesTr"),
    (bad_image_channels, "2 channels, but .* lists 1 modalities"),
    (bad_json_channels, "lists 2 modalities .* expects 1 channels"),
]


@pytest.mark.parametrize("break_task, problem", BAD_INPUTS,
                         ids=[f.__name__[4:] for f, _ in BAD_INPUTS])
def test_bad_input_raises_data_error_and_writes_nothing(tmp_path, break_task, problem):
  manual, data = tmp_path / "manual", tmp_path / "data"
  task = write_task(manual, four_d=False, num_test=0)
  # num_channels given: the config must not need the (possibly broken) json.
  config = msd.custom_config("toy_bad", "Task99_Toy", num_channels=1,
                             target_spacing=(2.5, 1.0, 0.8))
  bad_file = break_task(task)
  with pytest.raises(DataError, match=problem) as err:
    build(config, data, manual)
  assert os.path.basename(bad_file) in str(err.value)
  leftovers = os.listdir(data) if os.path.isdir(data) else []
  assert leftovers == [], leftovers  # No dataset, no temporary build dir.


def test_failed_rebuild_keeps_previous_version_readable(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  task = write_task(manual, four_d=False, num_test=0)
  config = msd.custom_config("toy_keep", "Task99_Toy", num_channels=1,
                             target_spacing=(2.5, 1.0, 0.8))
  path = build(config, data, manual)
  before = read(path, "validation")
  bad_nan_voxels(task)
  with pytest.raises(DataError, match="NaN"):
    build(config, data, manual, overwrite=True)
  after = read(path, "validation")
  assert len(after) == len(before) == 2
  for a, b in zip(before, after):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert sorted(os.listdir(data)) == ["msd"]
