"""Adding, removing, renaming domains from a trained run (experiments/add_domain.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smoke_workdir
from u2net_jax import config as config_lib
from u2net_jax import config_utils
from u2net_jax.train import train
from u2net_jax.errors import CheckpointError, ConfigError

from experiments import add_domain  # pylint: disable=g-import-not-at-top,wrong-import-position

# End to end (trains or runs run.py): `pytest -m 'not slow'` skips the module.
pytestmark = pytest.mark.slow


def _config(module, data_dir, **overrides):
  c = module.get_config("smoke")
  c.data.data_dir = data_dir
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The session's trained smoke run (heart, prostate) as the base, and spleen added to it.

  The base is only read here (smoke_workdir.trained: no second base training).
  """
  root = tmp_path_factory.mktemp("extend")
  base, data_dir = smoke_workdir.trained(tmp_path_factory)
  added = str(root / "added")
  cfg = _config(add_domain, data_dir, init_from=base)
  summary = train.train_and_evaluate(cfg, added)
  return dict(data_dir=data_dir, base=base, added=added, summary=summary, root=root)


def _restore(workdir):
  config = config_utils.load_config(workdir)
  restored = train.restore_params(config, workdir, which="latest")
  parts, params, specs = restored.parts, restored.params, restored.specs
  return config, parts, params, specs


def _logits(parts, params, domain, channels):
  x = np.random.default_rng(0).normal(size=(1, 16, 16, 16, channels)).astype(np.float32)
  return np.asarray(parts.merge(params)(jnp.asarray(x), domain))


def test_old_domains_predict_bit_identical(runs):
  _, bparts, bparams, _ = _restore(runs["base"])
  _, aparts, aparams, aspecs = _restore(runs["added"])
  assert [s.name for s in aspecs] == ["heart", "prostate", "spleen"]
  for name, channels in (("heart", 1), ("prostate", 2)):
    before = _logits(bparts, bparams, name, channels)
    after = _logits(aparts, aparams, name, channels)
    np.testing.assert_array_equal(before, after)


def test_shared_weights_unchanged_and_new_domain_trained(runs):
  _, _, bparams, _ = _restore(runs["base"])
  _, _, aparams, _ = _restore(runs["added"])
  for x, y in zip(jax.tree.leaves(bparams["shared"]), jax.tree.leaves(aparams["shared"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The new domain's weights moved away from their initialization.
  cfg = config_utils.load_config(runs["added"])
  specs = config_utils.validate(cfg)
  _, _, init_state, _, _ = train.build_train_state(cfg, specs, train.make_mesh(1))
  moved = [not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(
      jax.tree.leaves(init_state["params"]["domains"]["spleen"]),
      jax.tree.leaves(aparams["domains"]["spleen"]))]
  assert any(moved)


def test_frozen_weights_have_no_optimizer_state(runs):
  cfg = config_utils.load_config(runs["added"])
  assert cfg.train.freeze_shared
  specs = config_utils.validate(cfg)
  _, _, state, _, _ = train.build_train_state(cfg, specs, train.make_mesh(1))
  assert state["opt"]["shared"] is None
  assert sorted(state["opt"]["domains"]) == ["spleen"]


def test_summary_old_entries_equal_base_and_extension_report(runs):
  with open(os.path.join(runs["added"], "eval", "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(runs["base"], "eval", "summary.json")) as f:
    base = json.load(f)
  for name in ("heart", "prostate"):
    assert summary["domains"][name] == base["domains"][name]
  new = summary["extension"]["new_domains"]["spleen"]
  assert new["params_added"] == summary["params"]["per_domain"]["spleen"] > 0
  assert 0 < new["params_added_pct_of_independent"] < 100
  assert 0.0 <= new["independent_mean_dice"] <= 1.0
  assert os.path.isdir(os.path.join(runs["added"], "independent_spleen", "checkpoints"))


def test_new_domain_loss_falls_with_shared_frozen(runs):
  cfg = _config(add_domain, runs["data_dir"], init_from=runs["base"])
  cfg = train._with_overrides(config_lib.parse(cfg),
                              {"freeze_shared": True, "frozen_domains": "heart,prostate"})
  specs = config_utils.validate(cfg)
  mesh = train.make_mesh(1)
  model, parts, state, txs, txd = train.build_train_state(cfg, specs, mesh)
  step = jax.jit(train.make_train_step(parts, model, cfg, txs, txd))
  rng = np.random.default_rng(1)
  image = rng.normal(size=(2, 16, 16, 16, 2)).astype(np.float32)
  label = (image[..., 0] > 0.5).astype(np.int32)
  batch = {"image": image, "label": label, "domain": jnp.int32(2)}
  shared0 = jax.tree.map(np.asarray, state["params"]["shared"])
  losses = []
  for _ in range(8):
    state, out = step(state, batch, jnp.float32(1e-2), jnp.float32(1e-2))
    losses.append(float(out["loss"]))
  assert losses[-1] < 0.9 * losses[0]
  for x, y in zip(jax.tree.leaves(shared0), jax.tree.leaves(state["params"]["shared"])):
    np.testing.assert_array_equal(x, np.asarray(y))


def test_remove_and_rename_domains(runs):
  # Keep only heart, and serve the base's heart weights under the name 'liver'
  # too; train nothing new (steps=0 would skip training, so train all for 1 step
  # at lr 0: the weights stay those of the base).
  cfg = _config(add_domain, runs["data_dir"], init_from=runs["base"])
  cfg.data.tasks = "heart,liver"
  cfg.extend.new_domains = ""
  cfg.extend.rename = "liver=heart"
  cfg.extend.train = "all"
  cfg.extend.compare_independent = False
  cfg.train.steps = 1
  cfg.train.lr = 0.0
  cfg.train.weight_decay = 0.0
  workdir = str(runs["root"] / "renamed")
  train.train_and_evaluate(cfg, workdir)
  _, bparts, bparams, _ = _restore(runs["base"])
  _, rparts, rparams, rspecs = _restore(workdir)
  assert [s.name for s in rspecs] == ["heart", "liver"]
  before = _logits(bparts, bparams, "heart", 1)
  np.testing.assert_array_equal(before, _logits(rparts, rparams, "heart", 1))
  np.testing.assert_array_equal(before, _logits(rparts, rparams, "liver", 1))


def test_missing_domain_is_a_clear_error(runs, tmp_path):
  cfg = _config(add_domain, runs["data_dir"], init_from=runs["base"])
  cfg.data.tasks = "heart,liver"
  cfg.extend.new_domains = ""
  cfg.extend.train = "all"
  with pytest.raises(CheckpointError, match="has no domain 'liver'.*new_domains"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_other_architecture_and_missing_init_from(runs, tmp_path):
  cfg = _config(add_domain, runs["data_dir"], init_from=runs["base"])
  cfg.model.features_root = 8
  with pytest.raises(CheckpointError, match="features_root"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  cfg = _config(add_domain, runs["data_dir"])
  with pytest.raises(ConfigError, match="init_from"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  cfg = _config(add_domain, runs["data_dir"], init_from=str(tmp_path / "nope"))
  with pytest.raises(ConfigError, match="not a folder"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_similar_init_copies_the_nearest_domain(runs):
  cfg = _config(add_domain, runs["data_dir"], init_from=runs["base"])
  cfg.extend.init = "similar"
  base_cfg = config_utils.load_config(runs["base"])
  from u2net_jax.train import extend  # pylint: disable=g-import-not-at-top
  extension = extend.make_extension(cfg, config_utils.resolve_domains(cfg), base_cfg,
                                    config_utils.resolve_domains(base_cfg))
  # spleen (1 channel, 2 classes) matches heart's shape; prostate has 2 channels.
  assert extension.sources["spleen"] == "heart"
  cfg.extend.init = "copy:prostate"
  with pytest.raises(ConfigError, match="channels"):
    extend.make_extension(cfg, config_utils.resolve_domains(cfg), base_cfg,
                          config_utils.resolve_domains(base_cfg))
