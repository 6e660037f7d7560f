"""u2net_jax.io: a write either lands whole or leaves the old file untouched."""

import json
import os

import pytest

from u2net_jax import io


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "sub" / "summary.json")
  io.write_json(path, {"a": 1})
  io.write_json(path, {"a": 2})
  assert json.loads(open(path).read()) == {"a": 2}
  assert os.listdir(tmp_path / "sub") == ["summary.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "table.json")
  io.write_json(path, {"ok": True})
  with pytest.raises(TypeError):
    io.write_json(path, {"bad": object()})  # not JSON-serializable
  with pytest.raises(RuntimeError):
    with io.atomic_path(path) as tmp:
      with open(tmp, "w") as f:
        f.write("{half")
      raise RuntimeError("interrupted")
  assert json.loads(open(path).read()) == {"ok": True}
  assert os.listdir(tmp_path) == ["table.json"]


def test_the_temporary_keeps_the_extension(tmp_path):
  for name in ("case.nii.gz", "curves.png", "README"):
    with io.atomic_path(str(tmp_path / name)) as tmp:
      assert tmp.endswith(name) and tmp != str(tmp_path / name)
      open(tmp, "w").close()
  assert sorted(os.listdir(tmp_path)) == ["README", "case.nii.gz", "curves.png"]
