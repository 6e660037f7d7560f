"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every JSON/text file the project writes (config.json, summary.json,
preprocessing.json, results tables, ...) goes through `atomic_path`: the
content is written to a unique temporary file in the same folder (same
filesystem, so the final `os.replace` is atomic on POSIX) and renamed over
the target only when the write finished; on an error the temporary file is
removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path` (same extension); renames it onto `path` on success.

  The extension is kept (`.nii.gz` as one) so writers that pick a format
  from the file name (nibabel, matplotlib) write the right one.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  name = os.path.basename(path)
  ext = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
  stem = name[:len(name) - len(ext)] if ext else name
  tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex[:8]}-{stem}{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically; returns `path`."""
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
  return path


def write_json(path: str, obj, *, indent: int = 2, **kw) -> str:
  """Writes `obj` as JSON to `path` atomically; returns `path`."""
  return write_text(path, json.dumps(obj, indent=indent, **kw))
