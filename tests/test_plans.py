"""Preprocessing plans (data/plans.py): one domain description, files that read both ways."""

import json
import os

import pytest

from tfds_builders.synthetic_organs import generator
from u2net_jax import domains
from u2net_jax.data import plans
from u2net_jax.errors import ConfigError

# A plans file exactly as format version 1 writes it (key order included).
OLD_FILE = {
    "format_version": 1,
    "domains": {
        "liver": {
            "name": "liver", "modality": "CT", "channel_names": ["CT"],
            "class_names": ["background", "liver"], "target_spacing": [1.0, 0.77, 0.77],
            "normalization": "nnunet",
            "ct_stats": {"p005": -100.0, "p995": 200.5, "mean": 50.0, "std": 20.0},
            "patch_size": [64, 64, 64], "dataset_dir": "/data/liver/1.0.0"},
        "prostate": {
            "name": "prostate", "modality": "MRI", "channel_names": ["T2", "ADC"],
            "class_names": ["background", "peripheral_zone", "transition_zone"],
            "target_spacing": [3.6, 0.625, 0.625], "normalization": "nnunet",
            "ct_stats": None, "patch_size": [16, 16, 16], "dataset_dir": ""}}}


def test_an_old_plans_file_loads_and_is_written_back_unchanged(tmp_path):
  text = json.dumps(OLD_FILE, indent=2)
  (tmp_path / plans.PLANS_FILE).write_text(text)
  stored = plans.read(str(tmp_path))
  liver, prostate = stored["liver"], stored["prostate"]
  assert liver.target_spacing == (1.0, 0.77, 0.77) and liver.ct_stats["p995"] == 200.5
  assert prostate.channel_names == ("T2", "ADC") and prostate.patch_size == (16, 16, 16)
  again = tmp_path / "again"
  os.makedirs(again)
  path = plans.write(str(again), stored.values())
  assert open(path).read() == text
  assert plans.read(str(again)) == stored


def test_a_plan_is_the_domain_spec_it_was_made_from():
  spec = domains.MSD_DOMAINS["prostate"]
  plan = plans.from_metadata(spec, {"normalization": "official"})
  assert isinstance(plan, domains.DomainSpec)
  assert (plan.name, plan.in_channels, plan.num_classes) == ("prostate", 2, 3)
  assert (plan.in_channels, plan.num_classes) == (spec.in_channels, spec.num_classes)
  assert plan.target_spacing == plan.spacing == spec.spacing
  assert list(plan.to_dict()) == list(plans.PLAN_KEYS)
  assert plans.DomainPlan.from_dict({**plan.to_dict(), "added_later": 1}) == plan
  # The synthetic benchmark's domains are DomainSpecs too.
  heart = generator.DOMAINS["heart"]
  assert isinstance(heart, domains.DomainSpec) and (heart.in_channels, heart.num_classes) == (1, 2)


@pytest.mark.parametrize("change, message", [
    ({"name": "Liver"}, "name 'Liver' is invalid"),
    ({"class_names": ["background"]}, "at least 2 classes"),
    ({"target_spacing": [1.0, 0.0, 1.0]}, "3 positive mm values"),
    ({"ct_stats": None}, "no CT statistics"),
    ({"modality": None}, "modality None"),
])
def test_bad_plans_raise_config_errors_that_name_the_problem(change, message):
  d = {**OLD_FILE["domains"]["liver"], **change}
  with pytest.raises(ConfigError, match=message):
    plans.DomainPlan.from_dict(d)


def test_a_plan_with_missing_keys_is_malformed(tmp_path):
  with pytest.raises(ConfigError, match="Malformed preprocessing plan.*target_spacing"):
    plans.DomainPlan.from_dict({"name": "liver", "modality": "CT", "channel_names": ["CT"],
                                "class_names": ["background", "liver"]})
  (tmp_path / plans.PLANS_FILE).write_text(json.dumps(
      {"format_version": 1, "domains": {"liver": {"name": "liver"}}}))
  with pytest.raises(ConfigError, match="not a readable preprocessing plan"):
    plans.read(str(tmp_path))
