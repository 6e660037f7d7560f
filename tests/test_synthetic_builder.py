"""The synthetic_organs TFDS builder, the TF-free build command, atomic builds and the
checksums that find a built dataset's files changed later."""

import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import smoke_workdir
from tfds_builders import common, registry
from tfds_builders.synthetic_organs import synthetic_organs
from u2net_jax.data import datasets, integrity
from u2net_jax.errors import DataError

VERSION = str(synthetic_organs.SyntheticOrgans.VERSION)


def _small(domain, **kw):
  return synthetic_organs.make_config(domain, name=f"{domain}_small", num_train=4,
                                      num_validation=2, shape=(24, 32, 32), **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return {d: registry.build("synthetic_organs", _small(d), data_dir)
          for d in ("heart", "prostate")}


def test_layout_counts_and_features(built):
  path = built["prostate"]
  assert path.endswith(os.path.join("synthetic_organs", "prostate_small", VERSION))
  builder = tfds.builder_from_directory(path)
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.splits["validation"].num_examples == 2
  ex = datasets.read_examples(path, "train")[0]
  assert set(common.FEATURE_KEYS) <= set(ex)
  assert ex["image"].shape == (24, 32, 32, 2) and ex["image"].dtype == np.float32
  assert ex["label"].shape == (24, 32, 32) and ex["label"].dtype == np.uint8
  assert set(np.unique(ex["label"])) <= {0, 1, 2}
  assert ex["affine"].shape == (4, 4) and bool(ex["has_label"])
  np.testing.assert_allclose(np.linalg.norm(ex["affine"][:3, :3], axis=0)[::-1], ex["spacing"],
                             rtol=1e-5)


def test_metadata_records_difficulty_and_normalization(built):
  for path in built.values():
    md = datasets.metadata(path)
    assert 0.0 <= md["threshold_baseline_dice"] < 0.6
    assert 0.0 <= md["window_baseline_dice"] < 0.5
    assert 0.0 <= md["window_baseline_dice_raw"] < 0.5
    assert md["normalization"] == "nnunet" and md["class_names"][0] == "background"
  ex = datasets.read_examples(built["heart"], "train")
  # MRI: per-image z-score.
  assert abs(float(ex[0]["image"].mean())) < 0.05 and abs(float(ex[0]["image"].std()) - 1) < 0.05


def test_builds_are_deterministic(tmp_path, built):
  again = registry.build("synthetic_organs", _small("heart"), str(tmp_path))
  a = datasets.read_examples(built["heart"], "validation")
  b = datasets.read_examples(again, "validation")
  assert [x["case_id"] for x in a] == [x["case_id"] for x in b]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_failed_rebuild_leaves_the_previous_version_readable(tmp_path, monkeypatch):
  path = registry.build("synthetic_organs", _small("heart"), str(tmp_path))
  before = datasets.read_examples(path, "train")

  def boom(*a, **k):
    raise DataError("simulated failure half-way through the build")

  monkeypatch.setattr(synthetic_organs.SyntheticOrgans, "_generate_examples", boom)
  with pytest.raises(DataError, match="simulated"):
    registry.build("synthetic_organs", _small("heart"), str(tmp_path), overwrite=True)
  after = datasets.read_examples(path, "train")
  np.testing.assert_array_equal(before[0]["image"], after[0]["image"])
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-build")]


@pytest.mark.slow
def test_command_line_builds_without_tensorflow(tmp_path):
  code = ("import sys, runpy; sys.argv=['tfds_builders','build','synthetic_organs','--config',"
          f"'hippocampus','--data_dir',{str(tmp_path)!r}]\n"
          "try:\n  runpy.run_module('tfds_builders', run_name='__main__')\n"
          "except SystemExit as e:\n  assert not e.code, e.code\n"
          "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n")
  proc = smoke_workdir.run(["-c", code], timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "built synthetic_organs/hippocampus" in proc.stdout
  assert os.path.exists(tmp_path / "synthetic_organs" / "hippocampus" / VERSION /
                        "dataset_info.json")


@pytest.mark.slow
def test_unknown_builder_or_config_is_one_clear_line(tmp_path):
  for args, msg in ((["nope"], "Unknown builder 'nope'"),
                    (["synthetic_organs", "--config", "kidney"], "no config 'kidney'")):
    proc = smoke_workdir.run(["-m", "tfds_builders", "build", *args, "--data_dir",
                              str(tmp_path)], timeout=120)
    assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr


# -- integrity: files changed after the build ------------------------------------


def _copy(path, tmp_path) -> str:
  """A copy of dataset `path` in the standard layout under tmp_path (to damage it)."""
  config = os.path.basename(os.path.dirname(path))
  dst = tmp_path / "synthetic_organs" / config / VERSION
  shutil.copytree(path, dst)
  return str(dst)


def _shard(path, split) -> str:
  (name,) = [n for n in os.listdir(path) if n.startswith(f"synthetic_organs-{split}.")]
  return os.path.join(path, name)


@pytest.mark.parametrize("fault", ["truncate", "flip", "delete"])
def test_a_data_file_changed_after_the_build_is_named_on_read(built, tmp_path, fault):
  path = _copy(built["heart"], tmp_path)
  shard = _shard(path, "train")
  blob = pathlib.Path(shard).read_bytes()
  if fault == "truncate":
    pathlib.Path(shard).write_bytes(blob[:len(blob) // 2])
    problem = f"{shard} changed since it was built ({len(blob) // 2} bytes, {len(blob)} when"
  elif fault == "flip":  # same size: only the sha256 tells
    pathlib.Path(shard).write_bytes(blob[:100] + bytes([blob[100] ^ 0xFF]) + blob[101:])
    problem = f"{shard} changed since it was built (same size, other sha256"
  else:
    os.remove(shard)
    problem = f"{shard} is missing"
  with pytest.raises(DataError) as e:
    datasets.read_examples(path, "train")
  assert problem in str(e.value)
  # A variant config (not registered): the command line cannot make it; run.py rebuilds it.
  assert f"delete {path} and run again" in str(e.value)
  if fault == "flip":  # only the shards read are hashed: the other split still reads
    assert len(datasets.read_examples(path, "validation")) == 2
    assert datasets.metadata(path)["normalization"] == "nnunet"
  else:  # sizes are checked on every open
    with pytest.raises(DataError, match="since it was built|is missing"):
      datasets.metadata(path)


def test_datasets_built_before_checksums_read_unchecked(built, tmp_path):
  path = _copy(built["heart"], tmp_path)
  os.remove(os.path.join(path, integrity.FILE))
  assert len(datasets.read_examples(path, "train")) == 4
  pathlib.Path(os.path.join(path, integrity.FILE)).write_text("{ not json")
  with pytest.raises(DataError, match=f"{integrity.FILE} is unreadable"):
    datasets.read_examples(path, "train")


def test_registered_configs_record_their_rebuild_command():
  heart = registry.resolve_config("synthetic_organs", "heart")
  assert registry.rebuild_command("synthetic_organs", heart) == (
      "python -m tfds_builders build synthetic_organs --config heart --overwrite")
  assert registry.rebuild_command("synthetic_organs", _small("heart")) == ""
