"""experiments/colab_eval.ipynb: committed without outputs, and runs headless on a smoke workdir."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

import smoke_workdir

# End to end (trains or runs run.py): `pytest -m 'not slow'` skips the module.
pytestmark = pytest.mark.slow

NOTEBOOK = os.path.join(smoke_workdir.ROOT, "experiments", "colab_eval.ipynb")


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
  assert "google.colab" in code[0].source and "pip" in code[0].source


def _run(monkeypatch, **params):
  for k, v in params.items():
    monkeypatch.setenv(f"U2NET_{k}", str(v))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
  images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
  return text, images


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return smoke_workdir.trained(tmp_path_factory)[0]


def test_notebook_evaluates_a_workdir(workdir, monkeypatch):
  text, images = _run(monkeypatch, WORKDIR=workdir)
  assert "heart: 2 validation case(s)" in text and "prostate: 2 validation case(s)" in text
  for row in ("left_atrium", "peripheral_zone", "transition_zone", "mean"):
    assert row in text
  assert images >= 1 + 2 * 2  # per-case Dice + two overlays per domain


def test_notebook_evaluates_an_export(tmp_path_factory, monkeypatch):
  export_dir = os.path.join(smoke_workdir.exported(tmp_path_factory), "export", "prostate")
  text, images = _run(monkeypatch, WORKDIR=export_dir, MAX_CASES=1)
  assert "prostate: 1 validation case(s)" in text and "heart" not in text
  assert images >= 2
