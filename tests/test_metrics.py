"""Tests of u2net_jax.metrics on hand-built masks with known answers."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import distance

from u2net_jax import metrics
from u2net_jax.errors import InputError

SPACING = (2.0, 1.0, 1.0)  # mm, (z, y, x): z is the coarse axis


def _box(shape, lo, hi):
  mask = np.zeros(shape, bool)
  mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
  return mask


def _ball(shape, center, radius, spacing=(1.0, 1.0, 1.0)):
  """Voxels whose centre is within `radius` (in units of spacing) of centre."""
  grid = np.indices(shape)
  dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing))
  return dist2 <= radius ** 2


def _surface_brute(mask):
  """Voxels of `mask` with a face neighbour outside it (or off the volume)."""
  padded = np.pad(mask, 1, constant_values=False)
  inner = np.ones_like(mask)
  for axis in range(3):
    for step in (-1, 1):
      inner &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
  return mask & ~inner


def _directed_brute(a, b, spacing):
  """All surface-to-surface nearest distances in mm, by pairwise distances."""
  pa = np.argwhere(_surface_brute(a)) * spacing
  pb = np.argwhere(_surface_brute(b)) * spacing
  d = distance.cdist(pa, pb)
  return d.min(axis=1), d.min(axis=0)


def test_dice_on_boxes_and_absent_classes():
  shape = (20, 20, 20)
  label = _box(shape, (2, 2, 2), (12, 12, 12)).astype(np.int32)
  pred = _box(shape, (4, 2, 2), (14, 12, 12)).astype(np.int32)
  # Shifted by 2 along z: overlap 8x10x10, Dice = 2*800 / (1000 + 1000).
  label[15:18, 15:18, 15:18] = 2
  pred[15:18, 15:18, 16:19] = 2  # 3x3x2 overlap of two 27-voxel boxes
  got = metrics.dice(pred, label, num_classes=4)
  np.testing.assert_allclose(got, [0.8, 2 * 18 / 54, 1.0])
  # Class 3 present in one map only.
  pred[0, 0, 0] = 3
  assert metrics.dice(pred, label, num_classes=4)[2] == 0.0


def test_hd95_single_voxels_with_anisotropic_spacing():
  shape = (8, 8, 8)
  a = _box(shape, (2, 2, 2), (3, 3, 3))
  b = _box(shape, (3, 2, 3), (4, 3, 4))  # one step in z (2 mm) and x (1 mm)
  assert metrics.hd95(a, b, SPACING) == pytest.approx(np.sqrt(5.0))
  b = _box(shape, (2, 2, 7), (3, 3, 8))  # five steps in x
  assert metrics.hd95(a, b, SPACING) == pytest.approx(5.0)


@pytest.mark.parametrize('axis,offset', [(0, 3), (2, 3), (1, 4)])
def test_shifted_spheres(axis, offset):
  # Spheres round in mm (radius 8 mm: 4 voxels along z, 8 along y and x),
  # moved by `offset` voxels along one axis.
  shape = (24, 40, 40)
  center = np.array([11, 19, 19])
  moved = center.copy()
  moved[axis] += offset
  a = _ball(shape, center, 8.0, SPACING)
  b = _ball(shape, moved, 8.0, SPACING)
  shift_mm = offset * SPACING[axis]
  # Every surface voxel has its shifted copy on the other surface, so all
  # distances are <= shift_mm, and the top 5% are within a voxel of it.
  hd = metrics.hd95(a, b, SPACING)
  assert shift_mm - 1.0 <= hd <= shift_mm + 1e-9
  assert metrics.surface_dice(a, b, SPACING, tolerance_mm=shift_mm) == 1.0
  assert metrics.surface_dice(a, b, SPACING, tolerance_mm=0.5) < 0.5
  assert metrics.hd95(a, a, SPACING) == 0.0
  assert metrics.surface_dice(a, a, SPACING, tolerance_mm=0.0) == 1.0


def test_surface_metrics_match_pairwise_brute_force():
  # Random blobs, some touching the volume border, to check the surface
  # definition, the bounding-box crop and the percentile convention.
  rng = np.random.default_rng(0)
  shape = (9, 12, 11)
  spacing = np.array([2.5, 0.8, 1.1])
  for _ in range(5):
    # Smoothed noise gives blobs with interiors, holes and diagonal contacts.
    a = ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5
    b = ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5
    assert (a & ~_surface_brute(a)).any()  # some voxels are not surface
    d_a, d_b = _directed_brute(a, b, spacing)
    want_hd = max(np.percentile(d_a, 95), np.percentile(d_b, 95))
    assert metrics.hd95(a, b, spacing) == pytest.approx(want_hd)
    tol = 1.0
    want_sd = ((d_a <= tol).sum() + (d_b <= tol).sum()) / (d_a.size + d_b.size)
    assert metrics.surface_dice(a, b, spacing, tol) == pytest.approx(want_sd)


def test_per_class_functions_match_binary_ones():
  shape = (24, 24, 24)
  label = np.zeros(shape, np.uint8)
  pred = np.zeros(shape, np.uint8)
  label[_ball(shape, (8, 8, 8), 5)] = 1
  pred[_ball(shape, (9, 8, 8), 5)] = 1
  label[_box(shape, (14, 14, 14), (22, 22, 22))] = 2
  pred[_box(shape, (14, 15, 14), (22, 22, 21))] = 2
  for c in (1, 2):
    assert metrics.hd95_per_class(pred, label, SPACING, 4)[c - 1] == (
        pytest.approx(metrics.hd95(pred == c, label == c, SPACING)))
    assert metrics.surface_dice_per_class(pred, label, SPACING, 1.0, 4)[
        c - 1] == pytest.approx(
            metrics.surface_dice(pred == c, label == c, SPACING, 1.0))
  np.testing.assert_array_equal(metrics.hd95(pred, label, SPACING, 4),
                                metrics.hd95_per_class(pred, label, SPACING, 4))
  # Class 3 absent from both: the "both empty" conventions.
  assert metrics.hd95_per_class(pred, label, SPACING, 4)[2] == 0.0
  assert metrics.surface_dice_per_class(pred, label, SPACING, 1.0, 4)[2] == 1.0


def test_empty_mask_conventions():
  shape = (10, 20, 30)
  empty = np.zeros(shape, bool)
  full = _box(shape, (2, 2, 2), (5, 5, 5))
  diagonal = np.sqrt((10 * 2.0) ** 2 + 20.0 ** 2 + 30.0 ** 2)
  # Dice.
  labels_empty = np.zeros(shape, np.int32)
  assert metrics.dice(labels_empty, labels_empty, 2)[0] == 1.0
  assert metrics.dice(full.astype(np.int32), labels_empty, 2)[0] == 0.0
  assert metrics.dice(labels_empty, full.astype(np.int32), 2)[0] == 0.0
  # hd95.
  assert metrics.hd95(empty, empty, SPACING) == 0.0
  assert metrics.hd95(full, empty, SPACING) == pytest.approx(diagonal)
  assert metrics.hd95(empty, full, SPACING) == pytest.approx(diagonal)
  # Surface Dice.
  assert metrics.surface_dice(empty, empty, SPACING, 1.0) == 1.0
  assert metrics.surface_dice(full, empty, SPACING, 1.0) == 0.0
  assert metrics.surface_dice(empty, full, SPACING, 1.0) == 0.0


def test_128_cube_is_fast_enough():
  # Two large overlapping balls at 128^3, 2 classes; a budget, not a
  # benchmark: it catches accidental quadratic or per-voxel Python code.
  import time
  shape = (128, 128, 128)
  label = _ball(shape, (64, 64, 64), 40).astype(np.uint8)
  pred = _ball(shape, (66, 63, 64), 40).astype(np.uint8)
  label[_ball(shape, (20, 20, 20), 10)] = 2
  pred[_ball(shape, (21, 20, 20), 10)] = 2
  start = time.perf_counter()
  hd = metrics.hd95_per_class(pred, label, SPACING, 3)
  sd = metrics.surface_dice_per_class(pred, label, SPACING, 2.0, 3)
  elapsed = time.perf_counter() - start
  assert hd[0] <= 4.0 + 1e-9 and sd[1] == 1.0
  assert elapsed < 10.0


def test_bad_inputs_raise_input_error():
  a = np.zeros((4, 5, 6), bool)
  with pytest.raises(InputError, match='does not match'):
    metrics.hd95(a, a[:, :, :5], SPACING)
  with pytest.raises(InputError, match='3D'):
    metrics.dice(a[0].astype(int), a[0].astype(int), 2)
  with pytest.raises(InputError, match='length 3'):
    metrics.hd95(a, a, (1.0, 1.0))
  with pytest.raises(InputError, match='positive'):
    metrics.surface_dice(a, a, (1.0, 0.0, 1.0), 1.0)
  with pytest.raises(InputError, match='tolerance_mm'):
    metrics.surface_dice(a, a, SPACING, -1.0)
  with pytest.raises(InputError, match=r'\[0, 2\)'):
    metrics.dice(np.full((4, 5, 6), 2), np.zeros((4, 5, 6), int), 2)
  with pytest.raises(InputError, match='num_classes'):
    metrics.hd95(np.full((4, 5, 6), 2), np.zeros((4, 5, 6), int), SPACING)
  with pytest.raises(ValueError):  # InputError is a ValueError
    metrics.dice(a, a, num_classes=1)
