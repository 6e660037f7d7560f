"""experiments/window_offset.py: one window's Dice by the voxel's offset from its centre."""

import numpy as np

from experiments import window_offset


def test_offset_bins_are_chebyshev_distance_from_the_centre():
  bins = window_offset.offset_bins((8, 8, 8), 2)
  # centre voxels (3,4 on each axis: offset 0.5) in bin 0; corners (offset 3.5) in bin 1.
  assert bins[3, 4, 3] == 0 and bins[0, 0, 0] == 1 and bins[0, 4, 4] == 1
  assert bins[2, 4, 4] == 0  # offset 1.5 < 2
  assert sorted(np.unique(bins)) == [0, 1]


def test_origins_tile_to_the_far_edge():
  assert window_offset.origins((20, 16, 16), (16, 16, 16), 8) == [(0, 0, 0), (4, 0, 0)]
  assert [o[0] for o in window_offset.origins((40, 16, 16), (16, 16, 16), 8)] == [0, 8, 16, 24]


def test_dice_by_bin_counts_errors_where_they_are():
  patch = (4, 4, 4)
  bins = window_offset.offset_bins(patch, 1)  # offsets 0.5 → bin 0, 1.5 → bin 1
  label = np.ones(patch, np.uint8)
  pred = label.copy()
  pred[0] = 0                                   # the first slice is in bin 1 only: 16 misses
  counts = window_offset.confusion_by_bin(pred, label, bins, 2, 2)
  assert counts[0, 1].tolist() == [8, 0, 0]     # the 8 centre voxels right
  assert counts[1, 1].tolist() == [40, 0, 16]
  dice = window_offset.dice_by_bin(counts, 1)
  assert dice["0-1"] == {"dice": 1.0, "foreground_pairs": 8}
  assert dice["1-2"]["dice"] == round(80 / 96, 4) and dice["1-2"]["foreground_pairs"] == 56


def test_summary_table_gives_mean_and_sd_over_runs():
  runs = [{"domains": {"heart": {"0-4": {"dice": d0}, "4-8": {"dice": d1}}}}
          for d0, d1 in ((0.9, 0.8), (0.92, 0.84))]
  table = window_offset.summary_table(runs)
  assert "| heart | 0.910 ± 0.014 | 0.820 ± 0.028 |" in table
  assert "offset 0-4 voxels" in table
