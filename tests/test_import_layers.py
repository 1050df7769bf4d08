"""The package's layers (docs/architecture.md): imports point only downward, and the core
maths and models import no scipy and no file I/O. The experiment configs sit with the
packaged ones, and the notebooks use the library, never the application on top."""

import ast
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "eesep_jax"

# Rank of each layer; a module may import modules of its own rank or lower.
LAYERS = {
  "errors": 0,
  "files": 0,
  "core": 0,
  "hardware": 0,
  "models": 1,
  "data": 1,
  "inference": 2,
  "config_lib": 2,
  # The packaged configs import config_lib, which finds them by path.
  "configs": 3,
  "training": 3,
  "analysis": 3,
  "runs": 3,
  "app": 4,
  "__main__": 4,
}
# Libraries the pure layers must not reach: scipy, and what reads or writes files.
FORBIDDEN_IN_PURE = ("scipy", "soundfile", "orbax", "grain", "librosa", "eesep_jax.data")
PURE = ("core", "models")


def _layer(module):
  """`eesep_jax.core.losses` -> "core"."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def _imports(path, source=None):
  """Every module `path` (or its `source`) imports, at any depth (function-level
  imports included)."""
  tree = ast.parse(path.read_text() if source is None else source, str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "eesep_jax":
        yield from (f"eesep_jax.{alias.name}" for alias in node.names)
      else:
        yield node.module


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path):
  module = "eesep_jax." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
  own = _layer(module.removesuffix(".__init__"))
  if own is None:  # The package's own __init__.
    return
  for imported in _imports(path):
    if imported.startswith("eesep_jax."):
      assert LAYERS[_layer(imported)] <= LAYERS[own], f"{module} imports {imported}"
    if own in PURE:
      assert not imported.startswith(FORBIDDEN_IN_PURE), f"{module} imports {imported}"


def test_every_layer_is_ranked():
  tops = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in MODULES}
  assert tops - {"__init__"} <= set(LAYERS)


EXPERIMENT_CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.py"))


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_experiment_configs_import_what_packaged_configs_may(path):
  for imported in _imports(path):
    if imported.startswith("eesep_jax."):
      assert LAYERS[_layer(imported)] <= LAYERS["configs"], f"{path.name} imports {imported}"


def _notebook_source(path):
  """The code cells of the notebook at `path` as Python (IPython's `%magics` and `!shell`
  lines turned into calls, as the kernel turns them)."""
  from IPython.core.inputtransformer2 import TransformerManager

  cells = json.loads(path.read_text())["cells"]
  return "\n".join(
    TransformerManager().transform_cell("".join(cell["source"]))
    for cell in cells
    if cell["cell_type"] == "code"
  )


NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_import_the_library_not_the_application(path):
  imported = [
    name for name in _imports(path, _notebook_source(path)) if name.startswith("eesep_jax.")
  ]
  assert imported, f"{path.name} imports nothing of eesep_jax: is it parsed?"
  for name in imported:
    assert LAYERS[_layer(name)] < LAYERS["app"], f"{path.name} imports {name}"


# The analysis layer computes and reports: it reads trained runs (training.checkpoints)
# but never trains; the drivers that train live in experiments/.
TRAINING_READ_BY_ANALYSIS = {"eesep_jax.training.checkpoints"}


def _imported_modules(path):
  """`_imports`, with each name of `from eesep_jax.X import name` as `eesep_jax.X.name`."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield from (f"{node.module}.{alias.name}" for alias in node.names)
    elif isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_analysis_does_not_train_and_nothing_imports_experiments(path):
  own = path.relative_to(PACKAGE).parts[0]
  for imported in _imported_modules(path):
    if own == "analysis" and imported.startswith("eesep_jax.training"):
      assert imported in TRAINING_READ_BY_ANALYSIS, f"{path.name} imports {imported}"
    # Experiment drivers sit above the package.
    assert not imported.startswith("experiments"), f"{path.name} imports {imported}"
