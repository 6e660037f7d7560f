"""Tests of u2net_jax.data.nifti: axis order, exact geometry round trip, rejections."""

import gzip
import os
import pathlib
import struct

import nibabel as nib
import numpy as np
import pytest

from u2net_jax.data import nifti
from u2net_jax.errors import InputError

# A rotated, flipped, anisotropic grid: pixdim (i, j, k) = (0.8, 1.0, 2.5) mm.
_C, _S = np.cos(0.3), np.sin(0.3)
AFFINE = np.array([[-0.8 * _C, -1.0 * _S, 0.0, 40.0],
                   [-0.8 * _S, 1.0 * _C, 0.0, -25.0],
                   [0.0, 0.0, 2.5, 12.5],
                   [0.0, 0.0, 0.0, 1.0]])
NII_SHAPE = (12, 10, 8)  # (i, j, k) as stored; ours is (D, H, W) = (8, 10, 12).

# Byte offsets in a NIfTI-1 header.
_DIM_OFFSET, _PIXDIM_OFFSET = 40, 76


def _write(path, data, affine=AFFINE):
  nib.save(nib.Nifti1Image(data, affine), str(path))
  return str(path)


def _patch(path, offset, fmt, *values):
  """Overwrites header fields of an uncompressed .nii file."""
  with open(path, "r+b") as f:
    f.seek(offset)
    f.write(struct.pack("<" + fmt, *values))


def test_load_image_axis_order_spacing_and_affine(tmp_path):
  data = np.random.default_rng(0).normal(size=NII_SHAPE).astype(np.float32)
  image, meta = nifti.load_image(_write(tmp_path / "a.nii.gz", data))
  assert image.shape == (8, 10, 12, 1) and image.dtype == np.float32
  assert meta.shape == (8, 10, 12) and meta.num_channels == 1
  # Our (d, h, w) is the file's (k, j, i).
  assert image[3, 2, 7, 0] == data[7, 2, 3]
  np.testing.assert_allclose(meta.spacing, (2.5, 1.0, 0.8), rtol=1e-6)
  np.testing.assert_allclose(meta.affine, AFFINE, atol=1e-6)


def test_index_helpers_map_to_the_same_world_point():
  dhw = np.array([[3, 2, 7], [0, 0, 0], [7, 9, 11]])
  ijk = nifti.dhw_to_ijk(dhw)
  np.testing.assert_array_equal(ijk, [[7, 2, 3], [0, 0, 0], [11, 9, 7]])
  np.testing.assert_array_equal(nifti.ijk_to_dhw(ijk), dhw)
  homog = lambda x: np.concatenate([x, np.ones((len(x), 1))], axis=1).T
  np.testing.assert_allclose(nifti.dhw_affine(AFFINE) @ homog(dhw), AFFINE @ homog(ijk))
  arr = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
  np.testing.assert_array_equal(nifti.from_nifti_order(nifti.to_nifti_order(arr)), arr)


def test_4d_file_is_channels_last(tmp_path):
  data = np.random.default_rng(1).normal(size=NII_SHAPE + (3,)).astype(np.float32)
  image, meta = nifti.load_image(_write(tmp_path / "m.nii.gz", data))
  assert image.shape == (8, 10, 12, 3) and meta.num_channels == 3
  np.testing.assert_array_equal(image[..., 2], data[..., 2].transpose(2, 1, 0))
  assert meta.shape == (8, 10, 12)


def test_save_label_round_trips_exactly(tmp_path):
  """A prediction written with the input's meta reloads with identical geometry."""
  img = nib.Nifti1Image(np.ones(NII_SHAPE + (2,), np.int16), AFFINE)
  img.header.set_qform(AFFINE, code=1)
  img.header.set_sform(AFFINE, code=2)
  nib.save(img, str(tmp_path / "in.nii.gz"))
  _, meta = nifti.load_image(str(tmp_path / "in.nii.gz"))
  label = np.random.default_rng(2).integers(0, 4, meta.shape).astype(np.int64)
  out = str(tmp_path / "pred.nii.gz")
  nifti.save_label(out, label, meta)

  back, back_meta = nifti.load_label(out)
  np.testing.assert_array_equal(back, label)
  np.testing.assert_array_equal(back_meta.affine, meta.affine)
  assert back_meta.shape == meta.shape and back_meta.spacing == meta.spacing
  saved = nib.load(out)
  assert saved.get_data_dtype() == np.uint8
  assert saved.shape == NII_SHAPE
  assert int(saved.header["sform_code"]) == 2 and int(saved.header["qform_code"]) == 1
  np.testing.assert_array_equal(saved.header.get_qform(), img.header.get_qform())


def test_save_label_rejects_wrong_shape_and_values(tmp_path):
  _, meta = nifti.load_image(_write(tmp_path / "a.nii", np.ones(NII_SHAPE, np.float32)))
  with pytest.raises(InputError, match="shape"):
    nifti.save_label(str(tmp_path / "p.nii"), np.zeros(NII_SHAPE, np.uint8), meta)
  with pytest.raises(InputError, match="uint8"):
    nifti.save_label(str(tmp_path / "p.nii"), np.full(meta.shape, 300), meta)


def test_load_channels_stacks_and_checks_geometry(tmp_path):
  a = np.full(NII_SHAPE, 1.0, np.float32)
  b = np.full(NII_SHAPE, 2.0, np.float32)
  paths = [_write(tmp_path / "c_0000.nii.gz", a), _write(tmp_path / "c_0001.nii.gz", b)]
  image, meta = nifti.load_channels(paths)
  assert image.shape == (8, 10, 12, 2) and meta.num_channels == 2
  assert image[..., 0].max() == 1.0 and image[..., 1].min() == 2.0

  moved = AFFINE.copy()
  moved[0, 3] += 0.5
  bad = _write(tmp_path / "c_0002.nii.gz", b, moved)
  with pytest.raises(InputError, match="c_0002.nii.gz.*affine"):
    nifti.load_channels([paths[0], bad])
  small = _write(tmp_path / "c_0003.nii.gz", np.ones((12, 10, 7), np.float32))
  with pytest.raises(InputError, match="c_0003.nii.gz.*shape"):
    nifti.load_channels([paths[0], small])


def _valid_nii(tmp_path, name="v.nii"):
  return _write(tmp_path / name, np.ones(NII_SHAPE, np.float32))


def _bad_not_nifti(tmp_path):
  path = tmp_path / "text.nii.gz"
  path.write_text("this is not an image")
  return str(path)


def _bad_wrong_extension(tmp_path):
  path = tmp_path / "img.mha"
  path.write_bytes(b"\0" * 400)
  return str(path)


def _bad_truncated(tmp_path):
  path = _write(tmp_path / "t.nii.gz",
                np.random.default_rng(3).normal(size=(40, 40, 40)).astype(np.float32))
  blob = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(blob[:len(blob) // 2])
  return path


def _bad_corrupt_gzip(tmp_path):
  path = _write(tmp_path / "c.nii.gz",
                np.random.default_rng(4).normal(size=(40, 40, 40)).astype(np.float32))
  blob = bytearray(pathlib.Path(path).read_bytes())
  for k in range(len(blob) // 2, len(blob) // 2 + 64):
    blob[k] ^= 0xFF
  pathlib.Path(path).write_bytes(bytes(blob))
  return path


def _bad_2d(tmp_path):
  return _write(tmp_path / "flat.nii", np.ones((12, 10), np.float32), np.eye(4))


def _bad_5d(tmp_path):
  return _write(tmp_path / "five.nii", np.ones((4, 4, 4, 2, 2), np.float32), np.eye(4))


def _bad_zero_size(tmp_path):
  path = _valid_nii(tmp_path, "zero.nii")
  _patch(path, _DIM_OFFSET, "8h", 3, 12, 10, 0, 1, 1, 1, 1)
  return path


def _bad_absurd_axis(tmp_path):
  path = _valid_nii(tmp_path, "huge.nii")
  _patch(path, _DIM_OFFSET, "8h", 3, 12, 10, 30000, 1, 1, 1, 1)
  return path


def _bad_absurd_total(tmp_path):
  path = _valid_nii(tmp_path, "total.nii")
  _patch(path, _DIM_OFFSET, "8h", 4, 2000, 2000, 2000, 2, 1, 1, 1)
  return path


def _bad_nan(tmp_path):
  data = np.ones(NII_SHAPE, np.float32)
  data[3, 4, 5] = np.nan
  data[0, 0, 0] = np.inf
  return _write(tmp_path / "nan.nii.gz", data)


def _bad_zero_spacing(tmp_path):
  path = _valid_nii(tmp_path, "sp0.nii")
  _patch(path, _PIXDIM_OFFSET, "4f", 1.0, 0.8, 0.0, 2.5)
  return path


def _bad_negative_spacing(tmp_path):
  path = _valid_nii(tmp_path, "spneg.nii")
  _patch(path, _PIXDIM_OFFSET, "4f", 1.0, 0.8, 1.0, -2.5)
  return path


def _bad_infinite_vox_offset(tmp_path):
  """Found by tests/test_fuzz_nifti.py: nibabel raised OverflowError."""
  path = _valid_nii(tmp_path, "offset.nii")
  _patch(path, 108, "f", float("inf"))
  return path


@pytest.mark.parametrize("make, match", [
    (_bad_not_nifti, "not a readable NIfTI"),
    (_bad_wrong_extension, "not a NIfTI file"),
    (_bad_truncated, "truncated or corrupt"),
    (_bad_corrupt_gzip, "truncated or corrupt"),
    (_bad_2d, "2D data"),
    (_bad_5d, "5D data"),
    (_bad_zero_size, "zero-size"),
    (_bad_absurd_axis, "limit"),
    (_bad_absurd_total, "limit"),
    (_bad_nan, "2 NaN/inf voxels"),
    (_bad_zero_spacing, "spacing"),
    (_bad_negative_spacing, "spacing"),
    (_bad_infinite_vox_offset, "not a readable NIfTI"),
])
def test_bad_files_raise_input_error_naming_the_file(tmp_path, make, match):
  path = make(tmp_path)
  with pytest.raises(InputError, match=match) as err:
    nifti.load_image(path)
  assert os.path.basename(path) in str(err.value)


def test_absurd_header_is_rejected_before_reading_data(tmp_path, monkeypatch):
  path = _bad_absurd_axis(tmp_path)
  monkeypatch.setattr(nifti, "_read_data", lambda *a: pytest.fail("read voxel data"))
  with pytest.raises(InputError, match="limit"):
    nifti.load_image(path)


@pytest.mark.parametrize("gz", [False, True])
def test_header_claiming_more_voxels_than_the_file_holds_is_refused_before_reading(
    tmp_path, monkeypatch, gz):
  """2048 x 1024 x 1000 float32 (8 GB) claimed by a 1 kB file: no allocation, one message."""
  blob = bytearray(nib.Nifti1Image(np.ones((6, 5, 4), np.float32), AFFINE).to_bytes())
  blob[_DIM_OFFSET:_DIM_OFFSET + 16] = struct.pack("<8h", 3, 2048, 1024, 1000, 1, 1, 1, 1)
  path = tmp_path / ("claims.nii.gz" if gz else "claims.nii")
  path.write_bytes(gzip.compress(bytes(blob)) if gz else bytes(blob))
  from nibabel import arrayproxy  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(arrayproxy.ArrayProxy, "_get_scaled",
                      lambda *a, **k: pytest.fail("read voxel data"))
  with pytest.raises(InputError, match=r"claims.nii.* header claims shape \(2048, 1024, 1000\) "
                     r"\(8388608000 bytes of voxel data\) but the file holds 480"):
    nifti.load_image(str(path))


def test_multi_member_gzip_still_loads(tmp_path):
  """The gzip trailer then does not give the total size: the stream is counted instead."""
  data = np.random.default_rng(1).normal(size=NII_SHAPE).astype(np.float32)
  blob = nib.Nifti1Image(data, AFFINE).to_bytes()
  path = tmp_path / "members.nii.gz"
  path.write_bytes(gzip.compress(blob[:1000]) + gzip.compress(blob[1000:]))
  image, _ = nifti.load_image(str(path))
  np.testing.assert_array_equal(image[..., 0], data.transpose(2, 1, 0))


def test_load_label_rejects_non_integer_values(tmp_path):
  data = np.zeros(NII_SHAPE, np.float32)
  data[1, 1, 1] = 0.5
  with pytest.raises(InputError, match="non-integer"):
    nifti.load_label(_write(tmp_path / "lab.nii.gz", data))


def test_gzip_module_agrees_the_truncated_file_is_bad(tmp_path):
  """Guards the fixture: the truncated file really is an incomplete gzip stream."""
  with pytest.raises(EOFError):
    with gzip.open(_bad_truncated(tmp_path)) as f:
      f.read()


def test_scaled_integer_images_load_as_float32_values(tmp_path):
  """CT files are often int16 with scl_slope/scl_inter; voxels are the scaled values."""
  raw = np.arange(np.prod(NII_SHAPE), dtype=np.int16).reshape(NII_SHAPE) - 500
  img = nib.Nifti1Image(raw, AFFINE)
  img.set_data_dtype(np.int16)
  img.header.set_slope_inter(0.5, -10.0)
  path = str(tmp_path / "ct.nii.gz")
  nib.save(img, path)
  image, _ = nifti.load_image(path)
  assert image.dtype == np.float32
  np.testing.assert_allclose(image[..., 0], (raw * 0.5 - 10.0).transpose(2, 1, 0))
