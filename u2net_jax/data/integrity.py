"""Built datasets carry the size and sha256 of every file; reads check them.

A build (`tfds_builders/common.py`) writes `integrity.json` into the dataset
folder before moving it into place: format, the command that rebuilds it, and
{file name: {size, sha256}} of every other file (array_record shards,
dataset_info.json, features.json, metadata.json). `verify` then finds a file
truncated, overwritten or deleted after the build and raises one `DataError`
naming it and the rebuild command — instead of TFDS failing deep inside a
read, or a silently different example.

Cost: sizes are compared on every check (one stat per file); a file's sha256
is computed once per process for each (size, mtime, inode) it has, so a
training run hashes each shard once (at about 1 GB/s), when it reads it anyway.
Datasets built before this file existed have no `integrity.json` and are read
unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from typing import Callable

from u2net_jax import io
from u2net_jax.errors import DataError

FILE = "integrity.json"
FORMAT = 1
_CHUNK = 1 << 20
# (real path, size, mtime_ns, inode) -> sha256 hex digest: hash once per process.
_DIGESTS: dict[tuple, str] = {}


def _sha256(path: str) -> str:
  st = os.stat(path)
  key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
  if key not in _DIGESTS:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(_CHUNK), b""):
        h.update(block)
    _DIGESTS[key] = h.hexdigest()
  return _DIGESTS[key]


def record(dataset_dir: str, *, rebuild: str = "") -> str:
  """Writes `<dataset_dir>/integrity.json` for the files now in it; returns its path.

  Args:
    rebuild: the command line that rebuilds this dataset, less `--data_dir`
      (added from where the dataset is when read: it may have been moved);
      '' if none does: the message then says to delete the folder.
  """
  files = {}
  for name in sorted(os.listdir(dataset_dir)):
    path = os.path.join(dataset_dir, name)
    if name != FILE and os.path.isfile(path):
      files[name] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  body = {"format": FORMAT, "algorithm": "sha256", "rebuild": rebuild, "files": files}
  return io.write_json(os.path.join(dataset_dir, FILE), body, sort_keys=True)


def _hint(dataset_dir: str, rebuild: str) -> str:
  if rebuild:
    # <data_dir>/<builder>/<config>/<version>
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(dataset_dir))))
    return f"rebuild with: {rebuild} --data_dir {shlex.quote(data_dir)}"
  return (f"delete {dataset_dir} and run again (run.py rebuilds a missing dataset), or rebuild "
          "it with python -m tfds_builders build ... --overwrite")


def _load(dataset_dir: str) -> dict | None:
  path = os.path.join(dataset_dir, FILE)
  if not os.path.exists(path):
    return None  # Built before checksums were recorded: nothing to check against.
  try:
    with open(path, encoding="utf-8") as f:
      body = json.load(f)
    files = body["files"]
    if not isinstance(files, dict) or body.get("format") != FORMAT:
      raise ValueError(f"format {body.get('format')!r}")
    for entry in files.values():
      int(entry["size"]), str(entry["sha256"])
    return body
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DataError(f"{path} is unreadable ({type(e).__name__}: {e}), so the dataset cannot "
                    f"be checked; {_hint(dataset_dir, '')}") from None


def verify(dataset_dir: str, *, hash_if: Callable[[str], bool] = lambda name: True) -> None:
  """Checks the dataset's files against its `integrity.json` (none: no check).

  Every recorded file must exist with its recorded size; the files whose name
  `hash_if` accepts must also have their recorded sha256.
  Raises:
    DataError: "<file> changed since it was built (...); rebuild with: ...".
  """
  body = _load(dataset_dir)
  if body is None:
    return
  hint = _hint(dataset_dir, str(body.get("rebuild") or ""))
  for name, entry in sorted(body["files"].items()):
    path = os.path.join(dataset_dir, name)
    if not os.path.isfile(path):
      raise DataError(f"{path} is missing: it was written by the build of {dataset_dir}; {hint}")
    size = os.path.getsize(path)
    if size != int(entry["size"]):
      raise DataError(f"{path} changed since it was built ({size} bytes, {int(entry['size'])} "
                      f"when built: truncated or overwritten); {hint}")
    if hash_if(name) and _sha256(path) != entry["sha256"]:
      raise DataError(f"{path} changed since it was built (same size, other sha256: its "
                      f"content was modified); {hint}")
