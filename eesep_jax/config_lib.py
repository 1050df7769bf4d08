"""Experiment configs: `ml_collections` files with dotted command-line overrides.

An experiment is a Python file under `experiments/configs/` whose `get_config()`
returns a `ConfigDict` built on `base_config`. `load_config(path, overrides)` loads it
and applies overrides such as `["steps=200", "model.width=48"]`.
"""

import ast
import importlib.util
import pathlib

import ml_collections

from eesep_jax import models


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
  config.data.synthesize_if_missing = False
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
    raise ValueError(f"override {text!r} is not of the form key.path=value")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def load_config(path, overrides=()):
  """Loads `get_config()` from the file at `path` and applies `overrides`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"eesep_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} defines no get_config()")
  config = module.get_config()
  for override in overrides:
    key, value = parse_override(override)
    try:
      _set_existing(config, key, value)
    except (KeyError, AttributeError, TypeError) as error:
      raise ValueError(f"cannot apply override {override!r} to {path}: {error}") from error
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
