"""Experiment configs that ship with the package, so that they run from any directory:
`eesep demo` trains `demo.py`, and `eesep train --config demo` names it by its stem."""

import pathlib

DIRECTORY = pathlib.Path(__file__).resolve().parent


def names():
  """The names of the packaged configs: `["demo"]`."""
  return sorted(path.stem for path in DIRECTORY.glob("*.py") if path.stem != "__init__")


def resolve(path):
  """The file of the packaged config `path` names (a bare name, `"demo"`, that is no
  file here); else `path` itself, as a `pathlib.Path`."""
  path = pathlib.Path(path)
  if (len(path.parts) == 1 and not path.suffix and not path.exists()
      and path.name in names()):
    return DIRECTORY / f"{path.name}.py"
  return path
