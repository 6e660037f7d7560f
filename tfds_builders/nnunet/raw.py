"""nnU-Net v2 raw dataset folders: names, lookup and parsing (no TFDS import).

A folder `DatasetXXX_Name/` holds `dataset.json`, `imagesTr/CASE_0000<ending>`,
`CASE_0001<ending>`, ... (one file per channel), `labelsTr/CASE<ending>` and
optionally `imagesTs/`. dataset.json (nnU-Net v2):

  {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
   "numTraining": 131, "file_ending": ".nii.gz", "name": ...}

Names. The TFDS config is the folder name in lower case
(`dataset004_hippocampus`, `_fold2`, `_official`, ... appended for other
settings, as MSD variants); the domain — the key of the model's per-domain
weights — is the part after `DatasetXXX_`, in snake case (`Hippocampus` →
`hippocampus`, `BrainTumour` → `brain_tumour`; `datasetXXX` if that is not a
valid name). Both come from the folder name alone, so a built dataset is found
without its raw folder.

Intensities follow nnU-Net's rule on channel names: "CT" (any case) → CT
normalization, every other name → per-image z-score (the MSD builder's MRI
path). Channel names nnU-Net maps to other schemes (noNorm, rescale_to_0_1,
rgb_to_0_1), region-based labels, the ignore label and explicit file lists
(`dataset`) are refused, each with a `DataError` naming dataset.json.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

from tfds_builders import volumes
from u2net_jax.data import nifti
from u2net_jax.errors import ConfigError, DataError, InputError

BUILDER = "nnunet"
VERSION = "1.0.0"
FILE_ENDINGS = volumes.NIFTI_ENDINGS
_DATASET_RE = re.compile(r"^Dataset(?P<id>\d+)_(?P<name>.+)$")
_DOMAIN_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Channel names nnU-Net v2 normalizes otherwise than CT / z-score (lower case).
_OTHER_SCHEMES = {"nonorm": "NoNormalization", "rescale_to_0_1": "RescaleTo01Normalization",
                  "rgb_to_0_1": "RGBTo01Normalization"}


@dataclasses.dataclass
class Task(volumes.Task):
  """A parsed nnU-Net folder (`volumes.Task` plus its `file_ending`)."""
  file_ending: str = ".nii.gz"


# ---------------------------------------------------------------- names


def _base(folder: str) -> str:
  return os.path.basename(os.path.normpath(folder))


def domain_name(folder: str) -> str:
  """The domain of `folder`: Dataset004_Hippocampus → 'hippocampus'."""
  base = _base(folder)
  m = _DATASET_RE.match(base)
  name = m["name"] if m else base
  snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
  snake = re.sub(r"[^a-z0-9]+", "_", snake).strip("_")
  if _DOMAIN_RE.match(snake):
    return snake
  return f"dataset{m['id']}" if m else "dataset_" + snake


def config_name(folder: str, *, fold: int = 0, num_folds: int = 5, seed: int = 0,
                normalization: str = "nnunet", merge_labels=(), target_spacing=None) -> str:
  """The TFDS config of `folder` with these settings: 'dataset004_hippocampus[_fold2...]'."""
  base = re.sub(r"[^a-z0-9]+", "_", _base(folder).lower()).strip("_")
  merge = tuple((int(a), int(b)) for a, b in merge_labels)
  spacing = None if target_spacing is None else tuple(float(s) for s in target_spacing)
  return "_".join([base] + volumes.variant_parts(
      fold=fold, num_folds=num_folds, seed=seed, normalization=normalization, merge=merge,
      base_merge=(), spacing=spacing, base_spacing=None))


def matches(folder: str, ref: str) -> bool:
  """Whether `ref` names `folder`: its folder name (any case), config, domain or dataset id."""
  base = _base(folder)
  r = ref.strip().lower()
  m = _DATASET_RE.match(base)
  ids = {f"dataset{m['id']}", str(int(m["id"])), m["id"]} if m else set()
  return r in {base.lower(), config_name(folder), domain_name(folder)} | ids


def is_dataset(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, "dataset.json"))


def list_datasets(root: str) -> list[str]:
  """`root` itself if it is a dataset folder, else the dataset folders in it (sorted)."""
  if not os.path.isdir(root):
    raise DataError(f"{root}: folder not found (expected an nnU-Net DatasetXXX_Name folder "
                    "or the nnUNet_raw folder holding them).")
  if is_dataset(root):
    return [os.path.abspath(root)]
  found = sorted(os.path.abspath(os.path.join(root, n)) for n in os.listdir(root)
                 if is_dataset(os.path.join(root, n)))
  if not found:
    raise DataError(f"{root}: no dataset.json in it, and no DatasetXXX_Name folder holding one.")
  return found


def find(ref: str, manual_dir: str = "") -> str:
  """The absolute dataset folder that `ref` names.

  Args:
    ref: an absolute path; a path relative to `manual_dir` (or, without one,
      to the current folder); or a name `matches` accepts (`Dataset004_Hippocampus`,
      `hippocampus`, `4`) of `manual_dir` itself or of a dataset folder in it.
    manual_dir: a DatasetXXX_Name folder or the nnUNet_raw folder holding them.
  An absolute path, or a name of `manual_dir` itself, needs no files: the built
  dataset of a folder named so is found even after the folder is gone.
  Raises:
    ConfigError: nothing (or more than one folder) matches.
  """
  ref = ref.strip()
  if os.path.isabs(ref):
    return os.path.normpath(ref)
  if not manual_dir:
    if os.path.isdir(ref):
      return os.path.abspath(ref)
    raise ConfigError(f"nnU-Net dataset {ref!r}: no such folder here; give its absolute path "
                      "or set config.data.manual_dir (--manual_dir) to the DatasetXXX_Name folder "
                      "or to the nnUNet_raw folder holding it.")
  joined = os.path.join(manual_dir, ref)
  if os.path.isdir(joined):
    return os.path.abspath(joined)
  # manual_dir is the dataset folder itself (or was: name matching needs no files).
  if matches(manual_dir, ref):
    return os.path.abspath(manual_dir)
  if not os.path.isdir(manual_dir) or is_dataset(manual_dir):
    raise ConfigError(f"nnU-Net dataset {ref!r}: {manual_dir} is neither that dataset folder "
                      "nor a folder holding it.")
  names = [n for n in sorted(os.listdir(manual_dir)) if is_dataset(os.path.join(manual_dir, n))]
  hits = [n for n in names if matches(n, ref)]
  if len(hits) == 1:
    return os.path.abspath(os.path.join(manual_dir, hits[0]))
  if hits:
    raise ConfigError(f"nnU-Net dataset {ref!r} is ambiguous in {manual_dir}: {hits}; name the "
                      "folder.")
  raise ConfigError(f"nnU-Net dataset {ref!r}: no such dataset folder in {manual_dir}; it holds "
                    f"{names}.")


# --------------------------------------------------------------- parsing


def _channel_names(meta, json_path: str) -> list[str]:
  ch = meta.get("channel_names")
  if ch is None and "modality" in meta:
    raise DataError(f"{json_path}: has 'modality' but no 'channel_names': an MSD / nnU-Net v1 "
                    "dataset.json. Build it with the msd builder, or convert it with "
                    "nnUNetv2_convert_old_nnUNet_dataset.")
  if not isinstance(ch, dict) or not ch:
    raise DataError(f"{json_path}: needs a non-empty 'channel_names' object, e.g. "
                    "{\"0\": \"CT\"}.")
  if sorted(ch) != sorted(str(c) for c in range(len(ch))):
    raise DataError(f"{json_path}: 'channel_names' keys {sorted(ch)} must be "
                    f"\"0\"..\"{len(ch) - 1}\".")
  names = [str(ch[str(c)]) for c in range(len(ch))]
  for n in names:
    if n.lower() in _OTHER_SCHEMES:
      raise DataError(f"{json_path}: channel name {n!r} selects nnU-Net's "
                      f"{_OTHER_SCHEMES[n.lower()]}, which this project does not implement "
                      "(\"CT\" → CT normalization, any other name → z-score).")
  return names


def _labels(meta, json_path: str) -> dict[int, str]:
  """{label value: name} from dataset.json's `labels` {name: value}."""
  labels = meta.get("labels")
  if "regions_class_order" in meta or (isinstance(labels, dict) and any(
      isinstance(v, (list, tuple)) for v in labels.values())):
    raise DataError(f"{json_path}: region-based labels ('regions_class_order', or a label "
                    "whose value is a list) are not supported: list one integer value per "
                    "class.")
  if not isinstance(labels, dict) or not labels or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
    raise DataError(f"{json_path}: 'labels' must map class names to integer values, e.g. "
                    f"{{\"background\": 0, \"liver\": 1}}, got {labels!r}.")
  if "ignore" in labels:
    raise DataError(f"{json_path}: the 'ignore' label (partial annotations) is not supported.")
  by_value = {}
  for name, v in labels.items():
    if v in by_value:
      raise DataError(f"{json_path}: labels {by_value[v]!r} and {name!r} share value {v}.")
    by_value[v] = str(name)
  if 0 not in by_value or len(by_value) < 2 or min(by_value) < 0 or max(by_value) > 255:
    raise DataError(f"{json_path}: 'labels' {labels!r} needs background 0 and at least one "
                    "other class, values in [0, 255].")
  return by_value


def read_header(folder: str) -> tuple[str, dict, list[str], dict[int, str], str]:
  """(json path, dataset.json, channel names, {label value: name}, file ending), checked."""
  if not os.path.isdir(folder):
    raise DataError(f"{folder}: nnU-Net dataset folder not found.")
  json_path = os.path.join(folder, "dataset.json")
  meta = volumes.load_json(json_path)
  if not isinstance(meta, dict):
    raise DataError(f"{json_path}: must hold a JSON object.")
  if "dataset" in meta:
    raise DataError(f"{json_path}: explicit file lists ('dataset') are not supported; put the "
                    "files in imagesTr/ and labelsTr/.")
  channels = _channel_names(meta, json_path)
  labels = _labels(meta, json_path)
  ending = meta.get("file_ending")
  if ending not in FILE_ENDINGS:
    raise DataError(f"{json_path}: file_ending {ending!r} is not supported; use one of "
                    f"{list(FILE_ENDINGS)}.")
  return json_path, meta, channels, labels, ending


def _files(folder: str, ending: str) -> list[str]:
  if not os.path.isdir(folder):
    return []
  return sorted(n for n in os.listdir(folder) if n.endswith(ending) and not nifti.is_junk_path(n))


def _image_cases(folder: str, ending: str, num_channels: int, json_path: str,
                 label_ids=()) -> dict[str, tuple[str, ...]]:
  """{case id: its channel files} of an images folder; every channel present."""
  pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
  channels: dict[str, set[int]] = {}
  for name in _files(folder, ending):
    m = pattern.match(name)
    if not m:
      raise DataError(f"{os.path.join(folder, name)}: not named CASE_XXXX{ending} (an nnU-Net "
                      "channel file).")
    c = int(m["channel"])
    if c >= num_channels:
      raise DataError(f"{os.path.join(folder, name)}: channel {c}, but {json_path} lists "
                      f"{num_channels} channel_names.")
    channels.setdefault(m["case"], set()).add(c)
  out = {}
  for case in sorted(set(channels) | set(label_ids)):
    paths = tuple(os.path.join(folder, f"{case}_{c:04d}{ending}") for c in range(num_channels))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise DataError(f"{missing[0]}: channel file of case {case!r} not found ({json_path} "
                      f"lists {num_channels} channel_names).")
    out[case] = paths
  return out


def read(folder: str, *, num_folds: int = 5) -> Task:
  """Parses and checks the dataset folder: dataset.json, its cases and their files."""
  json_path, meta, channels, labels, ending = read_header(folder)
  is_ct = [c.upper() == "CT" for c in channels]
  if any(is_ct) and not all(is_ct):
    raise DataError(f"{json_path}: mixing CT and non-CT channels {channels} is not supported.")
  images_tr = os.path.join(folder, "imagesTr")
  labels_tr = os.path.join(folder, "labelsTr")
  label_ids = [n[:-len(ending)] for n in _files(labels_tr, ending)]
  images = _image_cases(images_tr, ending, len(channels), json_path, label_ids)
  if not images:
    raise DataError(f"{images_tr}: no training images ending in {ending!r} (missing or empty "
                    "imagesTr, or another file_ending?).")
  training = []
  for case, paths in images.items():
    label = os.path.join(labels_tr, f"{case}{ending}")
    if not os.path.isfile(label):
      raise DataError(f"{label}: label file of training case {case!r} not found.")
    training.append(volumes.Case(case, paths, label))
  num = meta.get("numTraining")
  if not isinstance(num, int) or isinstance(num, bool) or num != len(training):
    raise DataError(f"{json_path}: numTraining is {num!r}, but imagesTr/labelsTr hold "
                    f"{len(training)} training cases.")
  if len(training) < num_folds:
    raise DataError(f"{json_path}: {len(training)} training cases, fewer than num_folds="
                    f"{num_folds}.")
  test = [volumes.Case(case, paths, None) for case, paths in _image_cases(
      os.path.join(folder, "imagesTs"), ending, len(channels), json_path).items()]
  return Task(folder=folder, json_path=json_path, name=str(meta.get("name", _base(folder))),
              channel_names=channels, modality="CT" if all(is_ct) else "MRI",
              label_names=labels, training=training, test=test,
              channel_key="channel_names", file_ending=ending)


def _stamp(folder: str) -> tuple:
  """What a cached parse of `folder` depends on (dataset.json and the case folders)."""
  out = []
  for name in ("dataset.json", "imagesTr", "labelsTr"):
    try:
      st = os.stat(os.path.join(folder, name))
      out.append((st.st_mtime_ns, st.st_size))
    except OSError:
      out.append(None)
  return tuple(out)


def domain_fields(folder: str) -> dict:
  """channel_names, class_names, modality and spacing (mm, z/y/x: the training cases'
  median, the build's target grid) of the domain `folder` holds: dataset.json and
  the image headers, no voxel data (cached per folder state)."""
  return dict(_domain_fields(os.path.abspath(folder), _stamp(folder)))


@functools.lru_cache(maxsize=32)
def _domain_fields(folder: str, stamp) -> tuple:
  del stamp  # Only part of the cache key.
  task = read(folder, num_folds=1)
  metas = []
  for case in task.training:
    try:
      metas.append(nifti.read_meta(case.image_paths[0]))
    except InputError as e:
      raise DataError(f"Case {case.case_id!r}: {e}") from e
  _, class_names = volumes.label_map(task, ())
  return (("channel_names", tuple(task.channel_names)), ("class_names", tuple(class_names)),
          ("modality", task.modality), ("spacing", volumes.median_spacing(metas)))
