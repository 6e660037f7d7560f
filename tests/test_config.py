"""Typed configs (u2net_jax/config.py): one place for keys, types, defaults and choices."""

import dataclasses
import json
import os
import re

import pytest

from experiments import add_domain, five_domain
from u2net_jax import config as config_lib
from u2net_jax import config_utils
from u2net_jax.errors import ConfigError


@pytest.mark.parametrize("preset", ["", "msd", "smoke"])
def test_every_preset_parses_to_a_frozen_config(preset):
  cfg = config_lib.parse(five_domain.get_config(preset))
  assert isinstance(cfg.train.lr, float) and isinstance(cfg.data.patch_size, tuple)
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.train.lr = 1.0
  assert config_lib.parse(cfg) is cfg  # parsing a parsed config is free


def test_the_default_preset_is_the_defaults():
  # Defaults live in config.py only: the default preset adds nothing but its augment choices.
  preset = config_lib.parse(five_domain.get_config(""))
  assert dataclasses.replace(preset, augment=config_lib.Config().augment) == config_lib.Config()


def test_absent_keys_take_the_one_default():
  cfg = config_lib.parse({"train": {"lr": 0.1}, "model": {"mode": "shared"}})
  assert cfg.train.lr == 0.1 and cfg.model.mode == "shared"
  assert cfg.train.steps == config_lib.TrainConfig().steps
  assert cfg.eval == config_lib.EvalConfig()


def test_values_are_cast_once_to_their_type():
  cfg = config_lib.parse({"train": {"lr": 1, "steps": 10.0},
                          "data": {"patch_size": "16x32x32", "tasks": ["heart", "liver"]},
                          "model": {"pool_per_axis": [1, 2, 2], "downsample": "dense"}})
  assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
  assert cfg.train.steps == 10 and isinstance(cfg.train.steps, int)
  assert cfg.data.patch_size == (16, 32, 32) and cfg.model.pool_per_axis == (1, 2, 2)
  assert cfg.data.tasks == "heart,liver"


@pytest.mark.parametrize("values,match", [
    ({"train": {"lr": "fast"}}, "config.train.lr must be a number"),
    ({"train": {"steps": 1.5}}, "config.train.steps must be an integer"),
    ({"eval": {"mirror": "yes"}}, "config.eval.mirror must be true or false"),
    ({"train": {"learning_rate": 1e-3}}, r"Unknown key\(s\) \['learning_rate'\] in config.train"),
    ({"optimizer": {}}, r"Unknown key\(s\) \['optimizer'\] in config;"),
    ({"train": {"schedule": "cosine"}}, "config.train.schedule 'cosine' is not one of"),
    ({"model": {"depthwise_impl": "cudnn"}}, "config.model.depthwise_impl 'cudnn'"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be ≥ 1"),
    ({"model": {"pool_per_axis": (1, 2, 2), "downsample": "separable"}}, "downsample='dense'"),
    ({"data": {"patch_size": (32, 32)}}, "must be 3 positive ints"),
    ({"eval": {"dice_grid": "original"}}, "needs MSD data"),
    ({"extend": {"new_domains": "spleen"}}, "--config.init_from"),
    ({"data": {"source": "nifti"}}, "config.data.source 'nifti' is not one of"),
    ({"data": {"tasks": "heart,nifti:/data/x"}}, r"config.data.tasks entry 'nifti:/data/x'"),
    ({"data": {"tasks": " , "}}, "config.data.tasks is empty"),
    ({"data": {"source": "msd", "tasks": "heart,nnunet:/d/Dataset004_Hippocampus"},
      "eval": {"dice_grid": "original"}}, r"entries \['nnunet:/d/Dataset004_Hippocampus'\]"),
])
def test_bad_values_name_the_key(values, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.parse(values)


def test_task_entries_name_source_and_dataset():
  entries = config_lib.task_entries(
      "heart, msd:liver,nnunet:/raw/Dataset004_Hippocampus,hip=nnunet:hippocampus", "synthetic")
  assert [(e.name, e.source, e.ref) for e in entries] == [
      ("", "synthetic", "heart"), ("", "msd", "liver"),
      ("", "nnunet", "/raw/Dataset004_Hippocampus"), ("hip", "nnunet", "hippocampus")]
  assert entries[3].text == "hip=nnunet:hippocampus"
  (e,) = config_lib.task_entries(["Dataset004_Hippocampus"], "nnunet")
  assert (e.source, e.ref) == ("nnunet", "Dataset004_Hippocampus")


def test_saved_config_round_trips_and_old_files_load_with_defaults(tmp_path):
  cfg = config_lib.parse(add_domain.get_config("smoke").to_dict() | {"init_from": "base"})
  config_utils.save_config(cfg, str(tmp_path))
  assert config_utils.load_config(str(tmp_path)) == cfg
  # A workdir written before a key existed: the key takes today's default.
  path = os.path.join(tmp_path, "config.json")
  values = json.load(open(path))
  del values["train"]["update_scaling"], values["eval"]
  json.dump(values, open(path, "w"))
  loaded = config_utils.load_config(str(tmp_path))
  assert loaded.train.update_scaling == "none" and loaded.eval == config_lib.EvalConfig()
  values["train"]["lr"] = "x"
  json.dump(values, open(path, "w"))
  with pytest.raises(ConfigError, match="config.json: config.train.lr must be a number"):
    config_utils.load_config(str(tmp_path))


def test_engine_reads_no_second_default():
  # `section.get("key", default)` would put a second default beside config.py's.
  pattern = re.compile(r"\b(config|cfg|tcfg|ev|eval_cfg|model_cfg|m|dist|syn|ext)"
                       r"(\.(train|model|data|eval|distributed|extend|synthetic))*\.get\(")
  root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "u2net_jax")
  found = []
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        for i, line in enumerate(open(path), 1):
          if pattern.search(line):
            found.append(f"{os.path.relpath(path, root)}:{i}: {line.strip()}")
  assert not found, found
