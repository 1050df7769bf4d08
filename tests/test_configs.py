"""Every experiment config loads, builds its model and names options its reader takes;
`--config.KEY=VALUE` flags reach the config typed, or fail in one line; every default
of the command line and the schema is its owner's."""

import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import run_config
from eesep_jax import config_lib
from eesep_jax import errors
from eesep_jax import inference
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.app import cli
from eesep_jax.app import demo
from eesep_jax.core import stopping
from eesep_jax.data import readers
from eesep_jax.training import checkpoints
from eesep_jax.training import train

REPO = pathlib.Path(__file__).parents[1]
ABLATION_DEMO = REPO / "experiments" / "configs" / "ablation_demo.py"
# The dataset configs of `experiments/`, and those that ship in the package (the demo).
CONFIGS = sorted(
  [
    *(REPO / "experiments" / "configs").glob("*.py"),
    *(path for path in (REPO / "eesep_jax" / "configs").glob("*.py") if path.stem != "__init__"),
  ]
)
# The split names each layout's own scripts use.
SPLITS = {
  "wsj0-mix": {"tr", "cv", "tt"},
  "wham": {"tr", "cv", "tt"},
  "whamr": {"tr", "cv", "tt"},
  "voicebank-demand": {"train", "valid", "test"},
  "librimix": {"train-360", "train-100", "dev", "test"},
}


def test_every_experiment_of_the_issue_has_a_config():
  assert {path.stem for path in CONFIGS} >= {
    "demo",
    "wsj0_2mix_press4",
    "wsj0_2mix_press12",
    "libri2mix_press4",
    "whamr_press4",
    "voicebank_demand_press4",
  }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_config_is_complete_and_consistent(path):
  config = config_lib.load_config(path)
  for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
    assert config[key] > 0, key
  model = config_lib.model_config(config)
  assert model.num_exits >= 1
  reader = readers.READERS[config.data.kind]
  accepted = set(inspect.signature(reader).parameters) - {"root", "split"}
  assert set(config.data.options.to_dict()) <= accepted
  splits = {config.data.train_split, config.data.valid_split, config.data.test_split}
  assert splits <= SPLITS[config.data.kind]
  assert config.data.valid_split != config.data.train_split


@pytest.mark.parametrize(
  "path",
  # The demo-scale ablation runs on the demo's 2-core CPU, in the demo's float32.
  sorted(set((REPO / "experiments" / "configs").glob("*.py")) - {ABLATION_DEMO}),
  ids=lambda path: path.stem,
)
def test_accelerator_configs_compute_in_bfloat16(path):
  # The experiments' configs are for accelerators; the demo (CPU) stays float32.
  assert config_lib.model_config(config_lib.load_config(path)).dtype == "bfloat16"


# ----------------------------------------------------------------------------------
# One schema, one default per value, and the `--config` flags of `eesep train`.

DEMO_CONFIG = REPO / "eesep_jax" / "configs" / "demo.py"


@pytest.fixture
def trained(monkeypatch):
  """`train.train_and_evaluate` replaced: the configs `eesep train` would train."""
  calls = []
  monkeypatch.setattr(
    train, "train_and_evaluate", lambda config, workdir, **options: calls.append(config)
  )
  return calls


def _main(argv, capsys):
  """`eesep ARGV` in this process: `(exit code, stderr lines)`."""
  try:
    code = cli.main([str(arg) for arg in argv])
  except SystemExit as exit_:
    code = exit_.code
  return code, capsys.readouterr().err.splitlines()


def test_a_field_that_may_be_none_takes_none_from_a_flag():
  config, overrides = config_lib.parse_flags(
    DEMO_CONFIG,
    ["--config.data.heldout_root=None", "--config.data.check_mixtures=None"],
  )
  assert config.data.heldout_root is None and config.data.check_mixtures is None
  assert overrides == {"data.heldout_root": None, "data.check_mixtures": None}
  # Dropping a report set moves no corpus root: the demo still makes its corpus.
  assert config.data.synthesize_if_missing is True
  config_lib.validate_config(config)
  # A field that may not be None still refuses it, naming its type.
  with pytest.raises(errors.UsageError, match="'steps' is an int field"):
    config_lib.parse_flags(DEMO_CONFIG, ["--config.steps=None"])


def test_a_list_of_names_is_a_tuple_of_names():
  for flag, names in [
    ("--config.data.check_sets=kokoro,recorded", ("kokoro", "recorded")),
    ("--config.data.check_sets=kokoro", ("kokoro",)),
    ("--config.data.check_sets=('kokoro-blend',)", ("kokoro-blend",)),
    ("--config.data.check_sets=()", ()),
  ]:
    config, _ = config_lib.parse_flags(DEMO_CONFIG, [flag])
    assert config.data.check_sets == names, flag
  # Numbers stay numbers.
  config, _ = config_lib.parse_flags(DEMO_CONFIG, ["--config.evaluation.targets_db=5,10"])
  assert config.evaluation.targets_db == (5, 10)
  with pytest.raises(errors.UsageError, match="check_sets.*'kokoro', 'nope'"):
    config_lib.validate_config(
      config_lib.parse_flags(DEMO_CONFIG, ["--config.data.check_sets=kokoro,nope"])[0]
    )


def test_config_flags_reach_nested_fields_typed(tmp_path, trained, capsys):
  code, stderr = _main(
    [
      "train",
      "--config",
      "demo",
      "--workdir",
      tmp_path,
      "--config.model.width=48",
      "--config.data.dynamic_mixing=False",
      "--config.model.variance.block_length",
      "64",
      "--noconfig.data.strict",
      "--config.evaluation.targets_db=5,10",
      "--config.inference.confidence=0.95",
      "--config.loss.exit_weights=None",
      "--config.optimizer.learning_rate=1",
    ],
    capsys,
  )
  assert code is None, stderr
  [config] = trained
  assert config.model.width == 48
  assert config.data.dynamic_mixing is False and config.data.strict is False
  assert config.model.variance.block_length == 64  # None in the preset, typed int.
  assert config.evaluation.targets_db == (5, 10)
  assert config.inference.confidence == 0.95
  assert config.loss.exit_weights is None
  assert isinstance(config.optimizer.learning_rate, float)
  # The rest is the packaged demo config's.
  assert config.steps == config_lib.load_config(DEMO_CONFIG).steps


def test_train_takes_the_demo_config_by_path_from_the_repository(
  monkeypatch, tmp_path, trained, capsys
):
  monkeypatch.chdir(REPO)
  code, stderr = _main(
    ["train", "--config", "eesep_jax/configs/demo.py", "--workdir", tmp_path, "--config.steps=7"],
    capsys,
  )
  assert code is None, stderr
  assert trained[0].steps == 7


@pytest.mark.parametrize(
  "flags, pattern",
  [
    (
      ["--config.model.widht=48"],
      r"--config\.model\.widht=48: cannot apply it to .*demo\.py: 'model\.widht' is not a "
      r"field of this config",
    ),
    (
      ["--noconfig.data.strikt"],
      r"--noconfig\.data\.strikt: cannot apply it to .*demo\.py: 'data\.strikt' is not a "
      r"field of this config",
    ),
    (
      ["--config.steps=many"],
      r"--config\.steps=many: cannot apply it to .*demo\.py: 'steps' is an int field: "
      r"invalid literal for int\(\) with base 10: 'many'",
    ),
    (
      ["--config.data.dynamic_mixing=maybe"],
      r"--config\.data\.dynamic_mixing=maybe: cannot apply it to .*demo\.py: "
      r"'data\.dynamic_mixing' is a bool field: .*'maybe'",
    ),
    (["--config.steps"], r"--config\.steps: needs a value: --config\.KEY=VALUE"),
    (
      ["--config.data.strict", "False"],
      r"--config\.data\.strict False: this field takes its value only after '=': "
      r"--config\.data\.strict=False",
    ),
  ],
  ids=["unknown", "unknown-bool", "int", "bool", "no-value", "bool-after-space"],
)
def test_a_bad_config_flag_is_one_line_and_a_usage_error(flags, pattern, tmp_path, trained, capsys):
  code, stderr = _main(["train", "--config", "demo", "--workdir", tmp_path, *flags], capsys)
  assert code == errors.USAGE_EXIT_CODE
  assert len(stderr) == 1 and re.fullmatch(f"error: {pattern}", stderr[0]), stderr
  assert not trained


def test_config_flags_of_other_commands_and_missing_configs_are_usage_errors(tmp_path, capsys):
  code, stderr = _main(
    ["separate", "x.wav", "--checkpoint", tmp_path, "--out-dir", tmp_path, "--config.steps=5"],
    capsys,
  )
  assert (code, stderr) == (2, ["error: --config.steps=5: overrides only apply to `train`"])
  code, stderr = _main(
    ["train", "--config", tmp_path / "nowhere.py", "--workdir", tmp_path], capsys
  )
  assert code == 2 and len(stderr) == 1
  assert stderr[0].endswith(
    "nowhere.py: the config file does not exist (configs shipped in the package: demo)"
  )
  code, stderr = _main(
    ["train", "--config", "demo", "--workdir", tmp_path, "--wrkdir", "x"], capsys
  )
  assert code == 2 and stderr == ["error: unrecognized arguments: --wrkdir x (see eesep --help)"]


def test_a_config_file_without_or_with_a_failing_get_config_is_named(tmp_path):
  (tmp_path / "none.py").write_text("steps = 1\n")
  (tmp_path / "fails.py").write_text("def get_config():\n  raise ValueError('no data')\n")
  config_lib.load_config(DEMO_CONFIG)  # A config loaded before must not stand in.
  with pytest.raises(errors.UsageError, match=r"none\.py: the file defines no get_config"):
    config_lib.load_config(tmp_path / "none.py")
  with pytest.raises(
    errors.UsageError,
    match=r"fails\.py: its get_config\(\) failed: "
    r"ValueError: no data$",
  ):
    config_lib.load_config(tmp_path / "fails.py", ["steps=1"])


def test_what_follows_a_colon_is_get_configs_argument(tmp_path):
  (tmp_path / "sized.py").write_text("def get_config(size):\n  return {'size': size}\n")
  assert config_lib.load_config(f"{tmp_path / 'sized.py'}:large", ["size=small"]) == {
    "size": "small"
  }
  assert config_lib.load_config(f"{tmp_path / 'sized.py'}:large")["size"] == "large"


def _run_defaults(args, **inference):
  """`args` with its run defaults read from `run_config(**inference)`."""
  cli._apply_run_defaults(args, run_config(**inference))  # pylint: disable=protected-access
  return args


def test_every_cli_default_is_its_owners(capsys):
  separate = _run_defaults(
    cli.parse_args(["separate", "x.wav", "--checkpoint", "c", "--out-dir", "o"])
  )
  assert (separate.target_snr, separate.confidence) == (stopping.TARGET_SNR_DB, stopping.CONFIDENCE)
  assert (separate.chunk_seconds, separate.overlap_seconds, separate.chunk_batch) == (
    inference.CHUNK_SECONDS,
    inference.OVERLAP_SECONDS,
    inference.CHUNK_BATCH,
  )
  calibrate = _run_defaults(cli.parse_args(["calibrate", "--checkpoint", "c", "--out", "o"]))
  assert calibrate.target_snr == stopping.TARGET_SNR_DB
  assert (calibrate.delta, calibrate.epsilon) == (
    calibration_report.DELTA,
    calibration_report.EPSILON,
  )
  assert (calibrate.chunk_seconds, calibrate.overlap_seconds) == (
    inference.CHUNK_SECONDS,
    inference.OVERLAP_SECONDS,
  )
  for args in (
    calibrate,
    _run_defaults(cli.parse_args(["evaluate", "--checkpoint", "c", "--out", "o"])),
  ):
    assert (args.targets, args.confidences) == (stopping.TARGETS_DB, stopping.CONFIDENCES)
  with pytest.raises(SystemExit):
    cli.parse_args(["separate", "--help"])
  assert (
    f"(default: the run's config.inference.target_snr_db; {stopping.TARGET_SNR_DB:g} "
    "unless its config sets one)"
  ) in " ".join(capsys.readouterr().out.split())
  # Given, a flag wins.
  assert (
    _run_defaults(
      cli.parse_args(
        ["separate", "x.wav", "--checkpoint", "c", "--out-dir", "o", "--target-snr", "12"]
      )
    ).target_snr
    == 12.0
  )


def test_the_run_config_sets_what_a_flag_not_given_defaults_to():
  """A run trained to stop at 5 dB with p = 0.5 (as the demo's) separates and calibrates
  at that target unless told otherwise."""
  run = {"target_snr_db": 5.0, "confidence": 0.5, "chunk_seconds": 2.0, "chunk_batch": 3}
  separate = _run_defaults(
    cli.parse_args(
      ["separate", "x.wav", "--checkpoint", "c", "--out-dir", "o", "--confidence", "0.8"]
    ),
    **run,
  )
  assert (
    separate.target_snr,
    separate.confidence,
    separate.chunk_seconds,
    separate.overlap_seconds,
    separate.chunk_batch,
  ) == (5.0, 0.8, 2.0, inference.OVERLAP_SECONDS, 3)
  calibrate = _run_defaults(cli.parse_args(["calibrate", "--checkpoint", "c", "--out", "o"]), **run)
  assert (calibrate.target_snr, calibrate.chunk_seconds) == (5.0, 2.0)


def test_the_defaults_follow_their_owners(monkeypatch):
  """No copy anywhere: a changed owner changes the command line and the schema."""
  monkeypatch.setattr(stopping, "TARGET_SNR_DB", 12.0)
  monkeypatch.setattr(stopping, "CONFIDENCES", (0.8,))
  monkeypatch.setattr(inference, "CHUNK_SECONDS", 3.0)
  args = _run_defaults(cli.parse_args(["separate", "x.wav", "--checkpoint", "c", "--out-dir", "o"]))
  assert (args.target_snr, args.chunk_seconds) == (12.0, 3.0)
  assert _run_defaults(
    cli.parse_args(["evaluate", "--checkpoint", "c", "--out", "o"])
  ).confidences == (0.8,)
  config = config_lib.base_config(preset="tiny", dataset="folder", data_root="x")
  assert (
    config.inference.target_snr_db,
    config.inference.chunk_seconds,
    config.evaluation.confidences,
  ) == (12.0, 3.0, (0.8,))


def test_the_parser_is_built_without_jax():
  code = (
    "import sys; from eesep_jax.app import cli; cli.build_parser(); "
    "assert 'jax' not in sys.modules, 'jax imported'"
  )
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_the_library_defaults_are_the_owners():
  config = config_lib.base_config(preset="tiny", dataset="folder", data_root="x")
  assert config.inference.to_dict() == {
    "target_snr_db": stopping.TARGET_SNR_DB,
    "confidence": stopping.CONFIDENCE,
    "chunk_seconds": inference.CHUNK_SECONDS,
    "overlap_seconds": inference.OVERLAP_SECONDS,
    "chunk_batch": inference.CHUNK_BATCH,
  }
  assert config.evaluation.to_dict() == {
    "targets_db": stopping.TARGETS_DB,
    "confidences": stopping.CONFIDENCES,
    "calibration_method": "nll",  # What `calibrate` and `eesep calibrate` fit by default.
    "delta": 0.1,  # The certificate's, as docs/calibration.md states them.
    "epsilon": 0.1,
  }
  config_lib.validate_config(config)
  separate = inspect.signature(inference.separate).parameters
  assert (separate["target_snr_db"].default, separate["confidence"].default) == (
    stopping.TARGET_SNR_DB,
    stopping.CONFIDENCE,
  )
  calibrate = inspect.signature(calibration_report.calibrate).parameters
  assert calibrate["target_snr_db"].default == stopping.TARGET_SNR_DB
  assert calibrate["targets"].default == stopping.TARGETS_DB
  assert (calibrate["delta"].default, calibrate["epsilon"].default) == (0.1, 0.1)
  assert calibrate["method"].default == "nll"


def test_the_calibration_report_uses_the_evaluation_grid():
  for function in (
    calibration_report.calibrate,
    calibration_report.calibration_report,
    evaluate.evaluate_model,
    evaluate.summarize,
  ):
    assert inspect.signature(function).parameters["confidences"].default == (
      stopping.CONFIDENCES
    ), function.__name__


def test_the_packaged_demo_config_loads_from_any_directory(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  assert demo.DEMO_CONFIG.is_absolute() and demo.DEMO_CONFIG == config_lib.resolve("demo")
  assert "demo" in config_lib.packaged_configs()
  config = config_lib.load_config("demo")
  assert config.to_dict() == config_lib.load_config(demo.DEMO_CONFIG).to_dict()
  # The demo's own stopping target, read by the demo from its config.
  assert config.inference.target_snr_db == 5.0 != stopping.TARGET_SNR_DB
  grid = demo._grid(config, config.inference.target_snr_db)  # pylint: disable=protected-access
  assert 5.0 in grid["targets"] and set(stopping.TARGETS_DB) <= set(grid["targets"])
  assert config.inference.confidence in grid["confidences"]
  # A file of that name in the working directory is that file.
  (tmp_path / "demo").write_text("def get_config():\n  return {'steps': 3}\n")
  assert config_lib.load_config("demo")["steps"] == 3


def test_a_run_saved_before_the_inference_sections_loads_and_resumes(tmp_path):
  config = config_lib.load_config(DEMO_CONFIG)
  saved = json.loads(config.to_json_best_effort())
  del saved["inference"], saved["evaluation"]
  (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps(saved))
  old = checkpoints.read_config(tmp_path)
  assert old.inference.target_snr_db == stopping.TARGET_SNR_DB
  assert tuple(old.evaluation.confidences) == stopping.CONFIDENCES
  config_lib.validate_config(old)
  # The sections do not change training: a resumed run may set them.
  changed = config_lib.load_config(DEMO_CONFIG, ["inference.chunk_seconds=2.0"])
  assert config_lib.resume_differences(old, changed) == []
  changed.model.width = 48
  assert config_lib.resume_differences(old, changed) == [("model.width", config.model.width, 48)]


def test_a_run_resumes_with_other_layer_forms_or_from_before_them(tmp_path):
  config = config_lib.load_config(DEMO_CONFIG)
  saved = json.loads(config.to_json_best_effort())
  del saved["model"]["recurrence_form"], saved["model"]["depthwise_form"]
  (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps(saved))
  old = checkpoints.read_config(tmp_path)
  assert config_lib.model_config(old).recurrence_form == "auto"
  # The forms run the same function: a run may move between a CPU and an accelerator.
  changed = config_lib.load_config(
    DEMO_CONFIG, ["model.recurrence_form=associative", "model.depthwise_form=grouped"]
  )
  assert config_lib.resume_differences(old, changed) == []
  with pytest.raises(errors.UsageError, match="recurrence_form='scan'"):
    config_lib.validate_config(config_lib.load_config(DEMO_CONFIG, ["model.recurrence_form=scan"]))


@pytest.mark.parametrize(
  "override, pattern",
  [
    (
      "inference.confidence=1.5",
      r"config\.inference\.confidence: 1\.5: must be a "
      r"probability in \(0, 1\]",
    ),
    (
      "inference.target_snr_db=inf",
      r"config\.inference\.target_snr_db: inf: must be a "
      r"finite number",
    ),
    (
      "inference.overlap_seconds=3.0",
      r"config\.inference\.overlap_seconds: 3\.0: must be "
      r"at most half of inference\.chunk_seconds",
    ),
    (
      "evaluation.confidences=(0.5,2)",
      r"config\.evaluation\.confidences: \(0\.5, 2\): must "
      r"be one or more probabilities",
    ),
    ("loss.exit_weights", r"config\.loss\.exit_weights: True: must be 3 non-negative"),
  ],
)
def test_the_inference_sections_are_validated(override, pattern):
  config = config_lib.load_config(DEMO_CONFIG, [override])
  with pytest.raises(errors.UsageError, match=f"^{pattern}"):
    config_lib.validate_config(config)
