"""Training input pipeline: patches, oversampling, schedule, shards, determinism."""

import time

import numpy as np
import pytest

from u2net_jax.data import rescale
from u2net_jax.data import augment, pipeline
from u2net_jax.domains import DomainSpec

HEART = DomainSpec("heart", ("MRI",), ("bg", "atrium"))
PROSTATE = DomainSpec("prostate", ("T2", "ADC"), ("bg", "pz", "tz"))


def _case(name, shape, channels, classes, seed):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=shape + (channels,)).astype(np.float32)
  label = np.zeros(shape, np.uint8)
  # A small foreground blob per class, so random patches rarely hit it.
  for c in range(1, classes):
    z, y, x = (rng.integers(2, s - 4) for s in shape)
    label[z:z + 3, y:y + 3, x:x + 3] = c
  return pipeline.make_case(f"{name}_{seed}", image, label, classes)


def _cases():
  return {"heart": [_case("heart", (40, 36, 30), 1, 2, s) for s in range(4)],
          "prostate": [_case("prostate", (12, 40, 40), 2, 3, s) for s in range(4)]}


def _sampler(**kw):
  args = dict(patch_size=(16, 16, 16), batch_size=2, seed=3)
  args.update(kw)
  return pipeline.PatchSampler(_cases(), (HEART, PROSTATE), **args)


def test_batch_shapes_dtypes_and_channel_padding():
  s = _sampler()
  b = s.batch(0)
  assert b["image"].shape == (2, 16, 16, 16, 2) and b["image"].dtype == np.float32
  assert b["label"].shape == (2, 16, 16, 16) and b["label"].dtype == np.int32
  assert int(b["domain"]) == 0
  # heart has one channel: the second is zero padding.
  assert np.all(b["image"][..., 1] == 0)
  b1 = s.batch(1)
  assert int(b1["domain"]) == 1 and b1["label"].max() <= 2


def test_volume_smaller_than_patch_is_padded():
  s = _sampler(patch_size=(32, 48, 48), augment_cfg=augment.AugmentConfig(enabled=False))
  b = s.batch(1)  # prostate volumes are 12×40×40
  assert b["image"].shape[1:4] == (32, 48, 48)
  assert np.any(b["image"] == 0) and np.any(b["image"] != 0)


def test_at_least_a_third_of_patches_centred_on_foreground():
  s = _sampler(augment_cfg=augment.AugmentConfig(enabled=False), batch_size=3)
  centred = total = 0
  for step in range(0, 60):
    b = s.batch(step)
    centre = b["label"][:, 8, 8, 8]
    centred += int(np.sum(centre > 0))
    total += len(centre)
  assert centred / total >= 1 / 3


def test_round_robin_and_weighted_schedules_are_deterministic():
  names = ("a", "b", "c")
  assert [pipeline.domain_for_step(s, names) for s in range(6)] == [0, 1, 2, 0, 1, 2]
  w = [pipeline.domain_for_step(s, names, [0.0, 1.0, 3.0], seed=1) for s in range(400)]
  assert w == [pipeline.domain_for_step(s, names, [0.0, 1.0, 3.0], seed=1) for s in range(400)]
  assert 0 not in w and 0.65 < w.count(2) / len(w) < 0.85
  with pytest.raises(ValueError, match="weights"):
    pipeline.domain_for_step(0, names, [1.0, -1.0, 1.0])


def test_batches_are_a_pure_function_of_seed_step_and_process():
  a, b = _sampler(), _sampler()
  for step in (5, 0, 3):
    x, y = a.batch(step), b.batch(step)
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a.batch(0)["image"], a.batch(2)["image"])


def test_two_processes_build_the_same_global_batch_as_one():
  cases = _cases()
  shards = {n: {v: pipeline.shard(c, v, 2) for v in (0, 1)} for n, c in cases.items()}
  kw = dict(patch_size=(16, 16, 16), batch_size=4, seed=3, num_shards=2)
  one = pipeline.PatchSampler(shards, (HEART, PROSTATE), **kw)
  procs = [pipeline.PatchSampler({n: {v: s[v]} for n, s in shards.items()}, (HEART, PROSTATE),
                                 **kw) for v in pipeline.owned_shards(2, 0, 1)]
  assert [p.batch_size for p in procs] == [2, 2]
  for step in (0, 1, 7):
    whole = one.batch(step)
    parts = [p.batch(step) for p in procs]
    np.testing.assert_array_equal(whole["image"], np.concatenate([p["image"] for p in parts]))
    np.testing.assert_array_equal(whole["label"], np.concatenate([p["label"] for p in parts]))
  # Each process only ever touches its own shard's cases.
  assert {c.case_id for c in shards["heart"][0]}.isdisjoint({c.case_id for c in shards["heart"][1]})
  assert pipeline.owned_shards(4, 1, 2) == [2, 3]
  with pytest.raises(ValueError, match="multiple"):
    pipeline.owned_shards(3, 0, 2)


def test_resumed_iterator_sees_the_same_batches():
  s = _sampler()
  full = [b["image"] for b in s.iterate(0, 6)]
  resumed = [b["image"] for b in s.iterate(4, 2)]
  np.testing.assert_array_equal(full[4], resumed[0])
  np.testing.assert_array_equal(full[5], resumed[1])


def test_process_shards_are_disjoint_and_cover_everything():
  items = [f"case_{i}" for i in range(11)]
  shards = [pipeline.shard(items, p, 3) for p in range(3)]
  assert sorted(sum(shards, [])) == sorted(items)
  assert all(not set(shards[i]) & set(shards[j]) for i in range(3) for j in range(i))
  with pytest.raises(ValueError):
    pipeline.shard(items, 3, 3)


def test_augmentation_keeps_image_and_label_aligned():
  # A label that equals the thresholded image must stay so after spatial augmentation.
  rng = np.random.default_rng(0)
  zz, yy, xx = np.meshgrid(*[np.arange(32)] * 3, indexing="ij")
  image = (((zz - 16) ** 2 + (yy - 14) ** 2 + (xx - 17) ** 2) < 64).astype(np.float32)[..., None]
  label = image[..., 0].astype(np.uint8)
  cfg = augment.AugmentConfig(p_rotate=1.0, p_scale=1.0, p_flip=0.5, p_elastic=1.0)
  for _ in range(5):
    img, lab = augment.spatial_patch(image, label, (16, 14, 17), (24, 24, 24), rng, cfg)
    agree = np.mean((img[..., 0] > 0.5) == (lab > 0))
    assert agree > 0.98
    assert lab.sum() > 0


def test_no_augmentation_is_a_plain_crop():
  image = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10, 1)
  label = (image[..., 0] % 3).astype(np.uint8)
  cfg = augment.AugmentConfig(enabled=False)
  img, lab = augment.spatial_patch(image, label, (5, 5, 5), (4, 4, 4), np.random.default_rng(0),
                                   cfg)
  np.testing.assert_array_equal(img, image[3:7, 3:7, 3:7])
  np.testing.assert_array_equal(lab, label[3:7, 3:7, 3:7])
  # The interpolating path with an identity transform gives the same crop.
  cfg = augment.AugmentConfig(p_rotate=1.0, max_angle_deg=0.0, p_flip=0.0, p_gamma=0)
  img2, lab2 = augment.spatial_patch(image, label, (5, 5, 5), (4, 4, 4),
                                     np.random.default_rng(0), cfg)
  np.testing.assert_allclose(img2, img, atol=1e-3)
  np.testing.assert_array_equal(lab2, lab)


def test_missing_domain_cases_is_a_clear_error():
  cases = _cases()
  cases["prostate"] = []
  with pytest.raises(Exception, match="No training cases for domain"):
    pipeline.PatchSampler(cases, (HEART, PROSTATE), patch_size=(8, 8, 8), batch_size=1)


def test_pipeline_throughput_is_reported():
  s = _sampler(patch_size=(48, 48, 48), batch_size=2)
  t0 = time.perf_counter()
  n = 0
  for b in s.iterate(0, 10, num_threads=2):
    n += b["image"].shape[0]
  rate = n / (time.perf_counter() - t0)
  print(f"\npipeline: {rate:.1f} patches/s (48³, augmentation on, 2 threads)")
  assert n == 20


# -- official sampling (sampling='official') ---------------------------------

_NO_AUG = augment.AugmentConfig(enabled=False)
_OFFICIAL_AUG = augment.AugmentConfig(
    p_rotate=0.3, rotate_axes=(0,), angle_range_deg=(0.0, 360.0), p_scale=0.5,
    scale_mode="official", scale_range=(0.75, 1.25), p_flip=0.15, flip_axes=(2,),
    p_elastic=0.3, elastic_mode="official", image_order=3, p_gamma=0.0, p_brightness=0.0,
    p_contrast=0.0, p_noise=0.0)


def test_official_kind_follows_gen_batch():
  kind = pipeline.official_kind
  # Batch 2: ceil(2/3) = 1 and `i <= 1` holds for both samples.
  assert [kind(j, 2, 0.9, True, True) for j in (0, 1)] == ["fore", "fore"]
  assert kind(1, 2, 0.1, True, True) == "small"
  assert kind(1, 2, 0.1, False, True) == "fore"
  assert kind(0, 2, 0.5, False, False) is None  # official: next case from the queue
  # Batch 9: samples 0..3 (4 of 9) forced; later ones by u.
  assert kind(3, 9, 0.5, True, True) == "fore" and kind(4, 9, 0.5, True, True) == "any"
  assert kind(4, 9, 0.1, True, True) == "small" and kind(4, 9, 0.8, True, True) == "fore"
  assert kind(4, 9, 0.1, False, True) == "any"  # smallest class absent: 1-u < 0.3 fails
  assert kind(4, 9, 0.8, True, False) == "any"
  assert kind(2, 3, 0.5, True, True) == "any"   # batch 3: samples 0, 1 forced
  assert kind(4, 9, 0.8, True, True, fore_prob=0.0) == "any"  # spleen: 0 / 0


def test_official_center_hand_cases():
  rng = np.random.default_rng(0)
  ctr = pipeline.official_center
  # p 8, voxel 20 of 40: randint(20-3, 20+3) = 17..22, patch start ctr-4.
  draws = {ctr(40, 8, rng, 20) for _ in range(300)}
  assert draws == set(range(17, 23))
  # Voxel at index 0: low = upper = p/2-1 = 3, the patch starts at -1 (one zero slice).
  assert ctr(40, 8, rng, 0) == 3
  # Last voxel: low = upper = n-p/2 = 36, patch [32, 40) inside.
  assert ctr(40, 8, rng, 39) == 36
  # 'any': randint(4, 36), the patch inside [0, 40).
  assert {ctr(40, 8, rng) for _ in range(500)} == set(range(4, 36))
  # Volume 5 < patch 8: padded by 2 each side to 9 (pad2gePatch); 'any' centre 4-2 = 2.
  assert ctr(5, 8, rng) == 2 and {ctr(5, 8, rng, 2) for _ in range(100)} <= {1, 2, 3}


def test_official_sampling_batch_2_every_patch_holds_foreground():
  for cfg in (_NO_AUG, _OFFICIAL_AUG):
    s = _sampler(sampling="official", augment_cfg=cfg)
    for step in range(12):
      b = s.batch(step)
      assert all(b["label"][i].max() > 0 for i in range(2)), (step, cfg.enabled)


def test_official_foreground_voxel_spreads_over_the_patch():
  # One foreground voxel at (15, 15, 15); patch 8³: it lands at index 2..7 per axis.
  label = np.zeros((30, 30, 30), np.uint8)
  label[15, 15, 15] = 1
  image = np.ones((30, 30, 30, 1), np.float32)
  case = pipeline.make_case("one", image, label, 2)
  s = pipeline.PatchSampler({"heart": [case]}, (HEART,), patch_size=(8, 8, 8), batch_size=2,
                            sampling="official", augment_cfg=_NO_AUG)
  pos = np.array([np.argwhere(b == 1)[0] for step in range(60) for b in s.batch(step)["label"]])
  for ax in range(3):
    assert set(pos[:, ax]) == set(range(2, 8)), (ax, sorted(set(pos[:, ax])))


def test_official_smallest_class_oversampling():
  # Prostate-like: class 1 everywhere in a slab, class 2 one voxel (the smallest by default).
  label = np.zeros((20, 20, 20), np.uint8)
  label[:, :, :10] = 1
  label[5, 5, 15] = 2
  case = pipeline.make_case("p", np.ones((20, 20, 20, 2), np.float32), label, 3)
  kw = dict(patch_size=(6, 6, 6), batch_size=3, sampling="official", augment_cfg=_NO_AUG)
  s = pipeline.PatchSampler({"prostate": [case]}, (PROSTATE,), small_class_prob=1.0, **kw)
  assert all(np.any(b == 2) for step in range(10) for b in s.batch(step)["label"])
  # The official code's prostate exception: PZ (1) is the "smallest" class.
  s = pipeline.PatchSampler({"prostate": [case]}, (PROSTATE,), small_class_prob=1.0,
                            small_classes={"prostate": 1}, **kw)
  assert all(np.any(b == 1) for step in range(10) for b in s.batch(step)["label"])
  # Probability 0: only forced samples (0, 1 of 3) hold foreground, drawn from all of it.
  s = pipeline.PatchSampler({"prostate": [case]}, (PROSTATE,), small_class_prob=0.0,
                            fore_prob=0.0, **kw)
  labels = [s.batch(step)["label"] for step in range(10)]
  assert all(b[:2].max() > 0 for b in labels) and not any(np.any(b[:2] == 2) for b in labels)
  assert pipeline.parse_class_map(" prostate:1, heart:1") == {"prostate": 1, "heart": 1}
  assert pipeline.parse_class_map("") == {}
  with pytest.raises(ValueError, match="prostate=1"):
    pipeline.parse_class_map("prostate=1")
  with pytest.raises(ValueError, match="small class 3 of domain 'prostate'"):
    pipeline.PatchSampler({"prostate": [case]}, (PROSTATE,), small_classes={"prostate": 3},
                          **kw)
  with pytest.raises(ValueError, match="sampling 'nnUNet'"):
    pipeline.PatchSampler({"prostate": [case]}, (PROSTATE,), **dict(kw, sampling="nnUNet"))


def test_official_forced_sample_skips_cases_without_foreground():
  empty = pipeline.make_case("empty", np.ones((12, 12, 12, 1), np.float32),
                             np.zeros((12, 12, 12), np.uint8), 2)
  label = np.zeros((12, 12, 12), np.uint8)
  label[3, 4, 5] = 1
  full = pipeline.make_case("fg", np.ones((12, 12, 12, 1), np.float32), label, 2)
  s = pipeline.PatchSampler({"heart": [empty, full, empty]}, (HEART,), patch_size=(6, 6, 6),
                            batch_size=2, sampling="official", augment_cfg=_NO_AUG)
  for step in range(10):
    b = s.batch(step)
    assert np.all(b["case"] == 1) and all(b["label"][i].max() == 1 for i in range(2))


def test_official_sampling_is_a_pure_function_of_seed_and_step():
  a = _sampler(sampling="official", augment_cfg=_OFFICIAL_AUG, batch_size=3)
  b = _sampler(sampling="official", augment_cfg=_OFFICIAL_AUG, batch_size=3)
  for step in (4, 0, 3):
    x, y = a.batch(step), b.batch(step)
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  full = [x["label"] for x in a.iterate(0, 4)]
  resumed = [x["label"] for x in b.iterate(2, 2)]
  np.testing.assert_array_equal(full[2], resumed[0])
  np.testing.assert_array_equal(full[3], resumed[1])


def test_official_any_patch_is_redrawn_when_all_zero():
  # Image non-zero only where x < 8; an 'any' patch (sample 2 of 3, probabilities 0)
  # starting at x >= 8 is all zero and drawn again, as cc_augment.py L190–194.
  image = np.zeros((20, 20, 20, 1), np.float32)
  image[:, :, :8] = 1.0
  label = np.zeros((20, 20, 20), np.uint8)
  label[10, 10, 2] = 1
  case = pipeline.make_case("z", image, label, 2)
  s = pipeline.PatchSampler({"heart": [case]}, (HEART,), patch_size=(6, 6, 6), batch_size=3,
                            sampling="official", small_class_prob=0.0, fore_prob=0.0,
                            augment_cfg=_NO_AUG)
  assert all(s.batch(step)["image"][2].max() > 0 for step in range(20))
  # Without the redraw about 6/14 of them would be empty: the case is a real test.
  starts = [pipeline.official_center(20, 6, np.random.default_rng(k)) - 3 for k in range(200)]
  assert 0.3 < np.mean(np.array(starts) >= 8) < 0.55


# -- source patches (the official unifyPatch='resize') ---------------------------------

_SPATIAL_ONLY = augment.AugmentConfig(p_rotate=0.5, p_scale=0.5, p_gamma=0.0, p_brightness=0.0,
                                      p_contrast=0.0, p_noise=0.0)


@pytest.mark.parametrize("sampling, cfg", [("nnunet", _SPATIAL_ONLY), ("official", _OFFICIAL_AUG)])
def test_source_patch_is_cut_and_augmented_at_its_size_then_resized(sampling, cfg):
  """Heart patches: exactly the source-size sampler's patches, resized to the model's;
  prostate (no source patch) exactly the plain sampler's."""
  src = (8, 12, 10)
  kw = dict(batch_size=3, seed=3, augment_cfg=cfg, sampling=sampling)
  resized = _sampler(patch_size=(16, 16, 16), source_patches={"heart": src, "spleen": (4, 4, 4)},
                     **kw)
  at_source = _sampler(patch_size=src, **kw)
  plain = _sampler(patch_size=(16, 16, 16), **kw)
  assert resized.source_patch == {"heart": src, "prostate": (16, 16, 16)}
  foreground = 0
  for step in (0, 2, 4):  # heart steps
    got, ref = resized.batch(step), at_source.batch(step)
    assert got["image"].shape == (3, 16, 16, 16, 2) and got["label"].shape == (3, 16, 16, 16)
    for i in range(3):
      lab = rescale.resize_label(ref["label"][i], (16, 16, 16))
      np.testing.assert_array_equal(got["label"][i], lab)
      np.testing.assert_allclose(got["image"][i, ..., 0],
                                 rescale.resize_image(ref["image"][i, ..., 0], (16, 16, 16)),
                                 atol=1e-6)
      foreground += int(lab.any())
    assert np.all(got["image"][..., 1] == 0)  # heart's channel padding survives
    np.testing.assert_array_equal(got["case"], ref["case"])
  assert foreground > 0
  got, ref = resized.batch(1), plain.batch(1)  # prostate
  np.testing.assert_array_equal(got["image"], ref["image"])
  np.testing.assert_array_equal(got["label"], ref["label"])
  # Still a pure function of (seed, step).
  np.testing.assert_array_equal(resized.batch(4)["image"], resized.batch(4)["image"])


def test_bad_source_patch_is_a_clear_error():
  with pytest.raises(ValueError, match="source patch .* of domain 'heart'"):
    _sampler(source_patches={"heart": (0, 8, 8)})
