"""`run.py --mode=params`: parameter tables from the config alone."""

import json
import os

import pytest

from u2net_jax.model import layers
from u2net_jax import param_table

import smoke_workdir  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import five_domain  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run(*args):
  return smoke_workdir.cli(*args, timeout=300)


@pytest.mark.slow
def test_params_mode_writes_counts_for_msd_without_data(tmp_path):
  # The msd preset needs no data folder for --mode=params.
  proc = _run("--config=experiments/five_domain.py:msd", "--mode=params",
              f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr
  counts = json.loads((tmp_path / "params.json").read_text())
  assert set(counts) == {"mode", "shared", "per_domain", "total"}
  assert counts["mode"] == "separable"
  assert list(counts["per_domain"]) == ["heart", "liver", "hippocampus", "prostate", "pancreas"]
  assert counts["total"] == counts["shared"] + sum(counts["per_domain"].values())
  assert "domain:prostate" in proc.stdout and "independent models" in proc.stdout


def test_msd_separable_is_under_two_percent_of_five_independent_models():
  config = five_domain.get_config("msd")
  config.model.downsample = "separable"  # our option; :msd has the official dense one
  totals = {mode: param_table.count(config, mode)["total"] for mode in layers.MODES}
  assert totals["separable"] < 0.02 * totals["independent"]
  # Each universal setting is smaller than five independent models.
  assert all(totals[m] < totals["independent"] for m in layers.MODES if m != "independent")
  config.model.downsample = "dense"  # the official code's design
  dense = param_table.count(config)
  assert 5.0e6 < dense["shared"] < 7.0e6
  assert dense["total"] < 0.04 * totals["independent"]  # 3.96 %


@pytest.mark.slow
def test_overrides_and_default_workdir(tmp_path):
  proc = _run("--config=experiments/five_domain.py:smoke", "--mode=params",
              "--config.model.mode=shared", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr
  counts = json.loads((tmp_path / "params.json").read_text())
  assert counts["mode"] == "shared"
  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top
  assert config_utils.default_workdir("experiments/five_domain.py", "smoke") == \
      os.path.join("runs", "five_domain_smoke")
  assert config_utils.default_workdir("experiments/five_domain.py", "") == \
      os.path.join("runs", "five_domain")


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("--config.data.tasks=heart,kidney", "Unknown domain 'kidney'"),
    ("--config.data.patch_size=(48,44,48)", "not divisible by 8"),
    ("--config.model.mode=unet", "model.mode 'unet'"),
    # Rejected while parsing the command line (run.py's flags_parser).
    ("--config.train.steps=abc", "flag --config.train.steps=abc: invalid literal for int()"),
    ("--config.train.stepz=1", "no such config field: 'stepz' Did you mean \"steps\""),
])
def test_bad_config_is_one_clear_line(tmp_path, override, message):
  proc = _run("--config=experiments/five_domain.py", "--mode=params", override,
              f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "params.json").exists()


@pytest.mark.slow
def test_missing_config_file_is_one_clear_line(tmp_path):
  proc = _run("--config=experiments/nope.py", "--mode=params", f"--workdir={tmp_path}")
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: could not load the --config file: [Errno 2] No such "
                                 "file or directory: 'experiments/nope.py'")


def test_msd_preset_counts_the_official_dense_downsampling():
  # `--mode=params` of :msd counts the official dense downsampling (our count:
  # no biases where an instance norm follows; FIDELITY.md).
  assert param_table.count(five_domain.get_config("msd"))["total"] == 6_550_404


@pytest.mark.parametrize("key,value,message", [
    ("train.update_scaling", "lars", "train.update_scaling 'lars'"),
    ("train.schedule", "cosine", "train.schedule 'cosine'"),
    ("train.lovasz_classes", "some", "train.lovasz_classes 'some'"),
    ("eval.blend", "box", "eval.blend 'box'"),
    ("eval.postprocess", "lcc", "eval.postprocess 'lcc'"),
    ("train.sampling", "random", "train.sampling 'random'"),
    ("data.normalization", "zscore", "data.normalization 'zscore'"),
])
def test_validate_names_the_bad_option(key, value, message):
  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = five_domain.get_config("msd")
  section, leaf = key.split(".")
  config[section][leaf] = value
  with pytest.raises(ConfigError, match=message):
    config_utils.validate(config)
