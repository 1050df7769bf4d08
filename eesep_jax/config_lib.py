"""Experiment configs: `ml_collections` files with dotted command-line overrides.

An experiment is a Python file under `experiments/configs/` whose `get_config()`
returns a `ConfigDict` built on `base_config`. `load_config(path, overrides)` loads it
and applies overrides such as `["steps=200", "model.width=48"]`; `validate_config`
checks every field before a run writes anything, and `resume_differences` lists the
fields a resumed run must not change.
"""

import ast
import importlib.util
import inspect
import json
import math
import pathlib

import ml_collections

from eesep_jax import errors
from eesep_jax import models
from eesep_jax.core import losses
from eesep_jax.data import readers


def base_config(*, preset, dataset, data_root, sample_rate=8000, num_sources=2):
  """The fields every experiment has, with defaults for a `preset` on a `dataset`.

  Args:
    preset: a `models.preset` name; its fields land in `config.model`.
    dataset: an `eesep_jax.data.open_dataset` kind.
    data_root: the dataset's root folder.
    sample_rate: the model's sample rate.
    num_sources: sources per mixture.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.steps = 100_000
  config.batch_size = 16  # Global, across every device and process.
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.log_every = 50
  config.eval_every = 5000
  config.eval_max_utterances = 500  # Validation utterances per evaluation; 0 = all.

  config.model = models.preset(
      preset, sample_rate=sample_rate, num_sources=num_sources).to_dict()

  config.data = ml_collections.ConfigDict()
  config.data.kind = dataset
  config.data.root = data_root
  config.data.train_split = "tr"
  config.data.valid_split = "cv"
  config.data.test_split = "tt"
  config.data.segment_seconds = 4.0
  config.data.dynamic_mixing = False
  config.data.num_workers = 0
  # Make the embedded demo corpus at `root` if it is not there (training only). An
  # override of `data.root` turns this off unless it is overridden too (`load_config`).
  config.data.synthesize_if_missing = False
  config.data.strict = True  # False: skip unusable examples with a warning (open_dataset).
  config.data.options = ml_collections.ConfigDict()  # Extra open_dataset keywords.

  config.loss = ml_collections.ConfigDict()
  config.loss.objective = "nll"
  config.loss.mean_loss = "nll"
  config.loss.permutation = "joint"
  config.loss.exit_weights = ml_collections.FieldReference(None, field_type=tuple)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 1000
  config.optimizer.end_learning_rate_fraction = 0.01  # Cosine decay ends here.
  config.optimizer.weight_decay = 0.01
  config.optimizer.clip_norm = 5.0
  config.optimizer.max_consecutive_nonfinite = 100
  return config


def parse_override(text):
  """`"model.width=48"` -> `("model.width", 48)`; values are Python literals or strings."""
  key, separator, value = text.partition("=")
  if not separator or not key:
    raise errors.UsageError(f"--config.{text}", "not of the form --config.KEY=VALUE")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def load_config(path, overrides=()):
  """Loads `get_config()` from the file at `path` and applies `overrides`.

  The config file asks for demo-corpus synthesis at its own `data.root` (and the
  demo's held-out set at `data.heldout_root`): overriding either root alone turns
  `data.synthesize_if_missing` off, so that a mistyped root fails instead of filling
  a new folder with a corpus.

  Raises:
    errors.UsageError: when `path` is no config file, or an override names a field the
      config does not have or gives it a value of another type.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.UsageError(f"--config {path}", "the config file does not exist")
  spec = importlib.util.spec_from_file_location(f"eesep_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise errors.UsageError(f"--config {path}", "the file defines no get_config()")
  config = module.get_config()
  keys = set()
  for override in overrides:
    key, value = parse_override(override)
    try:
      _set_existing(config, key, value)
    except (KeyError, AttributeError, TypeError) as error:
      # A KeyError's str() quotes its message once more.
      problem = error.args[0] if isinstance(error, KeyError) else error
      raise errors.UsageError(f"--config.{override}",
                              f"cannot apply it to {path}: {problem}") from error
    keys.add(key)
  if keys & {"data.root", "data.heldout_root"} and "data.synthesize_if_missing" not in keys:
    config.data.synthesize_if_missing = False
  return config


def _set_existing(config, key, value):
  """Sets dotted `key`, refusing keys the config does not have (a typo must not pass)."""
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  if leaf not in node:
    raise KeyError(f"{key!r} is not a field of this config")
  node[leaf] = value


def model_config(config):
  """The `models.PressNetConfig` an experiment config describes."""
  return models.PressNetConfig.from_dict(config.model.to_dict())


# ----------------------------------------------------------------------------------
# Validation: every field checked before a run writes anything.

_POSITIVE_INTS = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every",
                  "eval_every", "optimizer.max_consecutive_nonfinite", "model.sample_rate",
                  "model.num_sources", "model.width", "model.num_exit_blocks",
                  "model.num_exits", "model.encoder_kernel", "model.encoder_stride",
                  "model.encoder_features", "model.rnn_expansion", "model.conv_expansion",
                  "model.ffn_expansion", "model.conv_kernel", "model.num_heads")
_NON_NEGATIVE_INTS = ("seed", "eval_max_utterances", "data.num_workers",
                      "optimizer.warmup_steps", "model.num_shared_blocks")
_POSITIVE_NUMBERS = ("data.segment_seconds", "optimizer.learning_rate", "optimizer.clip_norm")
_NON_NEGATIVE_NUMBERS = ("optimizer.weight_decay",)
_FRACTIONS = ("optimizer.end_learning_rate_fraction",)
_BOOLS = ("data.dynamic_mixing", "data.synthesize_if_missing", "data.strict")
_NAMES = ("data.root", "data.train_split", "data.valid_split", "data.test_split")
_CHOICES = {"loss.objective": losses.OBJECTIVES, "loss.mean_loss": losses.MEAN_LOSSES,
            "loss.permutation": losses.PERMUTATIONS, "data.kind": tuple(readers.READERS)}
# Fields with a default, for configs saved before they existed.
_DEFAULTS = {"data.strict": True}


def _field(config, key):
  """The value of dotted `key`; `errors.UsageError` when the config lacks it."""
  node = config
  for name in key.split("."):
    if name not in node:
      if key in _DEFAULTS:
        return _DEFAULTS[key]
      raise errors.UsageError(f"config.{key}", "missing: the config has no such field")
    node = node[name]
  return node


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
  return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _checks():
  """`(keys, test, what it must be)` for every field with a simple range."""
  return [
      (_POSITIVE_INTS, lambda v: _is_int(v) and v > 0, "a positive integer"),
      (_NON_NEGATIVE_INTS, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
      (_POSITIVE_NUMBERS, lambda v: _is_number(v) and v > 0, "a positive number"),
      (_NON_NEGATIVE_NUMBERS, lambda v: _is_number(v) and v >= 0, "a non-negative number"),
      (_FRACTIONS, lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
      (_BOOLS, lambda v: isinstance(v, bool), "True or False"),
      (_NAMES, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
  ]


def validate_config(config):
  """Checks every field of an experiment config: sizes positive, names known, the
  model buildable, the data options the reader's own.

  Raises:
    errors.UsageError: naming the first field at fault (`config.steps`, ...).
  """
  for keys, test, what in _checks():
    for key in keys:
      value = _field(config, key)
      if not test(value):
        raise errors.UsageError(f"config.{key}", f"{value!r}: must be {what}")
  for key, choices in _CHOICES.items():
    value = _field(config, key)
    if value not in choices:
      raise errors.UsageError(f"config.{key}",
                              f"{value!r}: must be one of {', '.join(choices)}")
  kind = _field(config, "data.kind")
  accepted = set(inspect.signature(readers.READERS[kind]).parameters) - {"root", "split"}
  options = _field(config, "data.options")
  unknown = sorted(set(options.to_dict() if options else {}) - accepted)
  if unknown:
    raise errors.UsageError(f"config.data.options.{unknown[0]}",
                            f"not an option of the {kind} reader (options: "
                            f"{', '.join(sorted(accepted)) or 'none'})")
  try:
    model = model_config(config)
  except (ValueError, TypeError) as error:
    raise errors.UsageError("config.model", str(error)) from None
  weights = _field(config, "loss.exit_weights")
  if weights is not None and not (
      len(weights) == model.num_exits and all(_is_number(w) and w >= 0 for w in weights)
      and any(weights)):
    raise errors.UsageError("config.loss.exit_weights",
                            f"{weights!r}: must be {model.num_exits} non-negative numbers, "
                            "one per exit, not all zero")


# ----------------------------------------------------------------------------------
# Resuming: what a run restarted in the same workdir may change.

# A resumed run continues the same training: only when it stops, how it logs and
# checkpoints, and where its data lives may change. Everything else (the model, whose
# parameters the checkpoint holds; the optimizer, batch, data stream and seed, whose
# state it holds) needs a new workdir.
RESUMABLE_FIELDS = ("steps", "log_every", "eval_every", "eval_max_utterances",
                    "checkpoint_every", "keep_checkpoints", "data.root", "data.strict",
                    "data.synthesize_if_missing", "data.valid_split", "data.test_split",
                    "data.heldout_root")
_ABSENT = "(absent)"


def _flat(config):
  """`{dotted key: value}` of a config, values as they are saved in JSON."""
  flat = {}

  def walk(prefix, node):
    for name, value in node.items():
      if isinstance(value, dict) and value:
        walk(f"{prefix}{name}.", value)
      else:
        flat[f"{prefix}{name}"] = value

  walk("", json.loads(config.to_json_best_effort()))
  return flat


def resume_differences(saved, config):
  """`[(key, saved value, new value)]`: the fields outside `RESUMABLE_FIELDS` in which
  `config` differs from the `saved` config of the run it would resume; `"(absent)"`
  stands for a field one of them lacks."""
  old, new = _flat(saved), _flat(config)
  return [(key, old.get(key, _ABSENT), new.get(key, _ABSENT))
          for key in sorted(old.keys() | new.keys())
          if key not in RESUMABLE_FIELDS and old.get(key, _ABSENT) != new.get(key, _ABSENT)]
