"""What every builder of this project stores, and how a build is made safe.

Every example, whichever builder made it (MSD NIfTI or synthetic), has the
same features, so nothing downstream cares where the data came from:

  image          float32 (D, H, W, C)  preprocessed (cropped, resampled, normalized)
  label          uint8   (D, H, W)     class ids on the image's grid (zeros if unlabeled)
  has_label      bool
  spacing        float32 (3,)          mm of the stored grid, (z, y, x)
  original_spacing float32 (3,)        mm of the source file's grid
  original_shape int32   (3,)          source grid shape (D, H, W)
  affine         float64 (4, 4)        source voxel (i, j, k) → world (RAS mm), NIfTI
                                       order: i runs along W, j along H, k along D
  crop_box       int32   (3, 2)        [start, stop) of the non-zero crop, source grid
  case_id        text

Builds go to a temporary directory and are moved into place only when
complete, so a failed or interrupted build leaves nothing half-written and a
previously built version stays readable until the new one replaces it. A
complete build records the size and sha256 of each of its files
(`integrity.json`, u2net_jax/data/integrity.py), which reads check, so a file
changed or truncated later is named instead of read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid

import numpy as np

from u2net_jax.data import integrity

FEATURE_KEYS = ("image", "label", "has_label", "spacing", "original_spacing",
                "original_shape", "affine", "crop_box", "case_id")


def features(num_channels: int):
  """The shared `tfds.features.FeaturesDict` for `num_channels` input channels."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tensor = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      # More than one None dimension needs zlib encoding.
      "image": tensor(shape=(None, None, None, num_channels), dtype=np.float32, encoding="zlib"),
      "label": tensor(shape=(None, None, None), dtype=np.uint8, encoding="zlib"),
      "has_label": tensor(shape=(), dtype=np.bool_),
      "spacing": tensor(shape=(3,), dtype=np.float32),
      "original_spacing": tensor(shape=(3,), dtype=np.float32),
      "original_shape": tensor(shape=(3,), dtype=np.int32),
      "affine": tensor(shape=(4, 4), dtype=np.float64),
      "crop_box": tensor(shape=(3, 2), dtype=np.int32),
      "case_id": tfds.features.Text(),
  })


def example(image, label, *, spacing, original_spacing, original_shape, affine, crop_box,
            case_id, has_label=True) -> dict:
  """One example dict with the dtypes of `features()`."""
  image = np.asarray(image, np.float32)
  if label is None:
    label = np.zeros(image.shape[:3], np.uint8)
    has_label = False
  return {
      "image": image,
      "label": np.asarray(label, np.uint8),
      "has_label": bool(has_label),
      "spacing": np.asarray(spacing, np.float32),
      "original_spacing": np.asarray(original_spacing, np.float32),
      "original_shape": np.asarray(original_shape, np.int32),
      "affine": np.asarray(affine, np.float64),
      "crop_box": np.asarray(crop_box, np.int32),
      "case_id": str(case_id),
  }


def decode_case_id(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def build_atomically(builder_factory, data_dir: str, *, manual_dir: str | None = None,
                     overwrite: bool = False, rebuild: str = "") -> str:
  """Builds `builder_factory(tmp_data_dir)` and moves the result into `data_dir`.

  Args:
    builder_factory: data_dir -> a TFDS builder instance (name, config, version).
    data_dir: final TFDS data_dir; the dataset lands in
      `<data_dir>/<name>/<config>/<version>/`.
    manual_dir: passed to TFDS as the manual download dir.
    overwrite: rebuild even if that version already exists.
    rebuild: the command line that rebuilds this dataset (less --data_dir),
      quoted in the message of a read that finds a file changed ('' = none).
  Returns:
    The final dataset directory.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  final = builder_factory(data_dir).data_dir
  if _complete(final) and not overwrite:
    return final
  # Two runs that find the dataset missing at once (two jobs, two test
  # workers) must not both build and swap it in: the second swap would delete
  # the folder the first one is reading. One builds; the other waits, then
  # finds it complete.
  parent = os.path.dirname(final)
  made = [d for d in (os.path.dirname(parent), parent) if not os.path.isdir(d)]
  os.makedirs(parent, exist_ok=True)
  lock_path = os.path.join(parent, f".{os.path.basename(final)}.build-lock")
  with _exclusive(lock_path) as lock:
    if _complete(final) and not overwrite:
      return final
    try:
      return _build(builder_factory, data_dir, final, manual_dir, rebuild)
    except BaseException:
      # A failed first build leaves nothing behind, the lock file included
      # (unlinked while held: a waiter finds its file gone and opens anew).
      if not os.path.exists(final):
        os.unlink(lock.name)
        for d in reversed(made):
          with contextlib.suppress(OSError):
            os.rmdir(d)  # only if empty
      raise


@contextlib.contextmanager
def _exclusive(path: str):
  """The open lock file `path`, `flock`ed; retried if it was unlinked while we waited."""
  while True:
    os.makedirs(os.path.dirname(path), exist_ok=True)  # a failed build removed it
    f = open(path, "a")  # pylint: disable=consider-using-with
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
        break
    except FileNotFoundError:
      pass
    f.close()
  try:
    yield f
  finally:
    f.close()


def _complete(final: str) -> bool:
  return os.path.isdir(final) and os.path.exists(os.path.join(final, "dataset_info.json"))


def _build(builder_factory, data_dir: str, final: str, manual_dir, rebuild: str) -> str:
  """The build of `build_atomically`, under its lock: temp folder, then a swap."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tmp_root = os.path.join(data_dir, f".tmp-build-{uuid.uuid4().hex[:8]}")
  try:
    builder = builder_factory(tmp_root)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    built = builder.data_dir
    integrity.record(built, rebuild=rebuild)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    old = None
    if os.path.exists(final):
      old = f"{final}.old-{uuid.uuid4().hex[:8]}"
      os.replace(final, old)
    os.replace(built, final)
    if old:
      shutil.rmtree(old, ignore_errors=True)
    return final
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)
