"""The official resize of source patches (`data.source_patch`): parsing, resizing, round trips."""


import numpy as np
import pytest
from scipy import ndimage

from u2net_jax import config_utils
from u2net_jax.data import rescale
from u2net_jax.infer import sliding_window, volume
from u2net_jax.errors import ConfigError

from experiments import five_domain  # pylint: disable=g-import-not-at-top,wrong-import-position


# -- config ---------------------------------------------------------------------------

def test_parse_source_patch():
  assert rescale.parse_source_patch("") == {} and rescale.parse_source_patch(None) == {}
  assert rescale.parse_source_patch(" heart:80x192x128, prostate : 20X192X192 ,") == {
      "heart": (80, 192, 128), "prostate": (20, 192, 192)}


@pytest.mark.parametrize("text, bad", [
    ("heart:80x192", "'heart:80x192'"),
    ("heart=80x192x128", "'heart=80x192x128'"),
    ("heart:0x192x128", "'heart:0x192x128'"),
    ("heart:axbxc", "'heart:axbxc'"),
    (":8x8x8", "':8x8x8'"),
    ("heart:8x8x8,heart:4x4x4", "names 'heart' twice"),
])
def test_parse_errors_name_the_bad_item(text, bad):
  with pytest.raises(ConfigError, match=bad):
    rescale.parse_source_patch(text)


def test_validate_rejects_a_bad_source_patch():
  c = five_domain.get_config("smoke")
  c.data.source_patch = "heart:8x8"
  with pytest.raises(ConfigError, match="data.source_patch item 'heart:8x8'"):
    config_utils.validate(c)


def test_msd_preset_has_the_official_task_patches():
  c = five_domain.get_config("msd")
  assert rescale.source_patches(c) == {
      "heart": (80, 192, 128), "liver": (128, 128, 128), "hippocampus": (40, 56, 40),
      "prostate": (20, 192, 192), "pancreas": (96, 160, 128), "spleen": (96, 160, 128)}
  assert tuple(c.data.patch_size) == (128, 128, 128)
  # Liver's source patch is the model's: no resize. Unlisted domains: none either.
  assert config_utils.source_patch_for(c, "liver") is None
  assert config_utils.source_patch_for(c, "colon") is None
  assert config_utils.source_patch_for(c, "prostate") == (20, 192, 192)
  assert five_domain.get_config("").data.source_patch == ""


# -- resizing -------------------------------------------------------------------------

def test_nearest_label_2x2x2_to_4x4x4_and_back():
  lab = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
  up = rescale.resize_label(lab, (4, 4, 4))
  np.testing.assert_array_equal(up, lab.repeat(2, 0).repeat(2, 1).repeat(2, 2))
  assert up.dtype == np.uint8
  np.testing.assert_array_equal(rescale.resize_label(up, (2, 2, 2)), lab)


def test_coordinate_mapping_is_pixel_centre_aligned():
  # Output i samples input (i + 0.5)·n_in/n_out − 0.5: for 3 → 5 that is
  # -0.2, 0.4, 1.0, 1.6, 2.2, whose nearest voxels are 0, 0, 1, 2, 2.
  np.testing.assert_array_equal(rescale.source_indices(3, 5), [0, 0, 1, 2, 2])
  np.testing.assert_array_equal(rescale.source_indices(6, 2), [1, 4])  # 1.0, 4.0
  # Output 2 of 3 → 5 lies exactly on input 1: the interpolating spline gives it back.
  x = np.random.default_rng(0).normal(size=(3, 3, 3)).astype(np.float32)
  r = rescale.resize_image(x, (5, 5, 5))
  np.testing.assert_allclose(r[2, 2, 2], x[1, 1, 1], atol=1e-5)


def test_cubic_resize_equals_the_direct_spline_sampling():
  """Separable matrices == one map_coordinates at the skimage coordinates, then clipped."""
  x = np.random.default_rng(1).normal(size=(5, 9, 4)).astype(np.float64)
  shape = (12, 6, 4)
  coords = np.meshgrid(*[(n / m) * (np.arange(m) + 0.5) - 0.5 for n, m in zip(x.shape, shape)],
                       indexing="ij")
  ref = ndimage.map_coordinates(x, np.array(coords), order=3, mode="grid-constant")
  ref = np.clip(ref, x.min(), x.max())
  np.testing.assert_allclose(rescale.resize_image(x, shape), ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 8, 12), (3, 2, 5), (7, 7, 7)])
def test_cubic_resize_of_a_constant_is_that_constant(shape):
  x = np.full((6, 4, 7, 2), 2.5, np.float32)
  x[..., 1] = -1.0
  r = rescale.resize_image(x, shape)
  assert r.shape == shape + (2,) and r.dtype == np.float32
  np.testing.assert_allclose(r[..., 0], 2.5, rtol=1e-6)
  np.testing.assert_allclose(r[..., 1], -1.0, rtol=1e-6)


def test_cubic_resize_stays_in_the_input_range():
  x = np.zeros((6, 6, 6), np.float32)
  x[2:4, 2:4, 2:4] = 1.0  # a step: the bare spline overshoots, the clip removes it
  r = rescale.resize_image(x, (15, 15, 15))
  assert r.min() >= 0.0 and r.max() <= 1.0 and r.max() > 0.9


def test_probabilities_resize_keeps_their_sum():
  p = np.random.default_rng(2).random((4, 5, 3, 3)).astype(np.float32)
  p /= p.sum(-1, keepdims=True)
  r = rescale.resize_probabilities(p, (9, 4, 6))
  np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-5)


def test_pad_to_patch_is_the_official_symmetric_pad():
  x = np.ones((5, 10, 8, 1), np.float32)
  padded, before = rescale.pad_to_patch(x, (8, 8, 8))
  # 8 - 5 = 3 → ceil(3/2) = 2 zeros on both sides (one more than the patch).
  assert before == (2, 0, 0) and padded.shape == (9, 10, 8, 1)
  assert padded[:2].sum() == 0 and padded[-2:].sum() == 0 and padded[2:7].min() == 1
  same, none = rescale.pad_to_patch(x, (4, 4, 4))
  assert same is x and none == (0, 0, 0)


def test_scaled_shape_is_the_integer_floor():
  assert rescale.scaled_shape((40, 56, 40), (40, 56, 40), (128, 128, 128)) == (128, 128, 128)
  assert rescale.scaled_shape((41, 57, 40), (40, 56, 40), (128, 128, 128)) == (131, 130, 128)
  assert rescale.scaled_shape((30, 300, 250), (20, 192, 192), (128, 128, 128)) == (192, 200, 166)


# -- whole volumes --------------------------------------------------------------------

def _blocky(shape=(7, 9, 6)):
  """(D, H, W) labels in three blocks several voxels wide, touching the border."""
  lab = np.zeros(shape, np.uint8)
  lab[:4, 2:7, 1:5] = 1
  lab[4:, :4, 3:] = 2
  return lab


def _one_hot(lab, num_classes):
  return (lab[..., None] == np.arange(num_classes)).astype(np.float32)


def _identity_like():
  """Windows of one-hot channels -> those channels as probabilities (records the shapes)."""
  seen = []

  def fn(x):
    seen.append(x.shape)
    e = np.exp(8 * x)
    return e / e.sum(-1, keepdims=True)
  return fn, seen


@pytest.mark.parametrize("source, patch", [((4, 4, 4), (12, 12, 12)), ((8, 4, 2), (24, 12, 6))])
def test_resize_predict_resize_back_reproduces_blocky_labels(source, patch):
  """Padded (the second: D 7 < 8), enlarged ×3, windows at the model's patch, labels
  back. With an odd integer factor each original voxel's nearest resized voxel lies
  exactly on it (input coordinate (3i + 1.5)/3 − 0.5 = i), where the spline
  interpolates: the labels come back exactly."""
  lab = _blocky()
  image = _one_hot(lab, 3)
  fn, seen = _identity_like()
  stats = {}
  labels, probs = volume.predict_labels(image, fn, patch, 3, source_patch=source,
                                         keep_probabilities=True, stats=stats)
  assert labels.shape == lab.shape and labels.dtype == np.uint8
  assert probs.shape == lab.shape + (3,) and probs.dtype == np.float16
  assert seen and all(s[1:4] == patch for s in seen)
  padded, _ = rescale.pad_to_patch(image, source)
  assert stats["resized_grid"] == tuple(3 * n for n in padded.shape[:3])
  np.testing.assert_array_equal(labels, lab)
  np.testing.assert_array_equal(np.argmax(probs, -1), lab)


def test_resize_round_trip_at_a_fractional_factor_misses_only_block_corners():
  """×2 and ×14/9: back-sampled points lie ¼ voxel off; only a 3-D block corner flips."""
  lab = _blocky()
  fn, _ = _identity_like()
  labels, _ = volume.predict_labels(_one_hot(lab, 3), fn, (8, 8, 8), 3, source_patch=(4, 5, 4))
  wrong = np.argwhere(labels != lab)
  assert [tuple(w) for w in wrong] == [(3, 6, 4)]  # the far corner of block 1


def test_no_source_patch_is_the_plain_sliding_window():
  lab = _blocky()
  image = _one_hot(lab, 3)
  fn, _ = _identity_like()
  plain, _ = sliding_window.predict_labels(image, fn, (8, 8, 8), 3)
  for src in (None, (8, 8, 8)):
    got, _ = volume.predict_labels(image, fn, (8, 8, 8), 3, source_patch=src)
    np.testing.assert_array_equal(got, plain)
