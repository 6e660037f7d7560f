"""Tests of the seeded synthetic organ generator (tfds_builders.synthetic_organs).

The difficulty contract (best intensity threshold < 0.6, best intensity window
< 0.5 validation Dice) is checked on 12 train / 6 validation cases per domain
(the benchmark default is 24 / 8) to keep the whole file under ~60 s.
"""

import numpy as np
import pytest
from scipy import ndimage

from tfds_builders.synthetic_organs import generator as gen

N_TRAIN, N_VAL = 12, 6
NAMES = ("heart", "liver", "hippocampus", "prostate", "pancreas", "spleen")


@pytest.fixture(scope="module")
def cases():
  """name -> (train cases, validation cases), generated once for the module."""
  return {name: (list(gen.generate_split(name, "train", num_cases=N_TRAIN)),
                 list(gen.generate_split(name, "validation", num_cases=N_VAL)))
          for name in NAMES}


def test_domain_registry():
  assert tuple(gen.DOMAINS) == NAMES
  expect = {
      "heart": ("MRI", 1, 2), "liver": ("CT", 1, 2), "hippocampus": ("MRI", 1, 3),
      "prostate": ("MRI", 2, 3), "pancreas": ("CT", 1, 2), "spleen": ("CT", 1, 2)}
  for name, d in gen.DOMAINS.items():
    assert (d.modality, d.in_channels, d.num_classes) == expect[name]
    assert d.class_names[0] == "background"
    assert all(40 <= n <= 96 for n in d.shape)
    assert len(d.spacing) == 3 and min(d.spacing) > 0
    assert (d.num_train, d.num_validation) == (24, 8)
  assert gen.DOMAINS["prostate"].channel_names == ("T2", "ADC")
  # Prostate keeps the MSD task's strong slice anisotropy.
  sp = gen.DOMAINS["prostate"].spacing
  assert sp[0] / sp[2] >= 2.5


def test_same_seed_same_case_different_seed_different():
  a = gen.generate_case("prostate", 7)
  b = gen.generate_case(gen.DOMAINS["prostate"], 7)
  c = gen.generate_case("prostate", 8)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert a["case_id"] == b["case_id"] != c["case_id"]
  assert not np.array_equal(a["image"], c["image"])
  assert not np.array_equal(a["label"], c["label"])


def test_equal_seeds_of_different_domains_differ():
  a = gen.generate_case("liver", 3)
  b = gen.generate_case("spleen", 3)
  assert not np.array_equal(a["image"], b["image"])


def test_split_seeds_disjoint_and_deterministic():
  seeds = {}
  for name in NAMES:
    for split in gen.SPLITS:
      for base in (0, 1):
        for i in range(50):
          s = gen.case_seed(name, split, i, base)
          assert s not in seeds, (name, split, base, i, seeds.get(s))
          seeds[s] = (name, split, base, i)
  first = next(gen.generate_split("hippocampus", "validation", base_seed=2))
  again = gen.generate_case("hippocampus", gen.case_seed("hippocampus", "validation", 0, 2))
  np.testing.assert_array_equal(first["image"], again["image"])
  ids = [c["case_id"] for c in gen.generate_split("hippocampus", "train", num_cases=3)]
  assert len(set(ids)) == 3


@pytest.mark.parametrize("name", NAMES)
def test_case_contract(cases, name):
  d = gen.DOMAINS[name]
  for c in cases[name][0] + cases[name][1]:
    img, lab = c["image"], c["label"]
    assert img.dtype == np.float32 and img.shape == d.shape + (d.in_channels,)
    assert np.isfinite(img).all()
    assert lab.dtype == np.uint8 and lab.shape == d.shape
    assert set(np.unique(lab)) <= set(range(d.num_classes))
    for k in range(1, d.num_classes):
      assert (lab == k).sum() >= 300, (c["case_id"], d.class_names[k])
    assert c["spacing"].dtype == np.float64 and c["spacing"].shape == (3,)
    np.testing.assert_allclose(c["spacing"], d.spacing)
    assert c["case_id"].startswith(name + "_")
    if d.modality == "CT":
      assert img.min() >= -1024 and img.max() <= 3071
      assert img.min() < -900 and img.max() > 400   # air and bone present
    else:
      assert img.min() >= 0   # Rician magnitude / ADC


@pytest.mark.parametrize("name", NAMES)
def test_foreground_fraction_is_sane(cases, name):
  fracs = np.array([(c["label"] > 0).mean() for c in cases[name][0] + cases[name][1]])
  assert fracs.min() > 0.001 and fracs.max() < 0.5, fracs


@pytest.mark.parametrize("name", NAMES)
def test_foreground_is_one_connected_organ(cases, name):
  """The target is one structure: its largest component holds ~all of it."""
  for c in cases[name][0][:4]:
    comp, n = ndimage.label(c["label"] > 0)
    sizes = np.bincount(comp.ravel())[1:]
    assert sizes.max() >= 0.95 * sizes.sum(), (c["case_id"], sizes)


def test_affine_is_ras_and_matches_spacing():
  c = gen.generate_case("prostate", 0)
  a, sp, shape = c["affine"], c["spacing"], c["label"].shape
  assert a.shape == (4, 4) and a.dtype == np.float64
  np.testing.assert_allclose(np.linalg.norm(a[:3, :3], axis=0), sp)
  # Voxel (k, j, i): k along z -> Superior, j along y -> Anterior, i -> Right.
  np.testing.assert_allclose(a[:3, :3], [[0, 0, sp[2]], [0, sp[1], 0], [sp[0], 0, 0]])
  centre = (np.array(shape) - 1) / 2
  np.testing.assert_allclose(a @ np.append(centre, 1.0), [0, 0, 0, 1], atol=1e-9)
  nib = pytest.importorskip("nibabel")
  assert nib.aff2axcodes(a) == ("S", "A", "R")


def test_shape_override_keeps_field_of_view():
  d = gen.DOMAINS["liver"]
  c = gen.generate_case("liver", 0, shape=(24, 40, 40))
  assert c["image"].shape == (24, 40, 40, 1) and c["label"].shape == (24, 40, 40)
  np.testing.assert_allclose(c["spacing"] * [24, 40, 40], np.multiply(d.spacing, d.shape))
  assert (c["label"] == 1).any()


def test_bad_domain_and_split_raise():
  with pytest.raises(ValueError, match="'kidney'.*heart"):
    gen.generate_case("kidney", 0)
  with pytest.raises(ValueError, match="kidney"):
    next(gen.generate_split("kidney", "train"))
  with pytest.raises(ValueError, match="'test'.*validation"):
    gen.generate_split("heart", "test")
  with pytest.raises(ValueError, match="seed"):
    gen.generate_case("heart", -1)


def test_threshold_baseline_finds_an_easy_threshold():
  """On data that a threshold does segment, the baseline scores ~1."""
  rng = np.random.default_rng(0)

  def case():
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:10, 4:12, 5:11] = 1
    img = rng.normal(0, 0.1, lab.shape).astype(np.float32) - 2.0 * lab
    return {"image": img[..., None], "label": lab}

  dice = gen.threshold_baseline_dice([case() for _ in range(3)], [case() for _ in range(2)], 2)
  assert dice > 0.98


def test_window_baseline_finds_an_easy_window():
  """On data that a band of intensities segments (and no threshold does), the window
  baseline scores ~1."""
  rng = np.random.default_rng(0)

  def case():
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:10, 4:12, 5:11] = 1
    img = rng.normal(0, 0.1, lab.shape).astype(np.float32)
    img += np.where(lab == 1, 0.0, np.where(np.arange(16)[None, None] < 8, -2.0, 2.0))
    return {"image": img[..., None], "label": lab}

  train, val = [case() for _ in range(3)], [case() for _ in range(2)]
  assert gen.window_baseline_dice(train, val, 2) > 0.98
  assert gen.threshold_baseline_dice(train, val, 2) < 0.8


@pytest.mark.parametrize("name", NAMES)
def test_difficulty_single_threshold_fails(cases, name):
  """Best global intensity threshold (any channel/direction) stays < 0.6 Dice."""
  train, val = cases[name]
  k = gen.DOMAINS[name].num_classes
  assert gen.threshold_baseline_dice(train, val, k) < 0.6
  # Also after per-case z-scoring, as MRI pipelines normalize.
  assert gen.threshold_baseline_dice(train, val, k, normalize=True) < 0.6


@pytest.mark.parametrize("name", NAMES)
def test_difficulty_intensity_window_fails(cases, name):
  """Best global intensity window lo <= x < hi (any channel) stays < 0.5 Dice."""
  train, val = cases[name]
  k = gen.DOMAINS[name].num_classes
  assert gen.window_baseline_dice(train, val, k) < 0.5
  assert gen.window_baseline_dice(train, val, k, normalize=True) < 0.5


def test_liver_density_varies_between_cases(cases):
  """Contrast phase and steatosis (synthetic_organs/liver.py): the liver's median HU
  spans a wide band across cases, which is what defeats an intensity window."""
  med = [float(np.median(c["image"][..., 0][c["label"] == 1])) for c in cases["liver"][0]]
  assert np.ptp(med) > 50, med


# -- Learnability evidence without JAX: local context beats a threshold. ------


def _local_features(img, spacing, modality):
  """Per voxel: multi-scale smoothed intensity and local SD per channel, (N, F)."""
  feats = []
  for ch in range(img.shape[-1]):
    x = img[..., ch]
    if modality == "CT":   # soft-tissue window, as CT pipelines do
      x = (np.clip(x, -200.0, 300.0) - 50.0) / 100.0
    else:
      x = (x - x.mean()) / (x.std() + 1e-6)
    for s_mm in (0.0, 1.5, 3.0, 6.0):
      sig = [s_mm / v for v in spacing]
      feats.append(ndimage.gaussian_filter(x, sig) if s_mm else x)
    sig = [2.0 / v for v in spacing]
    m = ndimage.gaussian_filter(x, sig)
    feats.append(np.sqrt(np.maximum(ndimage.gaussian_filter(x * x, sig) - m * m, 0)))
  return np.stack(feats, -1).reshape(-1, len(feats)).astype(np.float32)


def _quadratic(f):
  """Appends squares: lets a linear model learn intensity bands."""
  return np.concatenate([f, f * f], 1)


def _fit_logistic(x, y, steps=10, ridge=1e-2):
  """Binary logistic regression by Newton's method (IRLS); weights (F + 1,)."""
  x = np.concatenate([x, np.ones((len(x), 1), x.dtype)], 1).astype(np.float64)
  w = np.zeros(x.shape[1])
  for _ in range(steps):
    p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
    hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
    w -= np.linalg.solve(hess, x.T @ (p - y) + ridge * w)
  return w


@pytest.mark.parametrize("name", ["liver", "prostate"])
def test_local_context_beats_threshold(cases, name):
  """A logistic model on a voxel's neighbourhood statistics (no shape, no
  position) clearly beats the best threshold.

  Only evidence, not the learnability contract: this linear model is too weak
  for the small targets (spleen, pancreas, hippocampus, left atrium), which
  need the shape/texture context that a CNN learns.
  """
  train, val = cases[name][0][:6], cases[name][1][:3]
  k = gen.DOMAINS[name].num_classes
  modality = gen.DOMAINS[name].modality
  rng = np.random.default_rng(0)
  xs, ys = [], []
  for c in train:
    f = _local_features(c["image"], c["spacing"], modality)
    lab = c["label"].ravel()
    fg = np.flatnonzero(lab > 0)
    idx = np.concatenate([rng.choice(fg, min(fg.size, 3000), replace=False),
                          rng.choice(lab.size, 6000, replace=False)])
    xs.append(_quadratic(f[idx]))
    ys.append(lab[idx])
  x, y = np.concatenate(xs), np.concatenate(ys)
  mu, sd = x.mean(0), x.std(0) + 1e-6
  x = (x - mu) / sd
  models = [_fit_logistic(x, (y == cls).astype(np.float64)) for cls in range(1, k)]
  dices = []
  for c in val:
    f = (_quadratic(_local_features(c["image"], c["spacing"], modality)) - mu) / sd
    lab = c["label"].ravel()
    for cls, w in zip(range(1, k), models):
      # Classes were resampled: shift the logit back to the true prior.
      frac = (y == cls).mean()
      true_frac = np.mean([(t["label"] == cls).mean() for t in train])
      shift = np.log(true_frac / (1 - true_frac)) - np.log(frac / (1 - frac))
      pred = f @ w[:-1] + w[-1] + shift > 0
      gt = lab == cls
      dices.append(2 * (pred & gt).sum() / max(pred.sum() + gt.sum(), 1))
  local = float(np.mean(dices))
  base = gen.threshold_baseline_dice(train, val, k)
  assert local > base + 0.15, (local, base)
