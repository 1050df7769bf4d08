"""The config schema: every field declared once (`config_lib.FIELDS`), and validation,
the resume check, older configs' defaults and the docs table all read from it."""

import json
import pathlib
import re

import ml_collections
import pytest

from eesep_jax import config_lib
from eesep_jax import errors
from eesep_jax import models

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(
  [*(REPO / "experiments" / "configs").glob("*.py"), REPO / "eesep_jax" / "configs" / "demo.py"]
)
KEYS = [spec.key for spec in config_lib.FIELDS]


def _keys(config):
  """The dotted keys of `config`'s fields; the reader's `data.options` count as one."""
  keys = []

  def walk(prefix, node):
    for name, value in node.items():
      key = f"{prefix}{name}"
      if isinstance(value, ml_collections.ConfigDict) and key != "data.options":
        walk(f"{key}.", value)
      else:
        keys.append(key)

  walk("", config)
  return keys


def _base():
  return config_lib.base_config(preset="tiny", dataset="folder", data_root="x")


def _with(config, key, value):
  """A copy of `config`'s fields as a plain `ConfigDict`, dotted `key` set to `value`
  whatever its type (a `ConfigDict` refuses a value of another type)."""
  fields = json.loads(config.to_json_best_effort())
  *sections, name = key.split(".")
  node = fields
  for section in sections:
    node = node[section]
  node[name] = value
  return ml_collections.ConfigDict(fields)


def test_every_field_of_base_config_is_declared_exactly_once():
  assert len(set(KEYS)) == len(KEYS)
  for preset in models.PRESETS:
    config = config_lib.base_config(preset=preset, dataset="folder", data_root="x")
    assert sorted(_keys(config)) == sorted(KEYS), preset


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_the_configs_add_no_undeclared_field(path):
  config = config_lib.load_config(path)
  assert set(_keys(config)) == set(KEYS)


def test_the_docs_table_is_the_schemas():
  usage = (REPO / "docs" / "usage.md").read_text()
  table = re.search(
    r"<!-- config table: made by config_lib.markdown_table\(\) -->\n"
    r"(.*?)<!-- end of config table -->",
    usage,
    re.DOTALL,
  )
  assert table, "docs/usage.md has no config table between its markers"
  assert table.group(1) == config_lib.markdown_table(), (
    "docs/usage.md's config table differs from the schema: paste in the output of "
    "python -c 'from eesep_jax import config_lib; print(config_lib.markdown_table())'"
  )
  rows = [line.split(" | ")[0].strip("| `") for line in table.group(1).splitlines()[2:]]
  assert rows == KEYS


@pytest.mark.parametrize(
  "spec", [spec for spec in config_lib.FIELDS if spec.must_be], ids=lambda spec: spec.key
)
def test_validation_checks_each_field_against_its_declaration(spec):
  config_lib.validate_config(_base())
  with pytest.raises(errors.UsageError) as raised:
    config_lib.validate_config(_with(_base(), spec.key, 1j))  # No field's kind.
  assert str(raised.value) == f"config.{spec.key}: 1j: must be {spec.must_be.what}"


def test_a_resumed_run_may_change_exactly_the_resumable_fields():
  base = _base()
  for spec in config_lib.FIELDS:
    differences = config_lib.resume_differences(base, _with(base, spec.key, "changed"))
    assert bool(differences) != spec.resumable, spec.key
  # What the checkpoint holds fixes the model, the optimiser and the data stream.
  assert not {
    "seed",
    "batch_size",
    "model.width",
    "optimizer.learning_rate",
    "data.segment_seconds",
  } & set(config_lib.RESUMABLE_FIELDS)
  assert {"steps", "data.root", "data.heldout_root", "model.recurrence_form"} <= set(
    config_lib.RESUMABLE_FIELDS
  )


def test_a_config_saved_before_the_added_fields_reads_them_at_their_defaults():
  base = _base()
  added = [spec for spec in config_lib.FIELDS if spec.added]
  assert {"data.heldout_root", "data.strict", "inference.confidence"} <= {
    spec.key for spec in added
  }
  saved = json.loads(base.to_json_best_effort())
  for spec in added:
    *sections, name = spec.key.split(".")
    node = saved
    for section in sections:
      node = node[section]
    del node[name]
  saved = {name: value for name, value in saved.items() if value != {}}
  assert "inference" not in saved
  old = ml_collections.ConfigDict(saved)
  assert config_lib.get_field(old, "data.strict") is True
  del old.steps
  with pytest.raises(errors.UsageError, match=r"^config\.steps: missing"):
    config_lib.get_field(old, "steps")
  restored = config_lib.with_defaults(ml_collections.ConfigDict(saved))
  assert json.loads(restored.to_json_best_effort()) == json.loads(base.to_json_best_effort())
  config_lib.validate_config(restored)
