"""The package layout is the architecture: the dependency rule of u2net_jax/__init__.py holds.

Checked on the source (every `import`, at module level or inside a function):
no import cycle between modules; core modules import only core; `data` and
`model` import only core and themselves; `infer` and `train` never import
`run.py`-level modules. Loading an export never imports Flax or the model.
"""

import ast
import os
import shutil
import subprocess
import sys

import pytest

import smoke_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "u2net_jax")
CORE = {"u2net_jax", "u2net_jax.errors", "u2net_jax.io", "u2net_jax.domains",
        "u2net_jax.logging_utils", "u2net_jax.metrics", "u2net_jax.options",
        "u2net_jax.config", "u2net_jax.typed_config", "u2net_jax.host_memory"}
# Above data/model, below train/infer: reads and checks configs.
CONFIG = {"u2net_jax.config_utils"}
# The run.py level: may import anything.
APP = {"u2net_jax.param_table"}


def _modules() -> dict[str, str]:
  """{dotted module name: file path} of every module of u2net_jax."""
  out = {}
  for folder, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
  return out


def _imports(path: str, modules) -> set[str]:
  """The u2net_jax modules `path` imports (a package import counts as its __init__)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    found |= {n for n in names if n in modules}
  return found


GRAPH = {m: _imports(p, _modules()) - {m} for m, p in _modules().items()}


def _layer(m: str) -> str:
  if m in CORE:
    return "core"
  if m in CONFIG:
    return "config"
  if m in APP:
    return "app"
  return m.split(".")[1]


def test_there_is_no_import_cycle():
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(GRAPH[m]):
      if state.get(n) == "open":
        cycle = stack[stack.index(n):] + [n]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(GRAPH):
    if m not in state:
      visit(m)


@pytest.mark.parametrize("layer,allowed", [
    ("core", {"core"}),
    ("data", {"core", "data"}),
    ("model", {"core", "model"}),
    ("config", {"core", "data", "model", "infer"}),
    ("infer", {"core", "config", "data", "model", "infer", "train"}),
    ("train", {"core", "config", "data", "model", "infer", "train"}),
])
def test_each_layer_imports_only_the_layers_below(layer, allowed):
  bad = sorted(f"{m} -> {n}" for m, deps in GRAPH.items() if _layer(m) == layer
               for n in deps if _layer(n) not in allowed)
  assert not bad, bad


def test_every_module_has_a_layer():
  assert {_layer(m) for m in GRAPH} <= {"core", "config", "app", "data", "model", "infer",
                                       "train"}


# Issue #15's size rules: a module over ~400 lines or a train/ function over
# ~80 is a sign to split. Tests are not modules of the architecture.
MAX_MODULE_LINES = 400
MAX_TRAIN_FUNCTION_LINES = 80
SOURCE_FOLDERS = ("u2net_jax", "tfds_builders", "experiments", "benchmarks")


def _source_files():
  yield os.path.join(ROOT, "run.py")
  for top in SOURCE_FOLDERS:
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))


def test_no_module_is_over_400_lines():
  long = {os.path.relpath(p, ROOT): n for p in _source_files()
          if (n := len(open(p).read().splitlines())) > MAX_MODULE_LINES}
  assert not long, f"split these modules (lines): {long}"


def test_no_function_in_train_is_over_80_lines():
  long = {}
  for path in _source_files():
    if not os.path.relpath(path, ROOT).startswith(os.path.join("u2net_jax", "train")):
      continue
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_TRAIN_FUNCTION_LINES:
          long[f"{os.path.relpath(path, ROOT)}:{node.name}"] = n
  assert not long, f"split these functions (lines): {long}"


@pytest.mark.slow
def test_loading_an_export_imports_neither_flax_nor_the_model(tmp_path):
  # model_source tells the folder (its meta.json) from a workdir and reads its plan.
  code = ("import json, os, sys\n"
          "from u2net_jax.data.plans import DomainPlan\n"
          "from u2net_jax.infer import exported, model_source, predict, review\n"
          "plan = DomainPlan('organ', 'MRI', ['MRI'], ['background', 'organ'], [1, 1, 1])\n"
          f"d = {str(tmp_path)!r}\n"
          "with open(os.path.join(d, exported.META_FILE), 'w') as f:\n"
          "  json.dump({'format': exported.FORMAT, 'domain': 'organ', 'plan': plan.to_dict()}, f)\n"
          "source = model_source.open_source(d)\n"
          "assert source.kind == 'export' and source.plan('') == plan, source\n"
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax')"
          " or m.startswith(('u2net_jax.model', 'u2net_jax.train', 'u2net_jax.config_utils')))\n"
          "assert not bad, bad\n")
  proc = smoke_workdir.run(["-c", code], cwd="/", timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_the_package_imports_from_any_folder(tmp_path):
  # `pip install -e .` (requirements.txt): no sys.path edits anywhere.
  proc = smoke_workdir.run(["-c", "import u2net_jax, tfds_builders, experiments"],
                           cwd=tmp_path, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(shutil.which("ruff") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "ruff")), reason="ruff not installed")
def test_lint_passes():
  # pyproject.toml [tool.ruff]: pyflakes + 100 columns over every module.
  ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
  proc = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:]
