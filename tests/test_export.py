"""--mode=export: per-domain folders, the Flax-free loader, equality with the in-process model."""

import json
import os

import jax
import nibabel as nib
import numpy as np
import pytest

import smoke_workdir
from u2net_jax import config_utils
from u2net_jax.infer import export, predict
from u2net_jax.infer import exported as loader
from u2net_jax.model import models
from u2net_jax.data import plans
from u2net_jax.train import train
from u2net_jax.errors import CheckpointError, ConfigError

# End to end (trains or runs run.py): `pytest -m 'not slow'` skips the module.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return smoke_workdir.exported(tmp_path_factory)


def _windows(n, channels, seed=0):
  return np.random.default_rng(seed).normal(size=(n, 16, 16, 16, channels)).astype(np.float32)


def test_export_folder_holds_predictor_weights_and_meta(exported):
  for name, channels, classes in (("heart", ["MRI"], 2), ("prostate", ["T2", "ADC"], 3)):
    d = os.path.join(exported, "export", name)
    meta = json.load(open(os.path.join(d, "meta.json")))
    assert meta["domain"] == name and meta["format"] == export.FORMAT
    plan = meta["plan"]
    assert plan["channel_names"] == channels and len(plan["class_names"]) == classes
    assert plan["patch_size"] == [16, 16, 16] and len(plan["target_spacing"]) == 3
    assert plan["normalization"] == "nnunet" and "ct_stats" in plan
    assert meta["input"]["shape"] == ["b", 16, 16, 16, len(channels)]
    assert {"jax", "flax", "u2net_jax", "numpy"} <= set(meta["versions"])
    assert "cpu" in meta["platforms"]
    for p, f in meta["platforms"].items():
      assert os.path.getsize(os.path.join(d, f)) > 0, p
    assert set(meta["platforms"]) | set(meta["platform_errors"]) == set(export.PLATFORMS)
    assert isinstance(meta["postprocessing"]["classes"], dict)


def test_weights_are_the_shared_ones_and_that_domains_only(exported):
  config = config_utils.load_config(exported)
  model = models.build_model(config_utils.resolve_domains(config), config.model)
  counts = models.param_counts(model)
  for name, other in (("heart", "prostate"), ("prostate", "heart")):
    with np.load(os.path.join(exported, "export", name, "weights.npz")) as npz:
      keys = list(npz.files)
      total = sum(npz[k].size for k in keys)
    assert not any(k.split("/")[-1] == other for k in keys)
    assert total == counts["shared"] + counts["per_domain"][name]


def test_loaded_export_equals_the_in_process_model(exported):
  config = config_utils.load_config(exported)
  restored = train.restore_params(config, exported)
  parts, params, specs, step = restored.parts, restored.params, restored.specs, restored.step
  stored = plans.read(exported)
  evaluation = train.make_predict_fn(parts, jax.local_devices()[0])
  for index, spec in enumerate(specs):
    loaded = loader.load(os.path.join(exported, "export", spec.name))
    in_process = predict.from_params(config, spec, stored[spec.name], params, step)
    for n in (1, 3):  # symbolic batch dimension
      x = _windows(n, spec.in_channels, seed=n)
      got = loaded(x)
      assert got.shape == (n, 16, 16, 16, spec.num_classes)
    np.testing.assert_allclose(got, in_process(x), rtol=0, atol=1e-6)
    # The evaluation path (all domains, index-selected, channel-padded).
    pad = np.zeros(x.shape[:-1] + (2,), np.float32)
    pad[..., :spec.in_channels] = x
    ref = evaluation(params, index)(pad)[..., :spec.num_classes]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_loader_runs_without_flax(exported):
  code = (
      "import sys, numpy as np\n"
      "from u2net_jax.infer import exported\n"
      f"p = exported.load({os.path.join(exported, 'export', 'prostate')!r})\n"
      "x = np.zeros((2, 16, 16, 16, 2), np.float32)\n"
      "assert p(x).shape == (2, 16, 16, 16, 3)\n"
      "labels, _ = p.predict_volume(np.zeros((20, 18, 17, 2), np.float32))\n"
      "assert labels.shape == (20, 18, 17)\n"
      "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'orbax', 'optax'))\n"
      "assert not bad, bad\n"
      "assert not [m for m in sys.modules if m.startswith('u2net_jax.model')]\n")
  proc = smoke_workdir.run(["-c", code], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_predict_from_the_export_equals_predict_from_the_workdir(exported, tmp_path):
  rng = np.random.default_rng(0)
  data = rng.normal(1.0, 0.3, size=(30, 22, 12, 2)).astype(np.float32)
  affine = np.diag([-1.2, 0.8, 3.0, 1.0])
  src = str(tmp_path / "scan.nii.gz")
  nib.save(nib.Nifti1Image(data, affine), src)
  config = config_utils.load_config(exported)
  kw = dict(domain="prostate", input_path=src, progress=False, log=lambda *_: None)
  a = predict.run(config, exported, output=str(tmp_path / "a"), **kw)[0]["output"]
  b = predict.run(None, os.path.join(exported, "export", "prostate"),
                  output=str(tmp_path / "b"), **kw)[0]["output"]
  np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
  np.testing.assert_allclose(nib.load(b).affine, affine)


def test_export_errors_are_clear(exported, tmp_path):
  with pytest.raises(ConfigError, match="holds only 'heart'"):
    loader.load(os.path.join(exported, "export", "heart"), domain="prostate")
  with pytest.raises(CheckpointError, match="not a u2net_jax export|not a readable"):
    loader.load(str(tmp_path))
  with pytest.raises(CheckpointError, match="no predictor for platform 'rocm'"):
    loader.load(os.path.join(exported, "export", "heart"), platform="rocm")
