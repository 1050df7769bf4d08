"""The docs say what the code does in words: they cite no test function and no commit."""

import ast
import json
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [
  REPO / "README.md",
  *sorted((REPO / "docs").glob("*.md")),
  REPO / "experiments" / "benchmarks" / "README.md",
  *sorted((REPO / "eesep_jax" / "configs").glob("*.py")),
  *sorted((REPO / "notebooks").glob("*.ipynb")),
]

# A commit hash as docs would cite one: a whole word of 7 to 40 lowercase hex digits with
# at least one digit and one letter. Dates (20250101), numbers and English words
# ("decade", "faced") have no letter or no digit; longer checksums are not whole words
# of at most 40 characters. Any such word counts, not only commits of this clone, so
# the test needs no git history (a tarball or shallow clone has none).
COMMIT = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
# `test_...` as an identifier: called, or after pytest's `::`. Plain words such as the
# `test_split` of the data layout are neither; see `_defined_tests` for bare names.
TEST_CALL = re.compile(r"::\s*test_\w+|\btest_\w+\s*\(")
TEST_WORD = re.compile(r"(?<![\w.])test_\w+\b(?!\.py)")


def _text(path):
  """What a reader sees of `path`: a notebook's markdown cells, or the whole file."""
  if path.suffix != ".ipynb":
    return path.read_text(encoding="utf-8")
  cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
  return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


def _defined_tests():
  names = set()
  for path in (REPO / "tests").glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        names.add(node.name)
  return names


def _name(path):
  return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_docs_cite_no_test_function(path):
  text = _text(path)
  defined = {name for name in _defined_tests() if name.startswith("test_")}
  cited = {match.group() for match in TEST_CALL.finditer(text)}
  cited |= {match.group() for match in TEST_WORD.finditer(text) if match.group() in defined}
  assert not cited, f"{_name(path)} cites tests by name: {sorted(cited)}"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_docs_cite_no_commit(path):
  cited = sorted({match.group() for match in COMMIT.finditer(_text(path))})
  assert not cited, f"{_name(path)} cites commits: {cited}"


def test_the_commit_pattern_tells_hashes_from_words_and_dates():
  assert COMMIT.findall("at 8ccd0f3, then 255a2d0") == ["8ccd0f3", "255a2d0"]
  assert not COMMIT.findall("on 20250101 the decade faced a1b2c3 and 0x1f2e3d4c")
