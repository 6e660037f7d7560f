"""Finding and checking the scans to predict, and where their outputs go.

`--input` may be
  * one NIfTI file: a 3D volume, or 4D with the channels on its last axis;
  * nnU-Net channel files `CASE_0000.nii.gz`, `CASE_0001.nii.gz`, ... (name
    the `_0000` file: its siblings are found);
  * a folder of either kind: files named `CASE_XXXX.nii[.gz]` whose group has
    a `_0000` member are one case's channels, every other NIfTI file is a
    case; other files (JSON, text, ...) are ignored.
Cases are checked from their headers alone (`check_case`) before any voxel is
read or anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

from u2net_jax.data import nifti
from u2net_jax.errors import InputError

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")


@dataclasses.dataclass(frozen=True)
class Case:
  """One scan to predict.

  Attributes:
    case_id: output name stem (the file name without extension and without
      the `_0000` channel suffix).
    paths: one 3D/4D file, or the channel files in channel order.
  """
  case_id: str
  paths: tuple[str, ...]


def _stem(path: str) -> str:
  name = os.path.basename(path)
  for ext in (".nii.gz", ".nii"):
    if name.endswith(ext):
      return name[:-len(ext)]
  return name


def _channel_group(folder: str, names: Sequence[str], case: str) -> tuple[str, ...]:
  """Paths of `case`'s channel files in `names`, checked to be _0000 ... _{n-1}."""
  found = {}
  for n in names:
    m = _CHANNEL_FILE.match(n)
    if m and m.group("case") == case:
      ch = int(m.group("channel"))
      if ch in found:
        raise InputError(f"{os.path.join(folder, n)}: channel {ch} of case {case!r} is given "
                         f"twice ({found[ch]} and {n}).")
      found[ch] = n
  missing = [i for i in range(max(found) + 1) if i not in found]
  if missing:
    raise InputError(f"{os.path.join(folder, found[0])}: channel file {case}_{missing[0]:04d} "
                     f"is missing (found channels {sorted(found)}).")
  return tuple(os.path.join(folder, found[i]) for i in range(len(found)))


def _nifti_names(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder)
                if nifti.is_nifti_path(n) and not nifti.is_junk_path(n)
                and os.path.isfile(os.path.join(folder, n)))


def discover(path: str) -> list[Case]:
  """The cases under `path` (a file or a folder), sorted by case id.

  Raises:
    InputError if `path` does not exist, is not a NIfTI file, or is a folder
    without NIfTI files or with an incomplete set of channel files.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    names = _nifti_names(path)
    if not names:
      raise InputError(f"{path}: no NIfTI files (.nii or .nii.gz) in this folder.")
    groups = {m.group("case") for m in map(_CHANNEL_FILE.match, names)
              if m and int(m.group("channel")) == 0}
    cases, seen = [], set()
    for n in names:
      m = _CHANNEL_FILE.match(n)
      if m and m.group("case") in groups:
        case = m.group("case")
        if case not in seen:
          seen.add(case)
          cases.append(Case(case, _channel_group(path, names, case)))
      else:
        cases.append(Case(_stem(n), (os.path.join(path, n),)))
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
      raise InputError(f"{path}: several files give case {dup[0]!r} (e.g. both .nii and "
                       ".nii.gz); keep one.")
    return sorted(cases, key=lambda c: c.case_id)
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file or folder.")
  if not nifti.is_nifti_path(path):
    raise InputError(f"{path}: not a NIfTI image (expected a .nii or .nii.gz file, or a "
                     "folder of them).")
  m = _CHANNEL_FILE.match(os.path.basename(path))
  if m and int(m.group("channel")) == 0:
    folder = os.path.dirname(path) or "."
    return [Case(m.group("case"), _channel_group(folder, _nifti_names(folder), m.group("case")))]
  return [Case(_stem(path), (path,))]


def check_case(case: Case, plan) -> nifti.NiftiMeta:
  """Checks a case's headers against a domain plan; returns its geometry.

  Args:
    case: from `discover`.
    plan: the domain's `plans.DomainPlan` (channel names, name).
  Returns:
    The first file's `NiftiMeta`, with `num_channels` of the whole case.
  Raises:
    InputError naming the file: unreadable or not NIfTI, not 3D/4D, a 2D
    image, channel files on different grids, or the wrong channel count.
  """
  metas = [nifti.read_meta(p) for p in case.paths]
  for m in metas:
    if min(m.shape) < 2:
      raise InputError(f"{m.path}: a 2D image (shape {m.shape[::-1]}); domain {plan.name!r} "
                       "segments 3D volumes.")
    nifti.check_same_geometry(metas[0], m)
  channels = sum(m.num_channels for m in metas)
  if channels != plan.in_channels:
    names = ", ".join(plan.channel_names)
    raise InputError(
        f"{case.paths[0]}: {channels} channel(s), but domain {plan.name!r} expects "
        f"{plan.in_channels} ({names}): give one 4D file with the channels on its last "
        f"axis, or channel files {case.case_id}_0000.nii.gz, {case.case_id}_0001.nii.gz, ...")
  return dataclasses.replace(metas[0], num_channels=channels)


def load(case: Case):
  """(image float32 (D, H, W, C), meta) of a case."""
  if len(case.paths) == 1:
    return nifti.load_image(case.paths[0])
  return nifti.load_channels(case.paths)


def probabilities_path(label_path: str) -> str:
  """`x.nii.gz` -> `x_probabilities.nii.gz` (same folder)."""
  return os.path.join(os.path.dirname(label_path), _stem(label_path) + "_probabilities.nii.gz")


def output_paths(cases: Sequence[Case], input_path: str, output: str) -> list[str]:
  """The label file of each case.

  A single input file may be written to a file (`--output` ending in .nii or
  .nii.gz); otherwise `--output` is a folder and case c goes to
  `<output>/<c>.nii.gz`. Nothing is created here.
  """
  if not output:
    raise InputError("--output is required: a .nii.gz file or a folder.")
  output = os.fspath(output)
  if nifti.is_nifti_path(output):
    if len(cases) != 1 or os.path.isdir(input_path):
      raise InputError(f"--output {output} is a file name, but --input {input_path} holds "
                       f"{len(cases)} case(s): give a folder.")
    if os.path.isdir(output):
      raise InputError(f"--output {output} is an existing folder, not a file name.")
    paths = [output]
  else:
    if os.path.exists(output) and not os.path.isdir(output):
      raise InputError(f"--output {output} exists and is not a folder.")
    paths = [os.path.join(output, f"{c.case_id}.nii.gz") for c in cases]
  inputs = {os.path.realpath(p) for c in cases for p in c.paths}
  for p in paths:
    if os.path.realpath(p) in inputs or os.path.realpath(probabilities_path(p)) in inputs:
      raise InputError(f"--output would overwrite the input {p}: choose another output.")
  return paths
