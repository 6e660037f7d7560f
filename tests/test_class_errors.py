"""experiments/class_errors.py: where a class's errors are (counts on a hand case)."""

import numpy as np

from experiments import class_errors


def test_counts_missed_and_false_voxels_at_the_border_and_in_end_slices():
  label = np.zeros((5, 8, 8), np.uint8)
  label[1:4, 2:6, 2:6] = 1          # class 1: 3 slices of 4×4 (48 voxels)
  label[2, 3:5, 3:5] = 2            # class 2 inside it (4 voxels): class 1 has 44
  pred = label.copy()
  pred[1, 2, 2:6] = 0               # 4 missed voxels on the border, in an end slice
  pred[2, 6, 2:6] = 1               # 4 false voxels in the background shell
  pred[2, 3, 3] = 1                 # 1 false voxel taken from class 2
  c = class_errors.error_counts(pred, label, 1, 3)
  assert c["voxels"] == 44 and c["missed"] == 4 and c["missed_touching_background"] == 4
  assert c["false"] == 5 and c["false_in_shell_background"] == 4
  assert c["false_in_shell_other_class"] == 1
  assert c["errors_in_end_slices"] == 4
  assert c["confusion"][1, 0] == 4 and c["confusion"][0, 1] == 4 and c["confusion"][2, 1] == 1
  t = class_errors.total([c, c])
  assert t["missed"] == 8 and t["share_of_missed_touching_background"] == 1.0
  assert t["share_of_false_in_background_shell"] == 0.8
  assert t["confusion"][1][0] == 8
