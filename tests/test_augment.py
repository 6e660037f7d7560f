"""Augmentation options: the official 3D U²-Net setting, each on a tiny hand-checkable case."""

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from u2net_jax.data import augment
from u2net_jax.errors import ConfigError

# Only spatial transforms: intensity augmentation is tested elsewhere.
_OFF = dict(p_flip=0.0, p_rotate=0.0, p_scale=0.0, p_elastic=0.0)
# The official setting (data_utils.py L110–119, config.py L80–87).
OFFICIAL = dict(p_rotate=0.3, rotate_axes=(0,), angle_range_deg=(0.0, 360.0), p_scale=0.5,
                scale_mode="official", scale_range=(0.75, 1.25), p_flip=0.15, flip_axes=(2,),
                p_elastic=0.3, elastic_mode="official", elastic_alpha_range=(0.0, 750.0),
                elastic_sigma_range=(10.0, 13.0), image_order=3, p_gamma=0.0,
                p_brightness=0.0, p_contrast=0.0, p_noise=0.0)


def _volume(shape=(7, 7, 7), seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=shape + (1,)).astype(np.float32)
  label = rng.integers(0, 3, shape).astype(np.uint8)
  return image, label


def test_from_config_keeps_defaults_for_absent_keys_and_rejects_bad_values():
  # A config written before the new fields (five_domain.py's base augment block).
  old = ml_collections.ConfigDict(dict(
      enabled=False, p_flip=0.5, p_rotate=0.2, max_angle_deg=15.0, p_scale=0.2,
      scale_range=(0.85, 1.25), p_elastic=0.0, p_gamma=0.3, p_brightness=0.15,
      p_contrast=0.15, p_noise=0.1))
  cfg = augment.AugmentConfig.from_config(old)
  assert (cfg.flip_axes, cfg.rotate_axes, cfg.angle_range_deg) == ((0, 1, 2), (0, 1, 2), ())
  assert (cfg.scale_mode, cfg.elastic_mode, cfg.image_order) == ("uniform", "fixed", 1)
  # Lists (from YAML/CLI) become tuples; the official setting is accepted.
  off = augment.AugmentConfig.from_config(dict(OFFICIAL, rotate_axes=[0], flip_axes=[2]))
  assert off.rotate_axes == (0,) and off.flip_axes == (2,)
  for bad, match in [(dict(rotate_axes=(3,)), "rotate_axes"), (dict(flip_axes=(2, 2)), "flip_axes"),
                     (dict(scale_mode="two_sided"), "two_sided"), (dict(image_order=7), "7"),
                     (dict(p_flip=1.5), "p_flip"), (dict(angle_range_deg=(360, 0)), "angle"),
                     (dict(elastic_mode="x"), "elastic_mode"), (dict(p_flipp=0.1), "p_flipp")]:
    with pytest.raises(ConfigError, match=match):
      augment.AugmentConfig.from_config(bad)


def test_rotation_about_axis0_by_90_degrees_rotates_each_hw_plane():
  # Odd patch = whole volume, centred: a 90° turn maps the grid onto itself.
  image, label = _volume()
  cfg = augment.AugmentConfig(**dict(_OFF, p_rotate=1.0, rotate_axes=(0,),
                                     angle_range_deg=(90.0, 90.0)))
  img, lab = augment.spatial_patch(image, label, (3, 3, 3), (7, 7, 7),
                                   np.random.default_rng(0), cfg)
  # Output voxel (d, h, w) reads input (d, -w, h) about the centre: np.rot90 with k=-1.
  np.testing.assert_allclose(img, np.rot90(image, -1, axes=(1, 2)), atol=1e-5)
  np.testing.assert_array_equal(lab, np.rot90(label, -1, axes=(1, 2)))


def test_random_rotation_about_axis0_never_mixes_planes():
  # Plane d holds only label d+1: after any in-plane turn, output plane d holds {0, d+1}.
  label = np.broadcast_to(np.arange(1, 10, dtype=np.uint8)[:, None, None], (9, 15, 15)).copy()
  image = label[..., None].astype(np.float32)
  cfg = augment.AugmentConfig(**dict(_OFF, p_rotate=1.0, rotate_axes=(0,),
                                     angle_range_deg=(0.0, 360.0), image_order=3))
  rng = np.random.default_rng(0)
  for _ in range(5):
    img, lab = augment.spatial_patch(image, label, (4, 7, 7), (9, 11, 11), rng, cfg)
    for d in range(9):
      assert set(np.unique(lab[d])) <= {0, d + 1}
      # Cubic interpolation of a plane-constant image stays that constant inside.
      np.testing.assert_allclose(img[d, 5, 5, 0], d + 1, atol=1e-4)


def test_official_angle_draw_is_axis0_only_over_the_full_turn():
  cfg = augment.AugmentConfig(rotate_axes=(0,), angle_range_deg=(0.0, 360.0))
  rng = np.random.default_rng(0)
  a = np.array([augment.draw_angles(rng, cfg) for _ in range(500)])
  assert np.all(a[:, 1:] == 0)
  assert 0 <= a[:, 0].min() < 0.1 and 2 * np.pi - 0.1 < a[:, 0].max() < 2 * np.pi
  # The default: three angles in ±15°.
  d = np.array([augment.draw_angles(rng, augment.AugmentConfig()) for _ in range(200)])
  assert np.all(np.abs(d) <= np.deg2rad(15)) and np.all(d != 0)


def test_official_scale_draw_is_two_sided():
  rng = np.random.default_rng(0)
  cfg = augment.AugmentConfig(scale_mode="official", scale_range=(0.75, 1.25))
  s = np.array([augment.draw_scale(rng, cfg) for _ in range(4000)])
  below, above = s[s < 1], s[s >= 1]
  assert 0.47 < len(below) / len(s) < 0.53
  assert 0.75 <= below.min() < 0.76 and 0.99 < below.max() < 1
  assert 1 <= above.min() < 1.01 and 1.24 < above.max() <= 1.25
  # cc_augment's `scale[0] < 1` guard: a range above 1 only zooms out.
  up = augment.AugmentConfig(scale_mode="official", scale_range=(1.0, 1.25))
  assert min(augment.draw_scale(rng, up) for _ in range(200)) >= 1
  # ... and one below 1 always zooms in (np.random.uniform(1, hi) with hi < 1).
  down = augment.AugmentConfig(scale_mode="official", scale_range=(0.5, 0.8))
  assert 0.5 <= min(augment.draw_scale(rng, down) for _ in range(200))
  assert max(augment.draw_scale(rng, down) for _ in range(200)) <= 1
  # Default: uniform in (0.85, 1.25), so zooming out is the likelier.
  u = np.array([augment.draw_scale(rng, augment.AugmentConfig()) for _ in range(4000)])
  assert 0.85 <= u.min() and u.max() <= 1.25 and 0.35 < np.mean(u < 1) < 0.40


def test_scale_zooms_about_the_centre_voxel():
  # s = 0.5 samples every half voxel: the output is the input magnified 2× about (4, 4, 4).
  image, label = _volume((9, 9, 9))
  cfg = augment.AugmentConfig(**dict(_OFF, p_scale=1.0, scale_range=(0.5, 0.5)))
  img, lab = augment.spatial_patch(image, label, (4, 4, 4), (9, 9, 9),
                                   np.random.default_rng(0), cfg)
  np.testing.assert_allclose(img[::2, ::2, ::2], image[2:7, 2:7, 2:7], atol=1e-5)
  np.testing.assert_array_equal(lab[::2, ::2, ::2], label[2:7, 2:7, 2:7])


def test_official_flip_is_along_w_only_with_probability_0_15():
  image, label = _volume((3, 4, 5))
  always = augment.AugmentConfig(**dict(_OFF, p_flip=1.0, flip_axes=(2,)))
  img, lab = augment.spatial_patch(image, label, (1, 2, 2), (3, 4, 5),
                                   np.random.default_rng(0), always)
  np.testing.assert_array_equal(img, image[:, :, ::-1])
  np.testing.assert_array_equal(lab, label[:, :, ::-1])
  # mirror_probs 0.3 × batchgenerators' ½ = 0.15; never D or H.
  cfg = augment.AugmentConfig(**dict(_OFF, p_flip=0.15, flip_axes=(2,)))
  rng = np.random.default_rng(1)
  flipped = 0
  for _ in range(2000):
    _, lab = augment.spatial_patch(image, label, (1, 2, 2), (3, 4, 5), rng, cfg)
    if np.array_equal(lab, label[:, :, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(lab, label)
  assert 0.12 < flipped / 2000 < 0.18


def test_official_elastic_field_is_batchgenerators_formula():
  rng = np.random.default_rng(3)
  cfg = augment.AugmentConfig(elastic_mode="official", elastic_alpha_range=(500.0, 500.0),
                              elastic_sigma_range=(2.0, 2.0))
  off = augment.elastic_offsets((6, 7, 8), rng, cfg)
  # The same draws by hand: α, σ, then per axis gaussian_filter(U(-1, 1), σ, constant 0)·α.
  ref = np.random.default_rng(3)
  alpha, sigma = ref.uniform(500.0, 500.0), ref.uniform(2.0, 2.0)
  for ax in range(3):
    noise = ref.random((6, 7, 8), dtype=np.float32) * 2 - 1
    np.testing.assert_allclose(off[ax], ndimage.gaussian_filter(noise, sigma, mode="constant")
                               * alpha, rtol=1e-6)
  # A normalised kernel of |noise| <= 1: |offset| <= α.
  assert off.shape == (3, 6, 7, 8) and np.abs(off).max() <= 500


def test_official_elastic_with_zero_alpha_is_the_plain_crop():
  image, label = _volume((10, 10, 10))
  cfg = augment.AugmentConfig(**dict(_OFF, p_elastic=1.0, elastic_mode="official",
                                     elastic_alpha_range=(0.0, 0.0), image_order=3))
  img, lab = augment.spatial_patch(image, label, (5, 5, 5), (4, 4, 4),
                                   np.random.default_rng(0), cfg)
  np.testing.assert_allclose(img, image[3:7, 3:7, 3:7], atol=1e-5)
  np.testing.assert_array_equal(lab, label[3:7, 3:7, 3:7])


def test_cubic_interpolation_on_a_sub_volume_matches_the_whole_volume():
  image, _ = _volume((40, 40, 40))
  grid = np.stack(np.meshgrid(*[np.arange(12, dtype=np.float32) - 5.5] * 3, indexing="ij"))
  rot = augment._rotation(np.deg2rad([30.0, 0.0, 0.0])).astype(np.float32)
  for centre in ((20.0, 20.0, 20.0), (3.0, 20.0, 37.0)):  # inside; over two borders
    coords = np.tensordot(rot, grid, axes=1) + np.asarray(centre, np.float32).reshape(3, 1, 1, 1)
    whole = ndimage.map_coordinates(image[..., 0].astype(np.float64), coords, order=3,
                                    mode="constant")
    np.testing.assert_allclose(augment.interpolate(image[..., 0], coords, 3), whole, atol=1e-5)
    linear = augment.interpolate(image[..., 0], coords, 1)
    assert np.abs(linear - whole).max() > 0.1  # order 3 is not order 1
  far = np.full((3, 2, 2, 2), -100.0, np.float32)
  np.testing.assert_array_equal(augment.interpolate(image[..., 0], far, 3), 0.0)


def test_official_setting_keeps_image_and_label_aligned():
  zz, yy, xx = np.meshgrid(*[np.arange(32)] * 3, indexing="ij")
  image = (((zz - 16) ** 2 + (yy - 14) ** 2 + (xx - 17) ** 2) < 64).astype(np.float32)[..., None]
  label = image[..., 0].astype(np.uint8)
  cfg = augment.AugmentConfig(**dict(OFFICIAL, p_rotate=1.0, p_scale=1.0, p_elastic=1.0,
                                     p_flip=0.5))
  rng = np.random.default_rng(0)
  for _ in range(3):
    img, lab = augment.spatial_patch(image, label, (16, 14, 17), (24, 24, 24), rng, cfg)
    assert np.mean((img[..., 0] > 0.5) == (lab > 0)) > 0.97 and lab.sum() > 0
