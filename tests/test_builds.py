"""tfds_builders/common.build_atomically under concurrency: one build, every caller served."""

import json
import os
import threading
import time

from tfds_builders import common


class _SlowBuilder:
  """Stands in for a TFDS builder: writes a tiny dataset slowly, counts its builds."""

  builds = 0
  lock = threading.Lock()

  def __init__(self, data_dir):
    self.data_dir = os.path.join(data_dir, "fake", "cfg", "1.0.0")

  def download_and_prepare(self, download_config=None):
    del download_config
    with _SlowBuilder.lock:
      _SlowBuilder.builds += 1
    os.makedirs(self.data_dir)
    time.sleep(0.5)  # long enough for the other callers to find it missing
    for name in ("dataset_info.json", "features.json"):
      with open(os.path.join(self.data_dir, name), "w") as f:
        json.dump({"name": name}, f)


def test_concurrent_first_builds_build_once_and_all_get_the_dataset(tmp_path):
  # Two jobs (or two test workers) that find a dataset missing at the same
  # time: without the build lock both build, and the second one's swap deletes
  # the folder the first is already reading.
  _SlowBuilder.builds = 0
  results, errors = [], []

  def build():
    try:
      results.append(common.build_atomically(_SlowBuilder, str(tmp_path)))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=build) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  assert not errors and len(results) == 3
  assert _SlowBuilder.builds == 1
  final = str(tmp_path / "fake" / "cfg" / "1.0.0")
  assert set(results) == {final}
  assert sorted(os.listdir(final)) == ["dataset_info.json", "features.json", "integrity.json"]
  # No temporary folder is left, and the lock file is hidden beside the version.
  assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-build")] == []
  assert sorted(os.listdir(tmp_path / "fake" / "cfg")) == [".1.0.0.build-lock", "1.0.0"]


class _FailsFirst(_SlowBuilder):
  """The first build fails half-way (bad input found late); later ones succeed."""

  def download_and_prepare(self, download_config=None):
    with _SlowBuilder.lock:
      _SlowBuilder.builds += 1
      first = _SlowBuilder.builds == 1
    if first:
      os.makedirs(self.data_dir)
      time.sleep(0.5)
      raise ValueError("bad case")
    super().download_and_prepare(download_config)
    with _SlowBuilder.lock:
      _SlowBuilder.builds -= 1  # counted above already


def test_a_failed_build_leaves_nothing_and_a_waiting_caller_builds_it(tmp_path):
  _SlowBuilder.builds = 0
  results, errors = [], []

  def build():
    try:
      results.append(common.build_atomically(_FailsFirst, str(tmp_path)))
    except ValueError as e:
      errors.append(e)

  first = threading.Thread(target=build)
  first.start()
  time.sleep(0.2)  # the second caller waits on the first's lock
  second = threading.Thread(target=build)
  second.start()
  first.join(timeout=60)
  second.join(timeout=60)
  assert len(errors) == 1 and len(results) == 1 and _SlowBuilder.builds == 2
  assert sorted(os.listdir(tmp_path / "fake" / "cfg")) == [".1.0.0.build-lock", "1.0.0"]


def test_a_failed_build_alone_writes_nothing(tmp_path):
  _SlowBuilder.builds = 0
  try:
    common.build_atomically(_FailsFirst, str(tmp_path))
  except ValueError:
    pass
  assert os.listdir(tmp_path) == []


def test_a_relative_source_folder_without_manual_dir_is_a_clear_error():
  import types  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from tfds_builders import volumes  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import DataError  # pylint: disable=g-import-not-at-top

  class NoManualDir:
    @property
    def manual_dir(self):
      raise AssertionError("manual_dir not set")

  builder = types.SimpleNamespace(builder_config=types.SimpleNamespace(
      name="heart", task_folder="Task02_Heart"))
  with pytest.raises(DataError, match=r"MSD config 'heart': task folder 'Task02_Heart' is "
                                      r"relative, but the manual_dir is missing"):
    volumes.source_folder(builder, NoManualDir(), "MSD config {name}: task folder")
  builder.builder_config.task_folder = "/abs/Task02_Heart"
  assert volumes.source_folder(builder, NoManualDir(), "x") == "/abs/Task02_Heart"
