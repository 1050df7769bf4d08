"""Experiment configs: `ml_collections` files with `--config.KEY=VALUE` overrides.

An experiment is a Python file (under `experiments/configs/`, or shipped in the package
under `eesep_jax/configs/`, such as `demo`) whose `get_config()` returns a `ConfigDict`
built on `base_config`. The schema holds training and the defaults of inference and
evaluation (`config.inference`, `config.evaluation`), each read from the one module
that owns it. `parse_flags(path, flags)` loads a config file and applies
`--config.KEY=VALUE` flags with `ml_collections.config_flags`, which types each value as
its field; `load_config(path, overrides)` does the same for overrides such as
`["steps=200", "model.width=48"]`. `validate_config` checks every field before a run
writes anything, and `resume_differences` lists the fields a resumed run must not change.
"""

import dataclasses
import inspect
import json
import math
import pathlib
import re
import sys
import typing
import warnings

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from eesep_jax import configs
from eesep_jax import errors
from eesep_jax import inference
from eesep_jax import models
from eesep_jax.core import losses
from eesep_jax.core import stopping
from eesep_jax.data import readers


def _config_dict(instance):
  """A dataclass as a `ConfigDict`, each None field a `FieldReference` of its annotated
  type (`int | None` -> int), so that a `--config` flag can set it: `config_flags` types
  an override as the field's value, and None has no type to parse."""
  hints = typing.get_type_hints(type(instance))
  config = ml_collections.ConfigDict()
  for field in dataclasses.fields(instance):
    value = getattr(instance, field.name)
    if dataclasses.is_dataclass(value):
      value = _config_dict(value)
    elif value is None:
      kinds = [kind for kind in typing.get_args(hints[field.name]) if kind is not type(None)]
      if len(kinds) == 1:
        value = ml_collections.FieldReference(None, field_type=kinds[0])
    config[field.name] = value
  return config


def _sections():
  """The sections training does not read, at their owners' defaults: what `eesep
  separate` defaults to (`inference`) and the grid the reports evaluate (`evaluation`).
  A config may set its own (the demo reports its own target)."""
  return {
      "inference": ml_collections.ConfigDict({
          "target_snr_db": stopping.TARGET_SNR_DB, "confidence": stopping.CONFIDENCE,
          "chunk_seconds": inference.CHUNK_SECONDS,
          "overlap_seconds": inference.OVERLAP_SECONDS,
          "chunk_batch": inference.CHUNK_BATCH}),
      "evaluation": ml_collections.ConfigDict({
          "targets_db": stopping.TARGETS_DB, "confidences": stopping.CONFIDENCES}),
  }


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
  # Peak FLOP/s of one device for the logged MFU; 0 looks it up by device kind
  # (`hardware.peak_flops`), and none is logged for a device it does not know.
  config.peak_flops = 0.0
  # JAX's persistent compilation cache; "" is `training.throughput.DEFAULT_CACHE_DIR`
  # (local even when the workdir is a bucket), "none" turns it off.
  config.compilation_cache_dir = ""
  config.eval_every = 5000
  config.eval_max_utterances = 500  # Validation utterances per evaluation; 0 = all.

  config.model = _config_dict(models.preset(
      preset, sample_rate=sample_rate, num_sources=num_sources))

  config.data = ml_collections.ConfigDict()
  config.data.kind = dataset
  config.data.root = data_root
  config.data.train_split = "tr"
  config.data.valid_split = "cv"
  config.data.test_split = "tt"
  config.data.segment_seconds = 4.0
  config.data.dynamic_mixing = False
  # Vary each dynamic mixture's voices and channel (`data.augment.Augmentation`).
  config.data.augment = False
  config.data.num_workers = 0  # grain worker processes cropping and mixing ahead.
  # Make the embedded demo corpus at `root` if it is not there (training only). An
  # override of `data.root` turns this off unless it is overridden too (`load_config`).
  config.data.synthesize_if_missing = False
  config.data.strict = True  # False: skip unusable examples with a warning (open_dataset).
  config.data.options = ml_collections.ConfigDict()  # Extra open_dataset keywords.

  config.loss = ml_collections.ConfigDict()
  config.loss.objective = "nll"
  config.loss.mean_loss = "nll"
  config.loss.permutation = "joint"
  # Any literal, so that an override may set weights or reset them to None (a tuple
  # field's flag parses "None" as `(None,)`); `validate_config` checks them.
  config.loss.exit_weights = ml_collections.FieldReference(None, field_type=object)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 1000
  # The cosine decay's horizon; 0 is `steps`. A resumed run that raises `steps` sets it
  # to the run's first `steps`, so that the schedule continues without a jump.
  config.optimizer.decay_steps = 0
  config.optimizer.end_learning_rate_fraction = 0.01  # Cosine decay ends here.
  config.optimizer.weight_decay = 0.01
  config.optimizer.clip_norm = 5.0
  config.optimizer.max_consecutive_nonfinite = 100

  config.update(_sections())
  return config


# The optimiser recipe the PRESS-Net paper trains every network with.
PAPER_RECIPE = {"learning_rate": 5e-4, "warmup_steps": 5000, "segment_seconds": 4.0}


def paper_config(*, preset, dataset, data_root, steps, batch_size, **base):
  """`base_config` with the paper's recipe: AdamW at 5e-4 after 5k steps of linear
  warm-up, cosine decay over `steps`, 4 s segments, bfloat16 compute. The dataset
  configs of `experiments/configs/` build on it.

  Args:
    preset, dataset, data_root: as `base_config`'s; `**base` its other keywords.
    steps: training steps (the cosine decay's horizon).
    batch_size: the global batch.
  """
  config = base_config(preset=preset, dataset=dataset, data_root=data_root, **base)
  config.steps = steps
  config.batch_size = batch_size
  config.optimizer.learning_rate = PAPER_RECIPE["learning_rate"]
  config.optimizer.warmup_steps = PAPER_RECIPE["warmup_steps"]
  config.data.segment_seconds = PAPER_RECIPE["segment_seconds"]
  config.model.dtype = "bfloat16"
  return config


def librimix_splits(config, mixture="clean"):
  """Sets LibriMix's split names (train-360, dev, test) and its `mixture` kind."""
  config.data.train_split = "train-360"
  config.data.valid_split = "dev"
  config.data.test_split = "test"
  config.data.options.mixture = mixture


def decay_steps(config):
  """The steps the learning rate's cosine decays over: `optimizer.decay_steps`, or
  `steps` when that is 0 (or the config predates it)."""
  return config.optimizer.get("decay_steps") or config.steps


def with_defaults(config):
  """`config` with the sections and fields added to the schema since it was saved, at
  their defaults: a run's `config.json` from before them still loads
  (`checkpoints.read_config`)."""
  for name, section in _sections().items():
    if name not in config:
      config[name] = section
    else:
      for key, value in section.items():
        if key not in config[name]:
          config[name][key] = value
  return config


FLAG = "config"
# The flags `config_flags` takes as overrides of the `--config` file's fields:
# `--config.KEY[=VALUE]`, and `--noconfig.KEY` for False.
_OVERRIDE = re.compile(rf"^--?(?:no)?{FLAG}\.([^=]*)")


def is_override(arg):
  """Whether `arg` is a `--config.KEY[=VALUE]` (or `--noconfig.KEY`) flag."""
  return _OVERRIDE.match(str(arg)) is not None


def _parse(argv):
  """`(flag_values, unparsed arguments)`: `argv` parsed by a `--config` flag of
  `config_flags` in a `FlagValues` of its own (the process's absl flags stay unparsed)."""
  # `config_flags` loads every config file as the module `config_config`, into the one
  # already there: a file without get_config() would get the previous file's.
  sys.modules.pop(f"{FLAG}_config", None)
  flag_values = flags.FlagValues()
  # Unlocked, as a config from `get_config()` is: code may add fields to it.
  config_flags.DEFINE_config_file(FLAG, help_string="an experiment config file",
                                  flag_values=flag_values, lock_config=False,
                                  sys_argv=argv)
  with warnings.catch_warnings():
    # How `config_flags` 1.1 loads the file (`SourceFileLoader.load_module`).
    warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
    return flag_values, flag_values(argv)[1:]


def parse_flags(path, flag_args=()):
  """The config in the file at `path` with `--config.KEY=VALUE` flags applied.

  `ml_collections.config_flags` parses the flags and types each value as its field's:
  `--config.steps=200` (an int), `--config.data.strict=False` or
  `--noconfig.data.strict` (a bool), `--config.evaluation.targets_db=5,10` (a tuple).
  `--config.KEY VALUE` works too, but for a True/False field or `loss.exit_weights`
  (any literal), which take their value only after `=`. `path` may also name a config
  shipped in the package (`configs.resolve`: `"demo"`); a colon in it passes what
  follows to `get_config` (`config_flags`).

  The config file asks for demo-corpus synthesis at its own `data.root` (and the
  demo's held-out set at `data.heldout_root`, its check sets under
  `data.check_root`): overriding any of these roots alone turns
  `data.synthesize_if_missing` off, so that a mistyped root fails instead of filling
  a new folder with a corpus.

  Returns:
    `(config, overrides)`: the config, and `{dotted key: value}` of the fields set.

  Raises:
    errors.UsageError: when `path` is no config file, or a flag names a field the
      config does not have, gives it no value or one of another type; one line,
      `--config.KEY=VALUE: what is wrong`.
  """
  path = configs.resolve(path)
  if not pathlib.Path(str(path).partition(":")[0]).is_file():
    raise errors.UsageError(f"--config {path}", "the config file does not exist (configs "
                            f"shipped in the package: {', '.join(configs.names())})")
  flag_args = [str(arg) for arg in flag_args]
  try:
    flag_values, unparsed = _parse(["eesep", f"--{FLAG}={path}", *flag_args])
  except (flags.Error, AttributeError, KeyError, IndexError) as error:
    raise _flag_error(path, flag_args, error) from error
  if unparsed:
    raise _unparsed_error(flag_args, unparsed[0])
  config = flag_values[FLAG].value
  overrides = dict(flag_values[FLAG].override_values)
  if (overrides.keys() & {"data.root", "data.heldout_root", "data.check_root"}
      and "data.synthesize_if_missing" not in overrides):
    config.data.synthesize_if_missing = False
  return config, overrides


def load_config(path, overrides=()):
  """`parse_flags(path, ...)[0]` for overrides written without their flag's prefix:
  `["steps=200", "model.width=48"]` are `--config.steps=200 --config.model.width=48`."""
  return parse_flags(path, [f"--{FLAG}.{override}" for override in overrides])[0]


def _unparsed_error(flag_args, value):
  """The `UsageError` for an argument no flag took: the value of a flag that takes its
  value only after `=` (absl's bool flags, and `config_flags`' literal ones)."""
  for given, arg in zip(flag_args, flag_args[1:]):
    if arg == value and is_override(given) and "=" not in given:
      return errors.UsageError(f"{given} {value}", "this field takes its value only after "
                               f"'=': {given}={value}")
  return errors.UsageError(value, "not a --config.KEY=VALUE flag")


def _flag_error(path, flag_args, error):
  """The one-line `UsageError` for what made `config_flags` fail on `flag_args`."""
  try:
    config = _parse(["eesep", f"--{FLAG}={path}"])[0][FLAG].value
  except (flags.Error, AttributeError, KeyError, IndexError) as file_error:
    if isinstance(file_error, AttributeError) and file_error.name == "get_config":
      return errors.UsageError(f"--config {path}", "the file defines no get_config()")
    # `config_flags` puts the traceback of get_config()'s error in its message.
    lines = [line for line in str(file_error).splitlines() if line.strip()]
    return errors.UsageError(f"--config {path}", f"its get_config() failed: {lines[-1]}")
  for arg in flag_args:
    match = _OVERRIDE.match(arg)
    if match:
      try:
        config_path.get_type(match.group(1), config)
      except (AttributeError, KeyError, IndexError, ValueError):
        return errors.UsageError(arg, f"cannot apply it to {path}: {match.group(1)!r} is "
                                      "not a field of this config")
  message = str(error)
  missing = re.fullmatch(r"Missing value for flag (\S+)", message)
  if missing:
    return errors.UsageError(missing.group(1), "needs a value: --config.KEY=VALUE")
  # `flag --config.KEY=VALUE: <the parser's error>`, the parser's error as its context.
  cause = error.__context__
  value = re.fullmatch(rf"flag (--{FLAG}\.([^=]*)=.*): {re.escape(str(cause))}", message,
                       re.DOTALL)
  if isinstance(error, flags.IllegalFlagValueError) and value:
    kind = config_path.get_type(value.group(2), config).__name__
    # absl's bool parser gives `(message, value)`.
    problem = ": ".join([str(cause.args[0]), *map(repr, cause.args[1:])])
    return errors.UsageError(value.group(1), f"cannot apply it to {path}: "
                             f"{value.group(2)!r} is {_article(kind)} {kind} field: {problem}")
  return errors.UsageError(f"--config {path}", message.splitlines()[0])


def _article(word):
  return "an" if word[0] in "aeiou" else "a"


def model_config(config):
  """The `models.PressNetConfig` an experiment config describes."""
  return models.PressNetConfig.from_dict(config.model.to_dict())


# ----------------------------------------------------------------------------------
# Validation: every field checked before a run writes anything.

_POSITIVE_INTS = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every",
                  "eval_every", "optimizer.max_consecutive_nonfinite", "inference.chunk_batch",
                  "model.sample_rate",
                  "model.num_sources", "model.width", "model.num_exit_blocks",
                  "model.num_exits", "model.encoder_kernel", "model.encoder_stride",
                  "model.encoder_features", "model.rnn_expansion", "model.conv_expansion",
                  "model.ffn_expansion", "model.conv_kernel", "model.num_heads")
_NON_NEGATIVE_INTS = ("seed", "eval_max_utterances", "data.num_workers",
                      "optimizer.warmup_steps", "optimizer.decay_steps",
                      "model.num_shared_blocks")
_POSITIVE_NUMBERS = ("data.segment_seconds", "optimizer.learning_rate", "optimizer.clip_norm",
                     "inference.chunk_seconds", "inference.overlap_seconds")
_FINITE_NUMBERS = ("inference.target_snr_db",)
_PROBABILITIES = ("inference.confidence",)
_NON_NEGATIVE_NUMBERS = ("optimizer.weight_decay", "peak_flops")
_FRACTIONS = ("optimizer.end_learning_rate_fraction",)
_BOOLS = ("data.dynamic_mixing", "data.augment", "data.synthesize_if_missing", "data.strict")
_NAMES = ("data.root", "data.train_split", "data.valid_split", "data.test_split")
_STRINGS = ("compilation_cache_dir",)
_CHOICES = {"loss.objective": losses.OBJECTIVES, "loss.mean_loss": losses.MEAN_LOSSES,
            "loss.permutation": losses.PERMUTATIONS, "data.kind": tuple(readers.READERS)}
_FINITE_TUPLES = ("evaluation.targets_db",)
_PROBABILITY_TUPLES = ("evaluation.confidences",)
# Fields with a default, for configs saved before they existed.
_DEFAULTS = {"data.strict": True, "data.augment": False, "optimizer.decay_steps": 0,
             "peak_flops": 0.0, "compilation_cache_dir": "", **{
    f"{name}.{key}": value for name, section in _sections().items()
    for key, value in section.items()}}


def get_field(config, key):
  """The value of dotted `key`, e.g. `"inference.target_snr_db"`. A field older configs
  lack (`_DEFAULTS`: the `inference` and `evaluation` sections, `data.strict`) is at
  its default; `errors.UsageError` when the config lacks any other."""
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


def _is_probability(value):
  """A confidence: a number in (0, 1]."""
  return _is_number(value) and 0 < value <= 1


def _is_tuple_of(test):
  return lambda value: (isinstance(value, (tuple, list)) and len(value) > 0
                        and all(test(item) for item in value))


def _checks():
  """`(keys, test, what it must be)` for every field with a simple range."""
  return [
      (_POSITIVE_INTS, lambda v: _is_int(v) and v > 0, "a positive integer"),
      (_NON_NEGATIVE_INTS, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
      (_POSITIVE_NUMBERS, lambda v: _is_number(v) and v > 0, "a positive number"),
      (_NON_NEGATIVE_NUMBERS, lambda v: _is_number(v) and v >= 0, "a non-negative number"),
      (_FRACTIONS, lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
      (_FINITE_NUMBERS, _is_number, "a finite number"),
      (_PROBABILITIES, _is_probability, "a probability in (0, 1]"),
      (_FINITE_TUPLES, _is_tuple_of(_is_number), "one or more finite numbers"),
      (_PROBABILITY_TUPLES, _is_tuple_of(_is_probability),
       "one or more probabilities in (0, 1]"),
      (_BOOLS, lambda v: isinstance(v, bool), "True or False"),
      (_NAMES, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
      (_STRINGS, lambda v: isinstance(v, str), "a string"),
  ]


def validate_config(config):
  """Checks every field of an experiment config: sizes positive, names known, the
  model buildable, the data options the reader's own.

  Raises:
    errors.UsageError: naming the first field at fault (`config.steps`, ...).
  """
  for keys, test, what in _checks():
    for key in keys:
      value = get_field(config, key)
      if not test(value):
        raise errors.UsageError(f"config.{key}", f"{value!r}: must be {what}")
  for key, choices in _CHOICES.items():
    value = get_field(config, key)
    if value not in choices:
      raise errors.UsageError(f"config.{key}",
                              f"{value!r}: must be one of {', '.join(choices)}")
  kind = get_field(config, "data.kind")
  accepted = set(inspect.signature(readers.READERS[kind]).parameters) - {"root", "split"}
  options = get_field(config, "data.options")
  unknown = sorted(set(options.to_dict() if options else {}) - accepted)
  if unknown:
    raise errors.UsageError(f"config.data.options.{unknown[0]}",
                            f"not an option of the {kind} reader (options: "
                            f"{', '.join(sorted(accepted)) or 'none'})")
  try:
    model = model_config(config)
  except (ValueError, TypeError) as error:
    raise errors.UsageError("config.model", str(error)) from None
  chunk, overlap = (get_field(config, f"inference.{key}")
                    for key in ("chunk_seconds", "overlap_seconds"))
  if 2 * overlap > chunk:
    raise errors.UsageError("config.inference.overlap_seconds",
                            f"{overlap!r}: must be at most half of inference.chunk_seconds "
                            f"({chunk!r})")
  weights = get_field(config, "loss.exit_weights")
  if weights is not None and not (
      isinstance(weights, (tuple, list)) and len(weights) == model.num_exits
      and all(_is_number(w) and w >= 0 for w in weights) and any(weights)):
    raise errors.UsageError("config.loss.exit_weights",
                            f"{weights!r}: must be {model.num_exits} non-negative numbers, "
                            "one per exit, not all zero")


# ----------------------------------------------------------------------------------
# Resuming: what a run restarted in the same workdir may change.

# A resumed run continues the same training: only when it stops, how it logs and
# checkpoints, and where its data lives may change, and the sections training does not
# read (`inference`, `evaluation`: any of their fields). Everything else (the model,
# whose parameters the checkpoint holds; the optimizer, batch, data stream and seed,
# whose state it holds) needs a new workdir. The layers' forms only choose how the same
# function runs, e.g. when a run moves between a CPU and an accelerator.
RESUMABLE_FIELDS = ("steps", "log_every", "eval_every", "eval_max_utterances",
                    "model.recurrence_form", "model.depthwise_form",
                    "checkpoint_every", "keep_checkpoints", "data.root", "data.strict",
                    "data.synthesize_if_missing", "data.valid_split", "data.test_split",
                    "data.heldout_root", "data.check_root", "data.check_sets",
                    "data.check_mixtures", "peak_flops", "compilation_cache_dir",
                    "optimizer.decay_steps")
RESUMABLE_SECTIONS = tuple(_sections())
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


def schedule_change(saved, config):
  """The one-line reason a resume of the `saved` run with `config` is refused because
  it would move the learning rate's cosine decay (`decay_steps`), saying how to keep
  it; None when the horizon is the same. (`optimizer.decay_steps` and `steps` are
  otherwise free to change on resume: the learning rate is all they decide.)"""
  old, new = decay_steps(saved), decay_steps(config)
  if old == new:
    return None
  return (f"the learning rate decays over {old} steps in this run, and this config would "
          f"make that {new}: the rate would jump mid-run. To train to step {config.steps} "
          f"on the same schedule, add --config.optimizer.decay_steps={old} (the rate stays "
          f"at its end value after step {old}); for a longer schedule, train in a new "
          "--workdir")


def resume_differences(saved, config):
  """`[(key, saved value, new value)]`: the fields outside `RESUMABLE_FIELDS` (and the
  `RESUMABLE_SECTIONS`) in which
  `config` differs from the `saved` config of the run it would resume; `"(absent)"`
  stands for a field one of them lacks."""
  old, new = _flat(saved), _flat(config)
  return [(key, old.get(key, _ABSENT), new.get(key, _ABSENT))
          for key in sorted(old.keys() | new.keys())
          if key not in RESUMABLE_FIELDS and key.split(".")[0] not in RESUMABLE_SECTIONS
          and old.get(key, _ABSENT) != new.get(key, _ABSENT)]
