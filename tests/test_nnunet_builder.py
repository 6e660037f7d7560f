"""The `nnunet` TFDS builder and nnU-Net domains in configs, on tiny v2 folders made here.

Each folder: DatasetXXX_Toy/ with dataset.json (nnU-Net v2 keys), imagesTr/CASE_0000.nii.gz,
CASE_0001.nii.gz (2 channels), labelsTr/CASE.nii.gz (3 labels incl. background) and
imagesTs/; volumes are 16×16×12 voxels (i, j, k), 0.8 × 0.8 × 1.5–1.9 mm.
"""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

import smoke_workdir
from experiments import five_domain
from tfds_builders import common, registry
from tfds_builders.msd import msd
from tfds_builders.nnunet import nnunet, raw
from u2net_jax import config_utils
from u2net_jax.data import datasets, integrity
from u2net_jax.errors import ConfigError, DataError

NII_SHAPE = (16, 16, 12)  # (i, j, k); ours is (D, H, W) = (12, 16, 16).
LABELS = {"background": 0, "peripheral": 1, "central": 2}


def _affine(k):
  return np.diag([0.8, 0.8, 1.5 + 0.1 * k, 1.0])


def write_dataset(root, folder="Dataset901_Toy", *, channels=("T2", "ADC"), num_train=5,
                  num_test=1, ending=".nii.gz", ct=False):
  """A tiny nnU-Net v2 raw dataset; returns its folder. Images have a zero border
  (cropped away, except CT, whose air is -1000)."""
  ds = os.path.join(str(root), folder)
  rng = np.random.default_rng(0)
  for k in range(num_train + num_test):
    data = np.full(NII_SHAPE + (len(channels),), -1000.0 if ct else 0.0, np.float32)
    data[1:15, 1:15, 1:11] = rng.normal(100.0, 10.0, (14, 14, 10, len(channels)))
    lab = np.zeros(NII_SHAPE, np.uint8)
    lab[4:9, 4:10, 3:8] = 1
    lab[9:12, 4:10, 3:8] = 2
    data[lab == 1] += 50.0
    data[lab == 2] += 100.0
    sub = "Tr" if k < num_train else "Ts"
    case = f"toy_{k:03d}"
    os.makedirs(f"{ds}/images{sub}", exist_ok=True)
    for c in range(len(channels)):
      nib.save(nib.Nifti1Image(data[..., c], _affine(k)),
               f"{ds}/images{sub}/{case}_{c:04d}{ending}")
    if k < num_train:
      os.makedirs(f"{ds}/labelsTr", exist_ok=True)
      nib.save(nib.Nifti1Image(lab, _affine(k)), f"{ds}/labelsTr/{case}{ending}")
  with open(f"{ds}/imagesTr/._toy_000_0000{ending}", "wb") as f:  # macOS junk: ignored
    f.write(b"\x00\x05\x16\x07")
  meta = {"channel_names": {str(c): n for c, n in enumerate(channels)}, "labels": dict(LABELS),
          "numTraining": num_train, "file_ending": ending, "name": "Toy"}
  with open(f"{ds}/dataset.json", "w") as f:
    json.dump(meta, f, indent=1)
  return ds


def read(path, split):
  source = tfds.builder_from_directory(path).as_data_source(split)
  return sorted((source[i] for i in range(len(source))),
                key=lambda ex: common.decode_case_id(ex["case_id"]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(dataset folder, built dataset dir): built as the command line does (config by name)."""
  root = tmp_path_factory.mktemp("nnunet")
  folder = write_dataset(root / "raw")
  path = registry.build("nnunet", "dataset901_toy", str(root / "data"), manual_dir=folder)
  return folder, path


def test_build_splits_features_and_metadata(built):
  folder, path = built
  assert path.endswith(os.path.join("nnunet", "dataset901_toy", "1.0.0"))
  info = tfds.builder_from_directory(path).info
  assert {k: v.num_examples for k, v in info.splits.items()} == {
      "train": 4, "validation": 1, "test": 1}
  md = info.metadata
  assert md["channel_names"] == ["T2", "ADC"] and md["modality"] == "MRI"
  assert md["class_names"] == ["background", "peripheral", "central"]
  assert md["label_map"] == {"0": 0, "1": 1, "2": 2} and md["ct_stats"] is None
  # The training cases' median spacing (z 1.5..1.9 mm): 1.7 × 0.8 × 0.8.
  np.testing.assert_allclose(md["target_spacing"], (1.7, 0.8, 0.8), rtol=1e-6)
  ids = [f"toy_{k:03d}" for k in range(5)]
  assert (md["train_cases"], md["validation_cases"]) == msd.fold_split(ids, 0)
  assert md["test_cases"] == ["toy_005"]
  assert (md["source"], md["domain_name"], md["file_ending"]) == ("nnunet", "toy", ".nii.gz")
  assert md["task_folder"] == folder
  for ex in read(path, "train") + read(path, "validation"):
    k = int(common.decode_case_id(ex["case_id"]).split("_")[1])
    assert ex["image"].dtype == np.float32 and ex["image"].shape[-1] == 2
    assert ex["label"].dtype == np.uint8 and ex["label"].shape == ex["image"].shape[:3]
    assert set(np.unique(ex["label"])) == {0, 1, 2} and ex["has_label"]
    np.testing.assert_array_equal(ex["original_shape"], (12, 16, 16))
    np.testing.assert_allclose(ex["original_spacing"], (1.5 + 0.1 * k, 0.8, 0.8), rtol=1e-6)
    np.testing.assert_allclose(ex["affine"], _affine(k), atol=1e-6)
    np.testing.assert_array_equal(ex["crop_box"], [[1, 11], [1, 15], [1, 15]])
    # MRI: per-channel z-score of the cropped image.
    np.testing.assert_allclose(ex["image"].mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  (test,) = read(path, "test")
  assert not test["has_label"] and not test["label"].any()
  with open(os.path.join(path, integrity.FILE)) as f:
    assert json.load(f)["rebuild"] == (
        f"python -m tfds_builders build nnunet --config dataset901_toy --manual_dir {folder} "
        "--overwrite")


def test_a_shard_changed_after_the_build_names_itself_and_the_rebuild_command(built, tmp_path):
  folder, path = built
  copy = tmp_path / "nnunet" / "dataset901_toy" / "1.0.0"  # a moved data_dir: tmp_path
  shutil.copytree(path, copy)
  shard = copy / "nnunet-validation.array_record-00000-of-00001"
  shard.write_bytes(shard.read_bytes()[:-10])
  with pytest.raises(DataError) as e:
    datasets.read_examples(str(copy), "validation")
  assert str(e.value).startswith(f"{shard} changed since it was built (")
  assert str(e.value).endswith(
      f"; rebuild with: python -m tfds_builders build nnunet --config dataset901_toy "
      f"--manual_dir {folder} --overwrite --data_dir {tmp_path}")


def test_examples_equal_the_msd_builders_on_the_same_files(built, tmp_path):
  """The preprocessing, split and examples are the MSD builder's (tfds_builders/volumes.py)."""
  folder, path = built
  task = tmp_path / "Task91_Toy"
  shutil.copytree(folder, task)
  with open(task / "dataset.json", "w") as f:
    json.dump({"name": "Toy", "modality": {"0": "T2", "1": "ADC"},
               "labels": {str(v): k for k, v in LABELS.items()},
               "training": [{"image": f"./imagesTr/toy_{k:03d}.nii.gz",
                             "label": f"./labelsTr/toy_{k:03d}.nii.gz"} for k in range(5)],
               "test": ["./imagesTs/toy_005.nii.gz"]}, f)
  config = msd.custom_config("toy_as_msd", str(task))
  other = common.build_atomically(
      lambda d: msd.Msd(config=config, data_dir=d, file_format="array_record"),
      str(tmp_path / "data"))
  for split in ("train", "validation", "test"):
    for a, b in zip(read(path, split), read(other, split), strict=True):
      for key in common.FEATURE_KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_ct_channel_name_any_case_and_nii_files(tmp_path):
  folder = write_dataset(tmp_path / "raw", "Dataset902_ToyCT", channels=("ct",), num_test=0,
                         ending=".nii", ct=True)
  path = registry.build("nnunet", "toy_ct", str(tmp_path / "data"),
                        manual_dir=str(tmp_path / "raw"))
  md = tfds.builder_from_directory(path).info.metadata
  assert md["modality"] == "CT" and md["file_ending"] == ".nii"
  assert set(md["ct_stats"]) == {"p005", "p995", "mean", "std"}
  assert "test" not in tfds.builder_from_directory(path).info.splits
  assert md["task_folder"] == folder
  for ex in read(path, "train"):
    np.testing.assert_array_equal(ex["crop_box"], [[0, 12], [0, 16], [0, 16]])  # air kept


def test_names_and_folder_lookup(tmp_path):
  assert raw.domain_name("/x/Dataset004_Hippocampus") == "hippocampus"
  assert raw.domain_name("Dataset001_BrainTumour") == "brain_tumour"
  assert raw.domain_name("Dataset220_3DSeg") == "dataset220"
  assert raw.config_name("/x/Dataset004_Hippocampus/") == "dataset004_hippocampus"
  assert raw.config_name("Dataset004_Hippocampus", fold=2,
                         normalization="official") == "dataset004_hippocampus_fold2_official"
  a = write_dataset(tmp_path, "Dataset003_Liver", channels=("CT",), num_train=1, num_test=0)
  b = write_dataset(tmp_path, "Dataset004_Hippocampus", channels=("MRI",), num_train=1,
                    num_test=0)
  for ref in ("Dataset004_Hippocampus", "hippocampus", "4", "dataset004_hippocampus"):
    assert raw.find(ref, str(tmp_path)) == b  # in the nnUNet_raw folder
    assert raw.find(ref, b) == b  # manual_dir is the dataset folder
  assert raw.find(a) == a and raw.find("liver", str(tmp_path)) == a
  assert raw.list_datasets(str(tmp_path)) == [a, b] and raw.list_datasets(a) == [a]
  with pytest.raises(ConfigError, match=r"no such dataset folder in .*'Dataset003_Liver'"):
    raw.find("spleen", str(tmp_path))
  with pytest.raises(ConfigError, match="neither that dataset folder"):
    raw.find("spleen", a)
  # The command line's config names: one per folder found.
  assert registry.config_names("nnunet", str(tmp_path)) == ["dataset003_liver",
                                                            "dataset004_hippocampus"]
  with pytest.raises(DataError, match="needs --manual_dir"):
    registry.config_names("nnunet")


def _config(**data):
  c = five_domain.get_config("smoke")
  for k, v in data.items():
    c.data[k] = v
  return c


def test_domains_from_datasets_mixed_with_synthetic_and_msd(built, tmp_path):
  folder, path = built
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(path)))
  c = _config(source="nnunet", manual_dir=folder, tasks="toy", data_dir=data_dir)
  (spec,) = config_utils.validate(c, needs_data=True)
  assert (spec.name, spec.channel_names, spec.class_names, spec.modality) == (
      "toy", ("T2", "ADC"), ("background", "peripheral", "central"), "MRI")
  np.testing.assert_allclose(spec.spacing, (1.7, 0.8, 0.8), rtol=1e-6)
  assert datasets.ensure_built(c, [spec], log=pytest.fail) == {"toy": path}
  # Several sources, one domain per entry; `name=` renames (the same folder twice).
  c = _config(source="synthetic", tasks=f"heart,msd:liver,nnunet:{folder},toy2=nnunet:{folder}",
              data_dir=data_dir, manual_dir=str(tmp_path))
  specs = config_utils.resolve_domains(c)
  assert [s.name for s in specs] == ["heart", "liver", "toy", "toy2"]
  assert specs[1].modality == "CT" and specs[3].channel_names == ("T2", "ADC")
  assert [datasets.builder_config(c, s.name)[0] for s in specs] == [
      "synthetic_organs", "msd", "nnunet", "nnunet"]
  assert datasets.builder_config(c, "toy2")[1].name == "dataset901_toy"
  c.data.fold, c.data.normalization = 2, "official"
  assert datasets.builder_config(c, "toy")[1].name == "dataset901_toy_fold2_official"


def test_a_built_dataset_serves_without_its_raw_folder(tmp_path):
  folder = write_dataset(tmp_path / "raw", num_test=0)
  c = _config(source="nnunet", manual_dir=folder, tasks="toy", data_dir=str(tmp_path / "data"))
  (spec,) = config_utils.resolve_domains(c)  # from dataset.json and headers
  path = datasets.ensure_built(c, [spec], log=lambda *_: None)["toy"]
  shutil.rmtree(folder)
  assert config_utils.resolve_domains(c) == (spec,)  # now from the built metadata
  assert datasets.ensure_built(c, [spec], log=pytest.fail) == {"toy": path}
  # Another folder of the same name: the dataset found by name is used, with a warning.
  c.data.manual_dir = write_dataset(tmp_path / "elsewhere", num_test=0)
  logs = []
  assert datasets.ensure_built(c, [spec], log=logs.append) == {"toy": path}
  assert logs == [f"warning: {path} was built from {folder}, not {c.data.manual_dir} (same "
                  f"folder name); delete it to rebuild from {c.data.manual_dir}."]


@pytest.mark.parametrize("tasks, match", [
    ("nnunet:", "names no task"),
    ("nifti:/data/x", "'nifti' is not a data source"),
    ("toy,toy", r"\['toy'\] more than once"),
    ("spleen", "no such dataset folder|neither that dataset folder"),
])
def test_bad_task_entries_name_the_key(built, tasks, match):
  c = _config(source="nnunet", manual_dir=built[0], tasks=tasks)
  with pytest.raises(ConfigError, match=match) as e:
    config_utils.validate(c)
  assert "config.data.tasks" in str(e.value)


# ------------------------------------------------------------- bad input


def _edit_json(ds, **changes):
  path = os.path.join(ds, "dataset.json")
  with open(path) as f:
    meta = json.load(f)
  meta.update(changes)
  with open(path, "w") as f:
    json.dump(meta, f)
  return path


def bad_missing_json(ds):
  os.remove(os.path.join(ds, "dataset.json"))
  return os.path.join(ds, "dataset.json")


def bad_malformed_json(ds):
  path = os.path.join(ds, "dataset.json")
  with open(path, "a") as f:
    f.write("{ trailing")
  return path


def bad_missing_channel_file(ds):
  path = os.path.join(ds, "imagesTr", "toy_002_0001.nii.gz")
  os.remove(path)
  return path


def bad_missing_label(ds):
  path = os.path.join(ds, "labelsTr", "toy_003.nii.gz")
  os.remove(path)
  return path


def bad_channel_shape(ds):
  path = os.path.join(ds, "imagesTr", "toy_001_0001.nii.gz")
  nib.save(nib.Nifti1Image(np.ones((16, 16, 11), np.float32), _affine(1)), path)
  return path


def bad_label_value(ds):
  path = os.path.join(ds, "labelsTr", "toy_004.nii.gz")
  lab = np.asarray(nib.load(path).dataobj).copy()
  lab[2, 2, 2] = 3
  nib.save(nib.Nifti1Image(lab, _affine(4)), path)
  return path


def bad_region_labels(ds):
  return _edit_json(ds, labels={"background": 0, "whole": [1, 2], "core": 2})


def bad_regions_class_order(ds):
  return _edit_json(ds, regions_class_order=[1, 2])


def bad_file_ending(ds):
  return _edit_json(ds, file_ending=".mha")


def bad_num_training(ds):
  return _edit_json(ds, numTraining=7)


def bad_v1_modality(ds):
  path = _edit_json(ds, modality={"0": "T2", "1": "ADC"})
  with open(path) as f:
    meta = json.load(f)
  del meta["channel_names"]
  with open(path, "w") as f:
    json.dump(meta, f)
  return path


def bad_no_norm_channel(ds):
  return _edit_json(ds, channel_names={"0": "T2", "1": "noNorm"})


def bad_extra_channel(ds):
  path = os.path.join(ds, "imagesTr", "toy_000_0002.nii.gz")
  shutil.copy(os.path.join(ds, "imagesTr", "toy_000_0000.nii.gz"), path)
  return path


BAD_INPUTS = [
    (bad_missing_json, "dataset.json not found"),
    (bad_malformed_json, "malformed JSON"),
    (bad_missing_channel_file, "channel file of case 'toy_002' not found"),
    (bad_missing_label, "label file of training case 'toy_003' not found"),
    (bad_channel_shape, r"shape \(D, H, W\) \(11, 16, 16\) differs"),
    (bad_label_value, r"label values \[3\] are not listed"),
    (bad_region_labels, "region-based labels"),
    (bad_regions_class_order, "region-based labels"),
    (bad_file_ending, r"file_ending '\.mha' is not supported"),
    (bad_num_training, "numTraining is 7, but imagesTr/labelsTr hold 5"),
    (bad_v1_modality, "'modality' but no 'channel_names'"),
    (bad_no_norm_channel, "NoNormalization"),
    (bad_extra_channel, "channel 2, but .* lists 2 channel_names"),
]


@pytest.mark.parametrize("break_dataset, problem", BAD_INPUTS,
                         ids=[f.__name__[4:] for f, _ in BAD_INPUTS])
def test_bad_input_raises_data_error_naming_the_file_and_writes_nothing(
    tmp_path, break_dataset, problem):
  ds = write_dataset(tmp_path / "raw", num_test=0)
  data = tmp_path / "data"
  bad_file = break_dataset(ds)
  with pytest.raises(DataError, match=problem) as err:
    registry.build("nnunet", "dataset901_toy", str(data), manual_dir=ds)
  assert os.path.basename(bad_file) in str(err.value)
  leftovers = os.listdir(data) if os.path.isdir(data) else []
  assert leftovers == [], leftovers  # No dataset, no temporary build dir.


def test_config_settings_are_checked():
  with pytest.raises(ConfigError, match="nnU-Net config .* fold 5"):
    nnunet.NnunetConfig(name="x", task_folder="/x", fold=5)


# ------------------------------------------------------------ end to end


@pytest.mark.slow
def test_command_line_build_train_and_predict(tmp_path, tmp_path_factory):
  folder = write_dataset(tmp_path / "raw")
  data_dir = str(tmp_path / "data")
  proc = smoke_workdir.run(["-m", "tfds_builders", "build", "nnunet", "--manual_dir", folder,
                            "--data_dir", data_dir], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "built nnunet/dataset901_toy" in proc.stdout
  workdir = str(tmp_path / "work")
  proc = smoke_workdir.cli("--config=experiments/five_domain.py:smoke", f"--workdir={workdir}",
                           "--config.data.source=nnunet", f"--config.data.manual_dir={folder}",
                           "--config.data.tasks=toy", f"--config.data.data_dir={data_dir}",
                           "--config.train.steps=2", "--config.train.checkpoint_every=0",
                           env={"JAX_NUM_CPU_DEVICES": "1"})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "building dataset" not in proc.stdout + proc.stderr  # the CLI's build is reused
  assert "eval toy: mean Dice" in proc.stdout + proc.stderr
  src = os.path.join(folder, "imagesTs", "toy_005_0000.nii.gz")
  out = str(tmp_path / "pred" / "toy_005.nii.gz")
  proc = smoke_workdir.cli("--mode=predict", f"--workdir={workdir}", "--domain=toy",
                           f"--input={src}", f"--output={out}", "--progress=false",
                           env={"JAX_NUM_CPU_DEVICES": "1"})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  pred = nib.load(out)
  assert pred.shape == NII_SHAPE
  np.testing.assert_allclose(pred.affine, _affine(5), atol=1e-6)
  assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


@pytest.mark.slow
def test_command_line_without_a_dataset_folder_is_one_clear_line(tmp_path):
  proc = smoke_workdir.run(["-m", "tfds_builders", "build", "nnunet", "--manual_dir",
                            str(tmp_path), "--data_dir", str(tmp_path / "data")], timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert f"error: {tmp_path}: no dataset.json in it" in proc.stderr
