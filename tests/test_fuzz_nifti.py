"""Fuzzing the NIfTI reading path: mutated headers and bytes never escape as a crash.

Every mutated file must either load (a finite float32 image / int32 label whose
shape agrees with its geometry) or raise a U2NetError subclass naming the file
— never another exception, never a hang or a huge allocation. Hypothesis runs a
fixed, bounded set of examples (derandomized, no example database), so CI sees
the same cases every run; raise FUZZ_EXAMPLES to explore more locally.
"""

import gzip
import io
import os
import re
import struct

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from u2net_jax.data import nifti
from u2net_jax.errors import U2NetError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# NIfTI-1 header fields: (byte offset, struct format).
FIELDS = {
    "sizeof_hdr": (0, "i"), "dim_info": (39, "b"), "dim": (40, "8h"),
    "intent_code": (68, "h"), "datatype": (70, "h"), "bitpix": (72, "h"),
    "pixdim": (76, "8f"), "vox_offset": (108, "f"), "scl_slope": (112, "f"),
    "scl_inter": (116, "f"), "xyzt_units": (123, "b"), "qform_code": (252, "h"),
    "sform_code": (254, "h"), "quatern": (256, "6f"), "srow": (280, "12f"),
    "magic": (344, "4s"),
}
# Datatype codes nibabel knows (and some it does not).
DATATYPES = [2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304,
             0, 1, 3, 255, 4096, -1]


def _nifti_bytes(data: np.ndarray, affine=None) -> bytes:
  img = nib.Nifti1Image(data, np.diag([0.9, 1.1, 2.5, 1.0]) if affine is None else affine)
  return img.to_bytes()


def _bases():
  rng = np.random.default_rng(0)
  return {
      "image3d": _nifti_bytes(rng.normal(size=(6, 5, 4)).astype(np.float32)),
      "image4d": _nifti_bytes(rng.normal(size=(5, 4, 3, 2)).astype(np.float32)),
      "label": _nifti_bytes(rng.integers(0, 3, size=(6, 5, 4)).astype(np.int16)),
      "scaled": _nifti_bytes(rng.integers(-500, 500, size=(4, 4, 4)).astype(np.int16)),
  }


BASES = _bases()


def _value(fmt: str):
  """A strategy of values for one struct field (edge values included)."""
  kind, count = fmt[-1], int(fmt[:-1] or 1)
  if kind == "s":
    return st.binary(min_size=count, max_size=count).map(lambda b: (b,))
  if kind in "bhi":
    bits = {"b": 8, "h": 16, "i": 32}[kind]
    lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    edge = [v for v in (lo, hi, 0, 348, 2048, 2049, 30000) if lo <= v <= hi]
    one = st.one_of(st.integers(-2, 8), st.sampled_from(edge), st.integers(lo, hi))
  else:
    one = st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True),
                    st.sampled_from([float("inf"), float("-inf"), float("nan"), 0.0, -1.0, 1e38,
                                     352.0, 1e9]))
  return st.lists(one, min_size=count, max_size=count).map(tuple)


@st.composite
def header_edits(draw):
  edits = []
  for _ in range(draw(st.integers(1, 3))):
    name = draw(st.sampled_from(sorted(FIELDS)))
    offset, fmt = FIELDS[name]
    if name == "datatype":
      values = (draw(st.sampled_from(DATATYPES)),)
    else:
      values = draw(_value(fmt))
    edits.append((offset, struct.pack("<" + fmt, *values)))
  return edits


def _apply(blob: bytes, edits) -> bytes:
  out = bytearray(blob)
  for offset, raw in edits:
    out[offset:offset + len(raw)] = raw
  return bytes(out)


def _check(path: str) -> None:
  """Loads `path` every way the project does; only U2NetError may escape."""
  for load in (nifti.read_meta, nifti.load_image, nifti.load_label):
    try:
      result = load(path)
    except U2NetError as e:
      assert os.path.basename(path) in str(e), str(e)
      reason = re.sub(r"-?\d[\d.e+-]*", "#", str(e).split(": ", 1)[-1])
      event(f"{load.__name__}: {reason[:40]}")
      continue
    event(f"{load.__name__}: loaded")
    if load is nifti.read_meta:
      continue
    array, meta = result
    assert array.shape[:3] == meta.shape
    if load is nifti.load_image:
      assert array.dtype == np.float32 and np.all(np.isfinite(array))
    else:
      assert array.dtype == np.int32 and (array.size == 0 or array.min() >= 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return tmp_path_factory.mktemp("fuzz")


def _write(folder, name: str, blob: bytes, gz: bool) -> str:
  path = os.path.join(str(folder), name + (".nii.gz" if gz else ".nii"))
  if gz:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
      f.write(blob)
    blob = buf.getvalue()
  with open(path, "wb") as f:
    f.write(blob)
  return path


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), edits=header_edits(), gz=st.booleans())
def test_mutated_headers_load_or_raise_a_project_error(folder, base, edits, gz):
  _check(_write(folder, "hdr", _apply(BASES[base], edits), gz))


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), gz=st.booleans(), data=st.data())
def test_corrupted_and_truncated_files_load_or_raise_a_project_error(folder, base, gz, data):
  blob = BASES[base]
  if gz:  # Corrupt the compressed stream itself.
    blob = gzip.compress(blob, mtime=0)
  flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)),
                             max_size=8))
  out = bytearray(blob)
  for pos, mask in flips:
    out[pos] ^= mask
  cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
  if cut is not None:
    out = out[:cut]
  path = os.path.join(str(folder), "raw" + (".nii.gz" if gz else ".nii"))
  with open(path, "wb") as f:
    f.write(bytes(out))
  _check(path)
