"""NIfTI I/O with the geometry needed to write predictions back exactly.

Axis convention. nibabel indexes a NIfTI array as (i, j, k[, c]) in voxel
order, and the file's affine maps (i, j, k) to world (RAS mm). This project
stores volumes channels-last as (D, H, W, C) with

  array[d, h, w, c] = nifti[i=w, j=h, k=d, c],  i.e. data.transpose(2, 1, 0, 3)

so array axis 0 is NIfTI voxel axis k, and spacings are (z, y, x) =
(pixdim_k, pixdim_j, pixdim_i) in mm. The affine is kept exactly as in the file
(it still maps (i, j, k)); use `dhw_to_ijk` / `dhw_affine` to go between the two.

Multi-channel images are either one 4D file (channels on the file's 4th axis,
as in MSD) or nnU-Net-style channel files `case_0000.nii.gz`, `case_0001...`
(`load_channels`).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from typing import Sequence

import nibabel as nib
import numpy as np

from u2net_jax.errors import InputError

# Headers claiming more than this are rejected before any voxel is read: a
# corrupt header must not make us allocate terabytes.
MAX_AXIS = 2048
MAX_VOXELS = 2**31

AFFINE_ATOL = 1e-3

# Errors nibabel/gzip/zlib raise on corrupt, truncated or foreign files.
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, TypeError, OverflowError, struct.error,
                nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError)


@dataclasses.dataclass(frozen=True, eq=False)
class NiftiMeta:
  """Geometry of a loaded NIfTI file, enough to write a prediction back.

  Attributes:
    affine: (4, 4) float64, the file's voxel (i, j, k) -> world (mm) map.
    spacing: mm, (z, y, x) = pixdim of (k, j, i).
    shape: (D, H, W) = the file's (k, j, i) sizes.
    header: a copy of the file's header (of the first file for channel files).
    num_channels: C of the loaded array.
    path: the file the geometry came from.
  """
  affine: np.ndarray
  spacing: tuple[float, float, float]
  shape: tuple[int, int, int]
  header: nib.Nifti1Header
  num_channels: int = 1
  path: str = ""


def is_nifti_path(path: str) -> bool:
  return path.endswith(".nii") or path.endswith(".nii.gz")


def is_junk_path(path: str) -> bool:
  """True for macOS AppleDouble files (`._name`) that MSD archives contain."""
  return os.path.basename(path).startswith("._")


def dhw_to_ijk(index) -> np.ndarray:
  """(..., 3) index in (D, H, W) order -> NIfTI voxel (i, j, k) order."""
  return np.asarray(index)[..., ::-1]


def ijk_to_dhw(index) -> np.ndarray:
  """(..., 3) NIfTI voxel (i, j, k) index -> (D, H, W) order."""
  return np.asarray(index)[..., ::-1]


def to_nifti_order(array: np.ndarray) -> np.ndarray:
  """(D, H, W[, C]) array -> (i, j, k[, C]) as nibabel stores it."""
  axes = (2, 1, 0) + tuple(range(3, array.ndim))
  return np.transpose(array, axes)


def from_nifti_order(array: np.ndarray) -> np.ndarray:
  """(i, j, k[, C]) nibabel array -> (D, H, W[, C])."""
  return to_nifti_order(array)  # The permutation is its own inverse.


def dhw_affine(affine: np.ndarray) -> np.ndarray:
  """The (4, 4) map from our (d, h, w) index to world, given the file's affine."""
  perm = np.zeros((4, 4))
  perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0  # (d,h,w,1) -> (i,j,k,1)
  return np.asarray(affine, np.float64) @ perm


def _open(path: str):
  """nibabel image with its header checked; no voxel data read yet."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: file not found.")
  if not is_nifti_path(path):
    raise InputError(f"{path}: not a NIfTI file (expected .nii or .nii.gz).")
  try:
    img = nib.load(path)
  except _READ_ERRORS as e:
    raise InputError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
  if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses it.
    raise InputError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__}).")
  try:
    header = img.header
    shape = tuple(int(s) for s in header.get_data_shape())
    affine = np.asarray(img.affine, np.float64)
    # nibabel silently "fixes" zero/negative pixdim on load; check the raw ones.
    with nib.openers.ImageOpener(path) as f:
      raw = type(header).from_fileobj(f, check=False)
    zooms = np.asarray(raw["pixdim"][1:4], np.float64)
  except _READ_ERRORS as e:
    raise InputError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
  if len(shape) not in (3, 4):
    raise InputError(
        f"{path}: {len(shape)}D data of shape {shape}; expected a 3D volume or 4D "
        "(x, y, z, channel) image.")
  if min(shape) <= 0:
    raise InputError(f"{path}: zero-size dimension in shape {shape}.")
  if max(shape) > MAX_AXIS or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
    raise InputError(
        f"{path}: header claims shape {shape}, larger than the limit of {MAX_AXIS} "
        f"voxels per axis / {MAX_VOXELS} in total (corrupt header?).")
  if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
    raise InputError(f"{path}: voxel spacing (pixdim) {tuple(zooms.tolist())} must be "
                     "positive.")
  if not np.all(np.isfinite(affine)):
    raise InputError(f"{path}: affine has non-finite values:\n{affine}")
  return img, shape


def _stored_bytes(path: str, need: int) -> int:
  """Bytes `path` holds once decompressed, counting no further than `need`.

  Memory stays small: a .nii.gz is checked by its gzip trailer (the
  uncompressed size mod 2**32) or, if that does not match, streamed.
  """
  if not path.endswith(".gz"):
    return os.path.getsize(path)
  if os.path.getsize(path) >= 18:  # gzip header + trailer
    with open(path, "rb") as f:
      f.seek(-4, os.SEEK_END)
      if struct.unpack("<I", f.read(4))[0] == need % 2**32:
        return need
  total = 0
  with gzip.open(path, "rb") as f:
    while total < need:
      chunk = f.read(min(1 << 24, need - total))
      if not chunk:
        break
      total += len(chunk)
  return total


def _check_stored_size(img, path: str) -> None:
  """InputError if the file holds fewer voxel bytes than its header claims.

  Checked before reading: a corrupt header on a small file must not make us
  allocate the gigabytes it claims.
  """
  proxy = img.dataobj
  offset, dtype = getattr(proxy, "offset", None), getattr(proxy, "dtype", None)
  if offset is None or dtype is None:
    return
  data_bytes = int(np.prod(proxy.shape, dtype=np.int64)) * np.dtype(dtype).itemsize
  have = _stored_bytes(path, int(offset) + data_bytes)
  if have < int(offset) + data_bytes:
    raise InputError(
        f"{path}: header claims shape {tuple(proxy.shape)} ({data_bytes} bytes of voxel "
        f"data) but the file holds {max(have - int(offset), 0)}: truncated file or corrupt "
        "header.")


def _read_data(img, path: str, dtype=None) -> np.ndarray:
  """All voxels, (i, j, k[, c]), scaled as the header says; checked finite.

  dtype float32 scales straight into float32 (no float64 copy of a big CT).
  """
  try:
    _check_stored_size(img, path)
  except InputError:
    raise
  except _READ_ERRORS as e:
    raise InputError(
        f"{path}: could not read voxel data, truncated or corrupt file? "
        f"({type(e).__name__}: {e})") from e
  try:
    if dtype is not None and hasattr(img.dataobj, "get_scaled"):
      data = img.dataobj.get_scaled(dtype=dtype)
    else:
      data = np.asanyarray(img.dataobj)
  except _READ_ERRORS as e:
    raise InputError(
        f"{path}: could not read voxel data, truncated or corrupt file? "
        f"({type(e).__name__}: {e})") from e
  if data.dtype.kind not in "biuf":
    raise InputError(f"{path}: unsupported voxel type {data.dtype}.")
  if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    raise InputError(f"{path}: {bad} NaN/inf voxels.")
  return data


def _meta(img, path: str, shape, num_channels: int) -> NiftiMeta:
  zooms = img.header.get_zooms()
  return NiftiMeta(
      affine=np.array(img.affine, np.float64),
      spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
      shape=(int(shape[2]), int(shape[1]), int(shape[0])),
      header=img.header.copy(),
      num_channels=num_channels,
      path=os.fspath(path))


def read_meta(path: str) -> NiftiMeta:
  """Geometry from the header only (no voxel data read); header checks applied."""
  img, shape = _open(path)
  return _meta(img, path, shape, shape[3] if len(shape) == 4 else 1)


def load_image(path: str) -> tuple[np.ndarray, NiftiMeta]:
  """Loads a 3D or 4D NIfTI image.

  Args:
    path: `.nii` or `.nii.gz`; 4D files hold channels on their last axis.
  Returns:
    (image float32 (D, H, W, C), meta).
  Raises:
    InputError naming `path` if the file is missing, not NIfTI, truncated or
    corrupt, not 3D/4D, empty, absurdly large, non-finite, or has bad spacing.
  """
  img, shape = _open(path)
  data = _read_data(img, path, np.float32)
  if data.ndim == 3:
    data = data[..., None]
  with np.errstate(over="ignore"):  # reported below
    image = np.ascontiguousarray(from_nifti_order(data), dtype=np.float32)
  if not np.all(np.isfinite(image)):  # e.g. scl_slope overflowing float32.
    raise InputError(f"{path}: voxel values overflow float32.")
  return image, _meta(img, path, shape, image.shape[-1])


def load_label(path: str) -> tuple[np.ndarray, NiftiMeta]:
  """Loads a 3D integer label map: (label int32 (D, H, W), meta)."""
  img, shape = _open(path)
  if len(shape) == 4 and shape[3] == 1:
    shape = shape[:3]
  if len(shape) != 3:
    raise InputError(f"{path}: a label map must be 3D, got shape {shape}.")
  data = _read_data(img, path).reshape(shape)
  if data.dtype.kind == "f":
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
      raise InputError(f"{path}: label map has non-integer values.")
    data = rounded
  if data.size and (data.min() < 0 or data.max() > np.iinfo(np.int32).max):
    raise InputError(f"{path}: label values must be non-negative class ids, "
                     f"got range [{data.min()}, {data.max()}].")
  label = np.ascontiguousarray(from_nifti_order(data), dtype=np.int32)
  return label, _meta(img, path, shape, 1)


def same_geometry(a: NiftiMeta, b: NiftiMeta, atol: float = AFFINE_ATOL) -> bool:
  """Same (D, H, W) shape and affines equal within `atol`."""
  return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0, atol=atol))


def check_same_geometry(a: NiftiMeta, b: NiftiMeta, atol: float = AFFINE_ATOL):
  """Raises InputError naming `b.path` if its grid differs from `a`'s."""
  if a.shape != b.shape:
    raise InputError(f"{b.path}: shape (D, H, W) {b.shape} differs from {a.shape} "
                     f"of {a.path}.")
  if not np.allclose(a.affine, b.affine, rtol=0, atol=atol):
    diff = float(np.max(np.abs(a.affine - b.affine)))
    raise InputError(f"{b.path}: affine differs from that of {a.path} by up to {diff:.4g} "
                     f"(tolerance {atol}).")


def load_channels(paths: Sequence[str]) -> tuple[np.ndarray, NiftiMeta]:
  """Stacks nnU-Net-style channel files (`case_0000.nii.gz`, ...) into one image.

  Args:
    paths: one file per channel (or group of channels), in channel order.
  Returns:
    (image float32 (D, H, W, C), meta of the first file with C channels).
  Raises:
    InputError naming the file whose shape or affine differs from the first.
  """
  if not paths:
    raise InputError("load_channels needs at least one file.")
  images, first = [], None
  for path in paths:
    image, meta = load_image(path)
    if first is None:
      first = meta
    else:
      check_same_geometry(first, meta)
    images.append(image)
  image = np.concatenate(images, axis=-1) if len(images) > 1 else images[0]
  return image, dataclasses.replace(first, num_channels=image.shape[-1])


def save_label(path: str, label: np.ndarray, meta: NiftiMeta) -> None:
  """Writes a (D, H, W) label map with `meta`'s affine, header and shape.

  `load_label(path)` then returns the same array and the same affine (the
  header's sform/qform are kept), so predictions overlay the input exactly.
  """
  label = np.asarray(label)
  if label.shape != tuple(meta.shape):
    raise InputError(f"{path}: label shape {label.shape} differs from the image's "
                     f"(D, H, W) {tuple(meta.shape)}.")
  if label.dtype.kind == "f":
    if not np.array_equal(label, np.rint(label)):
      raise InputError(f"{path}: label has non-integer values.")
  elif label.dtype.kind not in "biu":
    raise InputError(f"{path}: label dtype {label.dtype} is not integer.")
  if label.size and (label.min() < 0 or label.max() > 255):
    raise InputError(f"{path}: label values must be in [0, 255] to be stored as uint8.")
  header = meta.header.copy()
  klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
  img = klass(to_nifti_order(label.astype(np.uint8)), meta.affine, header=header)
  img.set_data_dtype(np.uint8)
  # The image's intensity scaling and display range mean nothing for labels.
  img.header.set_slope_inter(1.0, 0.0)
  img.header["cal_min"] = 0
  img.header["cal_max"] = 0
  nib.save(img, os.fspath(path))
