"""Tests of u2net_jax.data.preprocess: crop, resampling, normalization, inversion."""

import numpy as np
import pytest

from u2net_jax.data import preprocess
from u2net_jax.errors import InputError


def _dice(a, b):
  a, b = a > 0, b > 0
  return 2 * np.sum(a & b) / (a.sum() + b.sum())


def _ellipsoid(shape, center, radii):
  grid = np.indices(shape)
  return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1


def _case(shape=(20, 32, 28), seed=0):
  """MRI-like case: zero background, a non-zero 'body' box, two label blobs."""
  rng = np.random.default_rng(seed)
  image = np.zeros(shape + (2,), np.float32)
  image[3:17, 4:30, 5:24] = rng.normal(100, 20, (14, 26, 19, 2))
  label = np.zeros(shape, np.int32)
  label[_ellipsoid(shape, (10, 14, 12), (5, 8, 6))] = 1
  label[_ellipsoid(shape, (10, 22, 15), (3, 4, 4))] = 2
  return image, label


def test_crop_to_nonzero_uses_any_channel_and_keeps_label_aligned():
  image = np.zeros((6, 7, 8, 2), np.float32)
  image[1, 2, 3, 0] = 1.0
  image[4, 5, 6, 1] = -2.0  # Only channel 1 is non-zero here.
  label = np.zeros((6, 7, 8), np.uint8)
  label[4, 5, 6] = 3
  cropped, lab, box = preprocess.crop_to_nonzero(image, label)
  np.testing.assert_array_equal(box, [[1, 5], [2, 6], [3, 7]])
  assert cropped.shape == (4, 4, 4, 2) and lab.shape == (4, 4, 4)
  assert lab[-1, -1, -1] == 3 and cropped[-1, -1, -1, 1] == -2.0


def test_crop_of_all_zero_image_is_whole_volume():
  cropped, lab, box = preprocess.crop_to_nonzero(np.zeros((3, 4, 5, 1)))
  assert cropped.shape == (3, 4, 5, 1) and lab is None
  np.testing.assert_array_equal(box, [[0, 3], [0, 4], [0, 5]])


def test_target_shape_rounds_and_keeps_axes_at_target():
  assert preprocess.target_shape((10, 100, 100), (2.5, 0.7, 0.7), (1.0, 1.4, 0.5)) == (25, 50, 140)
  # Within 1e-3 mm counts as equal: the size is kept even for a long axis.
  assert preprocess.target_shape((2000, 3, 3), (0.5009, 1, 1), (0.5, 1, 1)) == (2000, 3, 3)
  assert preprocess.target_shape((3, 3, 3), (1, 1, 1), (10, 10, 10)) == (1, 1, 1)


def test_resample_at_target_spacing_is_a_no_op():
  image, _ = _case()
  out = preprocess.resample(image, (2.0, 1.0, 1.0), (2.0, 1.0, 1.0))
  np.testing.assert_array_equal(out, image)
  assert out.dtype == np.float32


def test_resample_shape_and_extent_alignment():
  # A linear ramp along z sampled at voxel centres; after resampling, the
  # ramp must still be the same physical function at the new centres.
  d, spacing, target = 12, 2.0, 0.75
  z = (np.arange(d) + 0.5) * spacing
  image = np.broadcast_to(z[:, None, None, None], (d, 4, 4, 1)).astype(np.float32)
  out = preprocess.resample(image, (spacing, 1, 1), (target, 1, 1), order=1)
  n = round(d * spacing / target)
  assert out.shape == (n, 4, 4, 1)
  centres = (np.arange(n) + 0.5) * (d * spacing / n)
  inside = (centres > z[0]) & (centres < z[-1])  # Edge values are repeated outside.
  np.testing.assert_allclose(out[inside, 0, 0, 0], centres[inside], rtol=1e-5)


def test_resample_label_one_hot_keeps_classes_and_overlap():
  _, label = _case()
  out = preprocess.resample_label(label, (2.0, 1.0, 1.0), (1.0, 1.5, 1.5), num_classes=3)
  assert out.dtype == np.uint8 and out.shape == (40, 21, 19)
  assert set(np.unique(out)) == {0, 1, 2}
  back = preprocess.resize_label(out, label.shape, 3)
  for c in (1, 2):
    assert _dice(back == c, label == c) > 0.85
  with pytest.raises(InputError, match="Label ids"):
    preprocess.resample_label(label, (2, 1, 1), (1, 1, 1), num_classes=2)


def test_invert_label_round_trips_exactly_at_target_spacing():
  image, label = _case()
  spacing = (2.0, 1.0, 1.0)
  out = preprocess.preprocess_case(image, spacing, "MRI", spacing, label=label, num_classes=3)
  np.testing.assert_array_equal(out["crop_box"], [[3, 17], [4, 30], [5, 24]])
  back = preprocess.invert_label(out["label"], out["crop_box"], out["original_shape"],
                                 out["original_spacing"], out["spacing"], num_classes=3)
  np.testing.assert_array_equal(back, label)


@pytest.mark.parametrize("target", [(1.0, 1.3, 0.8), (3.0, 0.7, 1.6)])
def test_invert_label_round_trips_closely_when_resampled(target):
  image, label = _case()
  spacing = (2.0, 1.0, 1.0)
  out = preprocess.preprocess_case(image, spacing, "MRI", target, label=label, num_classes=3)
  expected = preprocess.target_shape((14, 26, 19), spacing, target)
  assert out["image"].shape == expected + (2,) and out["label"].shape == expected
  back = preprocess.invert_label(out["label"], out["crop_box"], out["original_shape"],
                                 spacing, target, num_classes=3)
  assert back.shape == label.shape
  assert _dice(back, label) > 0.95
  assert _dice(back == 1, label == 1) > 0.95


def test_invert_label_rejects_a_prediction_on_another_grid():
  with pytest.raises(InputError, match="preprocessed grid"):
    preprocess.invert_label(np.zeros((5, 5, 5)), [[0, 10], [0, 10], [0, 10]], (10, 10, 10),
                            (1, 1, 1), (2, 2, 1), num_classes=2)


def test_ct_stats_over_foreground_only_and_deterministic():
  rng = np.random.default_rng(1)
  images, labels = [], []
  for _ in range(3):
    img = np.full((20, 20, 20), -1000.0, np.float32)  # Air: must be ignored.
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 5:15, 5:15] = 1
    img[lab > 0] = rng.normal(60.0, 10.0, lab.sum())
    images.append(img)
    labels.append(lab)
  stats = preprocess.ct_stats(images, labels)
  fg = np.concatenate([i[l > 0] for i, l in zip(images, labels)])
  assert stats["mean"] == pytest.approx(fg.mean(), rel=1e-5)
  assert stats["std"] == pytest.approx(fg.std(), rel=1e-4)
  assert stats["p005"] == pytest.approx(np.percentile(fg, 0.5), rel=1e-5)
  assert stats["p995"] == pytest.approx(np.percentile(fg, 99.5), rel=1e-5)
  # Subsampled: still close, and the same on every call.
  sub = preprocess.ct_stats(images, labels, max_voxels_per_case=500)
  assert sub == preprocess.ct_stats(images, labels, max_voxels_per_case=500)
  assert sub["mean"] == pytest.approx(60.0, abs=1.5)
  with pytest.raises(InputError, match="No foreground"):
    preprocess.ct_stats(images, [np.zeros_like(l) for l in labels])


def test_normalize_ct_clips_then_zscores_with_dataset_stats():
  stats = dict(p005=-100.0, p995=200.0, mean=50.0, std=25.0)
  image = np.array([-1000.0, -100.0, 50.0, 100.0, 3000.0], np.float32).reshape(1, 1, 5, 1)
  out = preprocess.normalize(image, "CT", stats)
  np.testing.assert_allclose(out.ravel(), [-6.0, -6.0, 0.0, 2.0, 6.0])
  with pytest.raises(InputError, match="stats"):
    preprocess.normalize(image, "CT")


def test_normalize_mri_zscores_each_channel():
  rng = np.random.default_rng(2)
  image = np.stack([rng.normal(100, 20, (8, 8, 8)), rng.normal(-5, 2, (8, 8, 8))], -1)
  out = preprocess.normalize(image, "MRI")
  np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_normalize_mri_uses_nonzero_mask_when_mostly_background():
  image = np.zeros((10, 10, 10, 1), np.float32)
  image[2:6, 2:6, 2:6, 0] = np.random.default_rng(3).normal(300, 50, (4, 4, 4))
  out = preprocess.normalize(image, "MRI")
  inside = image[..., 0] != 0
  assert np.all(out[~inside] == 0)  # Background stays background.
  assert out[inside].mean() == pytest.approx(0.0, abs=1e-5)
  assert out[inside].std() == pytest.approx(1.0, abs=1e-4)


def test_normalize_official_is_the_official_codes_on_a_small_ct_array():
  # 50 voxels: -3000 (air below the floor), -100, 0, 40 ×10 each, and 10
  # voxels 40..400. Official: floor -1024; np.percentile 2/98 -> clip; mean and
  # std of the voxels > 0; every voxel z-scored; the zeros reset to 0.
  x = np.concatenate([np.full(10, -3000.0), np.full(10, -100.0), np.zeros(10),
                      np.full(10, 40.0), np.linspace(40, 400, 10)]).astype(np.float32)
  x = x.reshape(5, 5, 2, 1)
  out = preprocess.normalize(x, "CT", scheme="official")[..., 0].ravel()
  v = np.maximum(x.ravel(), -1024.0)
  lo, hi = np.percentile(v, (2.0, 98.0))
  assert lo == -1024.0 and 360.0 < hi < 400.0  # the floor, then the clip
  v = np.clip(v, lo, hi)
  mean, std = v[v > 0].mean(), v[v > 0].std()
  expected = (v - mean) / std
  expected[v == 0] = 0.0
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  assert np.all(out[20:30] == 0) and np.all(out[:20] < 0)  # negatives are not reset
  # The same per channel for MRI-like channels; no voxel > 0: plain z-score.
  mri = preprocess.normalize(np.abs(x), "MRI", scheme="official")
  assert np.all(np.isfinite(mri))
  flat = preprocess.normalize(-np.abs(x) - 1, "MRI", scheme="official")
  assert flat.mean() == pytest.approx(0.0, abs=1e-5)


def test_preprocess_case_outputs():
  image, label = _case()
  stats = dict(p005=0.0, p995=150.0, mean=100.0, std=20.0)
  out = preprocess.preprocess_case(image[..., :1], (2.0, 1.0, 1.0), "CT", (2.5, 1.25, 1.25),
                                   stats=stats, label=label, num_classes=3)
  assert out["image"].dtype == np.float32 and out["label"].dtype == np.uint8
  assert out["image"].shape[:3] == out["label"].shape == (11, 21, 15)
  assert out["image"].max() <= (150.0 - 100.0) / 20.0 + 1e-6
  np.testing.assert_array_equal(out["original_shape"], (20, 32, 28))
  np.testing.assert_allclose(out["spacing"], (2.5, 1.25, 1.25))
  np.testing.assert_allclose(out["original_spacing"], (2.0, 1.0, 1.0))
  unlabeled = preprocess.preprocess_case(image, (2, 1, 1), "MRI", (2, 1, 1))
  assert unlabeled["label"] is None
