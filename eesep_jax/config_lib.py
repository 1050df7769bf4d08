"""Experiment configs: `ml_collections` files with `--config.KEY=VALUE` overrides.

An experiment is a Python file (under `experiments/configs/`, or shipped in the package
under `eesep_jax/configs/`, such as `demo`) whose `get_config()` returns a `ConfigDict`
built on `base_config`. The schema, `FIELDS`, declares every field once: its default,
what it must be and whether a resumed run may change it. It holds training and the
defaults of inference and evaluation (`config.inference`, `config.evaluation`), each
read from the one module that owns it. `parse_flags(path, flags)` loads a config file and applies
`--config.KEY=VALUE` flags with `ml_collections.config_flags`, which types each value as
its field; `load_config(path, overrides)` does the same for overrides such as
`["steps=200", "model.width=48"]`. `validate_config` checks every field before a run
writes anything, and `resume_differences` lists the fields a resumed run must not change.
"""

import ast
import dataclasses
import inspect
import json
import math
import pathlib
import re
import sys
import types
import typing
import warnings

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from eesep_jax import errors
from eesep_jax import inference
from eesep_jax import models
from eesep_jax.core import losses
from eesep_jax.core import probabilistic
from eesep_jax.core import stopping
from eesep_jax.data import checksets
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


# ----------------------------------------------------------------------------------
# The schema: one declaration per field (`FIELDS`). `base_config`, `validate_config`,
# the resume check, the defaults of older configs and the table of docs/usage.md are
# all read from it.


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
  return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_probability(value):
  """A confidence: a number in (0, 1]."""
  return _is_number(value) and 0 < value <= 1


def _is_tuple_of(test):
  return lambda value: (
    isinstance(value, (tuple, list)) and len(value) > 0 and all(test(item) for item in value)
  )


@dataclasses.dataclass(frozen=True)
class Constraint:
  """What a field's value must be: `test(value)` is True, said as `what`."""

  test: typing.Callable[[typing.Any], bool]
  what: str

  def or_none(self):
    """This constraint, or None."""
    return Constraint(lambda value: value is None or self.test(value), f"None or {self.what}")


POSITIVE_INT = Constraint(lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = Constraint(lambda v: _is_int(v) and v >= 0, "a non-negative integer")
POSITIVE_NUMBER = Constraint(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Constraint(lambda v: _is_number(v) and v >= 0, "a non-negative number")
FRACTION = Constraint(lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
FINITE_NUMBER = Constraint(_is_number, "a finite number")
PROBABILITY = Constraint(_is_probability, "a probability in (0, 1]")
OPEN_UNIT_INTERVAL = Constraint(
  lambda v: _is_number(v) and 0 < v < 1, "a number strictly between 0 and 1"
)
FINITE_NUMBERS = Constraint(_is_tuple_of(_is_number), "one or more finite numbers")
PROBABILITIES = Constraint(_is_tuple_of(_is_probability), "one or more probabilities in (0, 1]")
BOOL = Constraint(lambda v: isinstance(v, bool), "True or False")
NAME = Constraint(lambda v: isinstance(v, str) and v != "", "a non-empty string")
STRING = Constraint(lambda v: isinstance(v, str), "a string")


def one_of(choices):
  """The constraint of a field that names one of `choices`."""
  return Constraint(lambda value: value in choices, f"one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class Owned:
  """A default another module owns (`stopping.TARGET_SNR_DB`), read from it each time:
  the schema holds no copy."""

  module: types.ModuleType
  name: str

  def value(self):
    return getattr(self.module, self.name)

  def __str__(self):
    return f"{self.module.__name__.removeprefix('eesep_jax.')}.{self.name}"


@dataclasses.dataclass(frozen=True)
class Given:
  """A default `base_config` takes from its `argument` (`preset`: the preset's value)."""

  argument: str


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field.

  Attributes:
    key: its dotted name, `"optimizer.learning_rate"`.
    default: its value in `base_config`: a value, an `Owned` default, or a `Given` one.
    must_be: the `Constraint` `validate_config` checks; None for a field its owner
      checks (`PressNetConfig` for the model) or that depends on other fields (see
      `validate_config`).
    resumable: whether a resumed run may change it (`resume_differences`).
    meaning: what it does, for docs/usage.md; a model field's is its `PressNetConfig`
      attribute's.
    kind: the type of a None default, which `--config` flags parse values as.
    added: added to the schema after runs were saved: a saved config without it reads
      as the default (`with_defaults`, `get_field`).
    made_if_missing: a root at which `data.synthesize_if_missing` makes a corpus;
      overriding it alone turns that off (`parse_flags`).
  """

  key: str
  default: typing.Any
  must_be: Constraint | None = None
  resumable: bool = False
  meaning: str = ""
  kind: type | None = None
  added: bool = False
  made_if_missing: bool = False

  def initial(self):
    """The default as a `ConfigDict` holds it: a None default as a `FieldReference` of
    its `kind` (`config_flags` types an override as the field's value, and None has no
    type to parse), a mapping as a `ConfigDict`."""
    value = self.default.value() if isinstance(self.default, Owned) else self.default
    if value is None:
      return ml_collections.FieldReference(None, field_type=self.kind)
    if isinstance(value, dict):
      return ml_collections.ConfigDict(value)
    return value


_PRESET = Given("preset")
# The sections training does not read: what `eesep separate` defaults to (`inference`)
# and the grid the reports evaluate (`evaluation`). A config may set its own (the demo
# reports its own target).
_NOT_TRAINING = "not read by training: "

# One row per field: a table to read down, as ruff's layout would not keep it.
# fmt: off
FIELDS = (
    Field("seed", 0, NON_NEGATIVE_INT, meaning="the random seed of initialisation, data "
          "and dropout"),
    Field("steps", 100_000, POSITIVE_INT, resumable=True, meaning="optimiser steps"),
    Field("batch_size", 16, POSITIVE_INT,
          meaning="the **global** batch (split over devices and processes)"),
    Field("checkpoint_every", 1000, POSITIVE_INT, resumable=True, meaning="save interval"),
    Field("keep_checkpoints", 3, POSITIVE_INT, resumable=True,
          meaning="how many latest checkpoints to keep (plus the best)"),
    Field("log_every", 50, POSITIVE_INT, resumable=True,
          meaning="training-loss and speed logging interval"),
    Field("peak_flops", 0.0, NON_NEGATIVE_NUMBER, resumable=True, added=True,
          meaning="one device's peak FLOP/s for the logged MFU; 0 looks it up by device "
          "kind (`eesep_jax/hardware.py`: H100, H200, A100, TPU v4, v5e, v5p, v6e), and "
          "none is logged for a device it does not know"),
    Field("compilation_cache_dir", "", STRING, resumable=True, added=True,
          meaning="JAX's persistent compilation cache: \"\" is "
          "`$JAX_COMPILATION_CACHE_DIR` if set, else `~/.cache/eesep_jax/jax` (local, "
          "also for `gs://` workdirs); a path or `gs://` URL; `none` turns it off"),
    Field("eval_every", 5000, POSITIVE_INT, resumable=True,
          meaning="validation interval, on full-length utterances"),
    Field("eval_max_utterances", 500, NON_NEGATIVE_INT, resumable=True,
          meaning="validation utterances per evaluation; 0: all"),

    Field("model.sample_rate", Given("sample_rate"), POSITIVE_INT),
    Field("model.num_sources", Given("num_sources"), POSITIVE_INT),
    Field("model.width", _PRESET, POSITIVE_INT),
    Field("model.num_shared_blocks", _PRESET, NON_NEGATIVE_INT),
    Field("model.num_exit_blocks", _PRESET, POSITIVE_INT),
    Field("model.num_exits", _PRESET, POSITIVE_INT),
    Field("model.encoder_kernel", _PRESET, POSITIVE_INT),
    Field("model.encoder_stride", _PRESET, POSITIVE_INT),
    Field("model.encoder_features", _PRESET, POSITIVE_INT),
    Field("model.rnn_expansion", _PRESET, POSITIVE_INT),
    Field("model.conv_expansion", _PRESET, POSITIVE_INT),
    Field("model.ffn_expansion", _PRESET, POSITIVE_INT),
    Field("model.conv_kernel", _PRESET, POSITIVE_INT),
    Field("model.num_heads", _PRESET, POSITIVE_INT),
    Field("model.dropout", _PRESET),
    Field("model.layer_scale_init", _PRESET),
    Field("model.remat", _PRESET),
    Field("model.unroll_blocks", _PRESET),
    Field("model.dtype", _PRESET),
    # The layers' forms only choose how the same function runs, e.g. when a run moves
    # between a CPU and an accelerator.
    Field("model.recurrence_form", _PRESET, resumable=True),
    Field("model.depthwise_form", _PRESET, resumable=True),
    Field("model.variance.parameterisation", _PRESET),
    Field("model.variance.monotone", _PRESET),
    Field("model.variance.block_length", _PRESET),
    Field("model.variance.alpha_min", _PRESET),
    Field("model.variance.fixed_alpha", _PRESET),

    Field("data.kind", Given("dataset"), one_of(tuple(readers.READERS)),
          meaning="the reader (`eesep_jax.data.open_dataset`; see [data.md](data.md))"),
    Field("data.root", Given("data_root"), NAME, resumable=True, made_if_missing=True,
          meaning="the dataset's root folder"),
    Field("data.train_split", "tr", NAME, meaning="the split training reads"),
    Field("data.valid_split", "cv", NAME, resumable=True,
          meaning="the split validation and calibration read"),
    Field("data.test_split", "tt", NAME, resumable=True, meaning="the split reports test on"),
    Field("data.segment_seconds", 4.0, POSITIVE_NUMBER,
          meaning="the length of the training crops"),
    Field("data.dynamic_mixing", False, BOOL,
          meaning="re-mix the training sources on the fly"),
    Field("data.augment", False, BOOL, added=True,
          meaning="vary each dynamic mixture's voices and channel (`data.augment`)"),
    Field("data.augment_voices", True, BOOL, added=True,
          meaning="with `data.augment`: warp and tilt each speaker's track; False: leave "
          "the voices as they are"),
    Field("data.augment_channel", True, BOOL, added=True,
          meaning="with `data.augment`: the room, the band and the noise floor; False: "
          "leave the channel as it is"),
    Field("data.num_workers", 0, NON_NEGATIVE_INT,
          meaning="grain worker processes that read, crop and mix ahead (see "
          "[tpu.md](tpu.md#feeding-the-devices))"),
    Field("data.synthesize_if_missing", False, BOOL, resumable=True,
          meaning="make the embedded demo corpus at `root` (and the held-out and check "
          "sets at theirs) if it is not there; an override of a root alone turns this "
          "off, so that a mistyped root fails instead of filling a new folder"),
    Field("data.strict", True, BOOL, resumable=True, added=True,
          meaning="False: skip unusable examples with a warning (`open_dataset`)"),
    Field("data.options", {}, meaning="extra keywords of the reader (see [data.md]"
          "(data.md)), each checked against the reader's own"),
    Field("data.heldout_root", None, NAME.or_none(), resumable=True, kind=str, added=True,
          made_if_missing=True, meaning="the demo's held-out test set of other languages' "
          "voices (`data.ensure_heldout_corpus`); None: none"),
    Field("data.check_root", None, NAME.or_none(), resumable=True, kind=str, added=True,
          made_if_missing=True, meaning="the folder of the check sets"),
    Field("data.check_sets", (), Constraint(
        lambda v: isinstance(v, (tuple, list)) and all(name in checksets.CHECK_SETS
                                                       for name in v),
        f"check sets' names ({', '.join(checksets.CHECK_SETS)})"), resumable=True, added=True,
          meaning="check sets of speech the training corpus never heard, made and "
          "evaluated by the demo under `check_root` (`data.ensure_check_set`)"),
    Field("data.check_mixtures", None, POSITIVE_INT.or_none(), resumable=True, kind=int,
          added=True, meaning="mixtures per check set; None: each set's own size"),

    Field("loss.objective", "nll", one_of(losses.OBJECTIVES),
          meaning="the training loss of every exit"),
    Field("loss.mean_loss", "nll", one_of(losses.MEAN_LOSSES),
          meaning="what the estimate learns from (docs/method.md §3)"),
    Field("loss.permutation", "joint", one_of(losses.PERMUTATIONS),
          meaning="one speaker permutation for all exits, or one per exit"),
    # Any literal, so that an override may set weights or reset them to None (a tuple
    # field's flag parses "None" as `(None,)`).
    Field("loss.exit_weights", None, kind=object,
          meaning="each exit's weight in the loss, one non-negative number per exit, "
          "not all zero; None: equal"),

    Field("optimizer.learning_rate", 1e-3, POSITIVE_NUMBER, meaning="AdamW's peak rate"),
    Field("optimizer.warmup_steps", 1000, NON_NEGATIVE_INT, meaning="linear warm-up"),
    # A resumed run that raises `steps` sets it to the run's first `steps`, so that the
    # schedule continues without a jump (`schedule_change`).
    Field("optimizer.decay_steps", 0, NON_NEGATIVE_INT, resumable=True, added=True,
          meaning="the cosine decay's horizon; 0: `steps`"),
    Field("optimizer.end_learning_rate_fraction", 0.01, FRACTION,
          meaning="where the cosine decay ends, as a fraction of the peak"),
    Field("optimizer.weight_decay", 0.01, NON_NEGATIVE_NUMBER, meaning="AdamW's"),
    Field("optimizer.clip_norm", 5.0, POSITIVE_NUMBER, meaning="global gradient-norm clip"),
    Field("optimizer.max_consecutive_nonfinite", 100, POSITIVE_INT,
          meaning="non-finite updates skipped in a row before training stops"),

    Field("inference.target_snr_db", Owned(stopping, "TARGET_SNR_DB"), FINITE_NUMBER,
          resumable=True, added=True,
          meaning=f"{_NOT_TRAINING}the stopping target `eesep separate` stops at with the "
          "run, and `eesep evaluate`'s report heads with"),
    Field("inference.confidence", Owned(stopping, "CONFIDENCE"), PROBABILITY,
          resumable=True, added=True, meaning=f"{_NOT_TRAINING}the confidence it stops at"),
    Field("inference.chunk_seconds", Owned(inference, "CHUNK_SECONDS"), POSITIVE_NUMBER,
          resumable=True, added=True, meaning=f"{_NOT_TRAINING}the chunk length of "
          "separation"),
    Field("inference.overlap_seconds", Owned(inference, "OVERLAP_SECONDS"), POSITIVE_NUMBER,
          resumable=True, added=True,
          meaning=f"{_NOT_TRAINING}the chunks' overlap, at most half a chunk"),
    Field("inference.chunk_batch", Owned(inference, "CHUNK_BATCH"), POSITIVE_INT,
          resumable=True, added=True, meaning=f"{_NOT_TRAINING}chunks separated at once"),
    Field("evaluation.targets_db", Owned(stopping, "TARGETS_DB"), FINITE_NUMBERS,
          resumable=True, added=True, meaning=f"{_NOT_TRAINING}the reports' targets"),
    Field("evaluation.confidences", Owned(stopping, "CONFIDENCES"), PROBABILITIES,
          resumable=True, added=True, meaning=f"{_NOT_TRAINING}the reports' confidences"),
    Field("evaluation.calibration_method", "nll", one_of(probabilistic.POSTHOC_METHODS),
          resumable=True, added=True,
          meaning=f"{_NOT_TRAINING}how `eesep calibrate` fits the post-hoc scales "
          "(docs/calibration.md)"),
    Field("evaluation.delta", 0.1, OPEN_UNIT_INTERVAL, resumable=True, added=True,
          meaning=f"{_NOT_TRAINING}the share of utterances `eesep calibrate`'s certified "
          "threshold lets miss the target"),
    Field("evaluation.epsilon", 0.1, OPEN_UNIT_INTERVAL, resumable=True, added=True,
          meaning=f"{_NOT_TRAINING}the probability that the certificate is wrong"),
)
# fmt: on
_FIELDS = {field.key: field for field in FIELDS}


def default(key):
  """The default of dotted `key`, e.g. `default("inference.confidence")` is
  `stopping.CONFIDENCE`."""
  value = _FIELDS[key].default
  return value.value() if isinstance(value, Owned) else value


def _set(config, key, value):
  """Sets dotted `key` of `config` to `value`, making the sections it is in."""
  *sections, name = key.split(".")
  for section in sections:
    if section not in config:
      config[section] = ml_collections.ConfigDict()
    config = config[section]
  config[name] = value


def base_config(*, preset, dataset, data_root, sample_rate=8000, num_sources=2):
  """The fields every experiment has (`FIELDS`), with defaults for a `preset` on a
  `dataset`.

  Args:
    preset: a `models.preset` name; its fields land in `config.model`.
    dataset: an `eesep_jax.data.open_dataset` kind.
    data_root: the dataset's root folder.
    sample_rate: the model's sample rate.
    num_sources: sources per mixture.
  """
  given = {"dataset": dataset, "data_root": data_root}
  config = ml_collections.ConfigDict()
  for spec in FIELDS:
    if spec.key.startswith("model."):
      # `PressNetConfig` holds the model's fields, and their defaults by preset.
      if "model" not in config:
        config.model = _config_dict(
          models.preset(preset, sample_rate=sample_rate, num_sources=num_sources)
        )
    elif isinstance(spec.default, Given):
      _set(config, spec.key, given[spec.default.argument])
    else:
      _set(config, spec.key, spec.initial())
  return config


def _attributes(cls):
  """`{name: description}` of the `Attributes:` section of `cls`'s docstring."""
  docs, name = {}, None
  for line in inspect.getdoc(cls).partition("Attributes:")[2].splitlines():
    match = re.fullmatch(r"  (\w+): (.*)", line)
    if match:
      name, docs[match[1]] = match[1], match[2]
    elif name and line.startswith("    "):
      docs[name] += f" {line.strip()}"
  return docs


def _cell(spec):
  """The default column of `markdown_table` for `spec`."""
  if isinstance(spec.default, Owned):
    return f"`{spec.default.value()!r}` (`{spec.default}`)"
  if spec.default == _PRESET:
    return "the preset's"
  if isinstance(spec.default, Given):
    return f"`base_config`'s `{spec.default.argument}`"
  return f"`{spec.default!r}`"


def markdown_table():
  """The table of every field, as docs/usage.md shows it: key, default, what it must
  be, whether a resumed run may change it, and what it does (a model field's meaning is
  its `PressNetConfig` attribute's)."""
  meanings = {f"model.{name}": text for name, text in _attributes(models.PressNetConfig).items()}
  meanings.update(
    {
      f"model.variance.{name}": text
      for name, text in _attributes(type(models.PressNetConfig().variance)).items()
    }
  )
  rows = ["| key | default | must be | resumable | meaning |", "|---|---|---|---|---|"]
  for spec in FIELDS:
    if spec.must_be:
      must_be = spec.must_be.what
    else:
      must_be = "checked by `PressNetConfig`" if spec.key in meanings else "see its meaning"
    meaning = spec.meaning or meanings[spec.key].removesuffix(".")
    rows.append(
      f"| `{spec.key}` | {_cell(spec)} | {must_be} "
      f"| {'yes' if spec.resumable else 'no'} | {meaning} |"
    )
  return "\n".join(rows) + "\n"


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


_ABSENT = "(absent)"


def with_defaults(config):
  """`config` with the fields added to the schema since it was saved (`Field.added`) at
  their defaults: a run's `config.json` from before them still loads
  (`checkpoints.read_config`)."""
  for spec in FIELDS:
    if spec.added and _get(config, spec.key) is _ABSENT:
      _set(config, spec.key, spec.initial())
  return config


def _get(config, key):
  """The value of dotted `key` in `config`; `_ABSENT` where the config lacks it."""
  node = config
  for name in key.split("."):
    if name not in node:
      return _ABSENT
    node = node[name]
  return node


# The configs shipped in the package, found by path: they import this module, which
# imports none of them.
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def packaged_configs():
  """The names of the configs shipped in the package: `["demo"]`."""
  return sorted(path.stem for path in PACKAGED_CONFIGS.glob("*.py") if path.stem != "__init__")


def resolve(path):
  """The file of the packaged config `path` names (a bare name, `"demo"`, that is no
  file here); else `path` itself, as a `pathlib.Path`."""
  path = pathlib.Path(path)
  if (
    len(path.parts) == 1
    and not path.suffix
    and not path.exists()
    and path.name in packaged_configs()
  ):
    return PACKAGED_CONFIGS / f"{path.name}.py"
  return path


FLAG = "config"
# The flags `config_flags` takes as overrides of the `--config` file's fields:
# `--config.KEY[=VALUE]`, and `--noconfig.KEY` for False.
_OVERRIDE = re.compile(rf"^--?(?:no)?{FLAG}\.([^=]*)")


def _none_override(arg):
  """The key of a `--config.KEY=None` flag whose field may be None; else None."""
  match = re.fullmatch(rf"--?{FLAG}\.([^=]+)=None", arg)
  if match is None or match.group(1) not in _FIELDS:
    return None
  must_be = _FIELDS[match.group(1)].must_be
  return match.group(1) if must_be is not None and must_be.test(None) else None


def _names_override(arg):
  """`arg`, with a tuple field's `--config.KEY=a,b` of names (no Python literal, which
  `config_flags` would read as the one name "a,b") written as `('a', 'b')`."""
  match = re.fullmatch(rf"(--?{FLAG}\.([^=]+))=([^()\[\]'\"]+)", arg)
  if match is None or not isinstance(getattr(_FIELDS.get(match.group(2)), "default", None), tuple):
    return arg
  try:
    ast.literal_eval(match.group(3))
    return arg
  except (ValueError, SyntaxError):
    names = tuple(name.strip() for name in match.group(3).split(",") if name.strip())
    return f"{match.group(1)}={names!r}"


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
  config_flags.DEFINE_config_file(
    FLAG,
    help_string="an experiment config file",
    flag_values=flag_values,
    lock_config=False,
    sys_argv=argv,
  )
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
  shipped in the package (`resolve`: `"demo"`); a colon in it passes what follows to
  `get_config` (`config_flags`).

  The config file asks for demo-corpus synthesis at its own roots (`data.root`, and
  the demo's held-out and check sets': `Field.made_if_missing`): overriding any of
  these roots alone turns `data.synthesize_if_missing` off, so that a mistyped root
  fails instead of filling a new folder with a corpus.

  Returns:
    `(config, overrides)`: the config, and `{dotted key: value}` of the fields set.

  Raises:
    errors.UsageError: when `path` is no config file, or a flag names a field the
      config does not have, gives it no value or one of another type; one line,
      `--config.KEY=VALUE: what is wrong`.
  """
  path = resolve(path)
  if not pathlib.Path(str(path).partition(":")[0]).is_file():
    raise errors.UsageError(
      f"--config {path}",
      "the config file does not exist (configs "
      f"shipped in the package: {', '.join(packaged_configs())})",
    )
  flag_args = [str(arg) for arg in flag_args]
  # `config_flags` types a value by the field's default, so `None` would be the string
  # "None" (or no int): a field that may be None takes it here instead.
  none_keys = [_none_override(arg) for arg in flag_args]
  set_none = [key for key in none_keys if key is not None]
  flag_args = [_names_override(arg) for arg, key in zip(flag_args, none_keys) if key is None]
  try:
    flag_values, unparsed = _parse(["eesep", f"--{FLAG}={path}", *flag_args])
  except (flags.Error, AttributeError, KeyError, IndexError) as error:
    raise _flag_error(path, flag_args, error) from error
  if unparsed:
    raise _unparsed_error(flag_args, unparsed[0])
  config = flag_values[FLAG].value
  overrides = dict(flag_values[FLAG].override_values)
  for key in set_none:
    parent, _, name = key.rpartition(".")
    (config_path.get_value(parent, config) if parent else config)[name] = None
    overrides[key] = None
  roots_moved = {key for key, value in overrides.items() if value is not None}
  if (
    roots_moved & {spec.key for spec in FIELDS if spec.made_if_missing}
    and "data.synthesize_if_missing" not in overrides
  ):
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
      return errors.UsageError(
        f"{given} {value}", f"this field takes its value only after '=': {given}={value}"
      )
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
        return errors.UsageError(
          arg, f"cannot apply it to {path}: {match.group(1)!r} is not a field of this config"
        )
  message = str(error)
  missing = re.fullmatch(r"Missing value for flag (\S+)", message)
  if missing:
    return errors.UsageError(missing.group(1), "needs a value: --config.KEY=VALUE")
  # `flag --config.KEY=VALUE: <the parser's error>`, the parser's error as its context.
  cause = error.__context__
  value = re.fullmatch(rf"flag (--{FLAG}\.([^=]*)=.*): {re.escape(str(cause))}", message, re.DOTALL)
  if isinstance(error, flags.IllegalFlagValueError) and value:
    kind = config_path.get_type(value.group(2), config).__name__
    # absl's bool parser gives `(message, value)`.
    problem = ": ".join([str(cause.args[0]), *map(repr, cause.args[1:])])
    return errors.UsageError(
      value.group(1),
      f"cannot apply it to {path}: {value.group(2)!r} is {_article(kind)} {kind} field: {problem}",
    )
  return errors.UsageError(f"--config {path}", message.splitlines()[0])


def _article(word):
  return "an" if word[0] in "aeiou" else "a"


def model_config(config):
  """The `models.PressNetConfig` an experiment config describes."""
  return models.PressNetConfig.from_dict(config.model.to_dict())


# ----------------------------------------------------------------------------------
# Validation: every field checked before a run writes anything.


def get_field(config, key):
  """The value of dotted `key`, e.g. `"inference.target_snr_db"`. A field older configs
  lack (`Field.added`: the `inference` and `evaluation` sections, `data.strict`, ...) is
  at its default; `errors.UsageError` when the config lacks any other."""
  value = _get(config, key)
  if value is not _ABSENT:
    return value
  if key in _FIELDS and _FIELDS[key].added:
    return default(key)
  raise errors.UsageError(f"config.{key}", "missing: the config has no such field")


def validate_config(config):
  """Checks every field of an experiment config: each against its `Field.must_be`, the
  data options against the reader's own, the model buildable, and the fields that
  depend on others.

  Raises:
    errors.UsageError: naming the first field at fault (`config.steps`, ...).
  """
  for spec in FIELDS:
    if spec.must_be is not None:
      value = get_field(config, spec.key)
      if not spec.must_be.test(value):
        raise errors.UsageError(f"config.{spec.key}", f"{value!r}: must be {spec.must_be.what}")
  kind = get_field(config, "data.kind")
  accepted = set(inspect.signature(readers.READERS[kind]).parameters) - {"root", "split"}
  options = get_field(config, "data.options")
  unknown = sorted(set(options.to_dict() if options else {}) - accepted)
  if unknown:
    raise errors.UsageError(
      f"config.data.options.{unknown[0]}",
      f"not an option of the {kind} reader (options: {', '.join(sorted(accepted)) or 'none'})",
    )
  try:
    model = model_config(config)
  except (ValueError, TypeError) as error:
    raise errors.UsageError("config.model", str(error)) from None
  chunk, overlap = (
    get_field(config, f"inference.{key}") for key in ("chunk_seconds", "overlap_seconds")
  )
  if 2 * overlap > chunk:
    raise errors.UsageError(
      "config.inference.overlap_seconds",
      f"{overlap!r}: must be at most half of inference.chunk_seconds ({chunk!r})",
    )
  weights = get_field(config, "loss.exit_weights")
  if weights is not None and not (
    isinstance(weights, (tuple, list))
    and len(weights) == model.num_exits
    and all(_is_number(w) and w >= 0 for w in weights)
    and any(weights)
  ):
    raise errors.UsageError(
      "config.loss.exit_weights",
      f"{weights!r}: must be {model.num_exits} non-negative numbers, one per exit, not all zero",
    )


# ----------------------------------------------------------------------------------
# Resuming: what a run restarted in the same workdir may change.

# A resumed run continues the same training: only when it stops, how it logs and
# checkpoints, and where its data lives may change (`Field.resumable`). Everything else
# (the model, whose parameters the checkpoint holds; the optimizer, batch, data stream
# and seed, whose state it holds) needs a new workdir. A section every field of which
# may change (`inference`, `evaluation`: training does not read them) may change in any
# field, one a config adds too.
RESUMABLE_SECTIONS = tuple(
  section
  for section in dict.fromkeys(spec.key.split(".")[0] for spec in FIELDS if "." in spec.key)
  if all(spec.resumable for spec in FIELDS if spec.key.startswith(f"{section}."))
)
RESUMABLE_FIELDS = tuple(
  spec.key for spec in FIELDS if spec.resumable and spec.key.split(".")[0] not in RESUMABLE_SECTIONS
)


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
  return (
    f"the learning rate decays over {old} steps in this run, and this config would "
    f"make that {new}: the rate would jump mid-run. To train to step {config.steps} "
    f"on the same schedule, add --config.optimizer.decay_steps={old} (the rate stays "
    f"at its end value after step {old}); for a longer schedule, train in a new "
    "--workdir"
  )


def resume_differences(saved, config):
  """`[(key, saved value, new value)]`: the fields outside `RESUMABLE_FIELDS` (and the
  `RESUMABLE_SECTIONS`) in which
  `config` differs from the `saved` config of the run it would resume; `"(absent)"`
  stands for a field one of them lacks."""
  old, new = _flat(saved), _flat(config)
  return [
    (key, old.get(key, _ABSENT), new.get(key, _ABSENT))
    for key in sorted(old.keys() | new.keys())
    if key not in RESUMABLE_FIELDS
    and key.split(".")[0] not in RESUMABLE_SECTIONS
    and old.get(key, _ABSENT) != new.get(key, _ABSENT)
  ]
