"""`runs.load`: a trained run read whole, its post-hoc file present, absent or damaged."""

import shutil

import jax
import numpy as np
import pytest

from eesep_jax import config_lib
from eesep_jax import errors
from eesep_jax import runs
from eesep_jax.analysis import calibration
from eesep_jax.training import checkpoints


@pytest.fixture
def run_copy(trained_workdir, tmp_path):
  """A copy of the session's trained run, whose post-hoc file a test may write."""
  return shutil.copytree(trained_workdir, tmp_path / "run")


def test_a_trained_run_is_its_config_checkpoint_and_defaults(trained_workdir):
  run = runs.load(trained_workdir)
  saved = checkpoints.read_config(trained_workdir)
  assert run.config.to_dict() == saved.to_dict()
  assert run.model_config == config_lib.model_config(saved)
  _, restored = checkpoints.restore_params(trained_workdir)
  assert list(run.variables) == ["params"]
  jax.tree.map(np.testing.assert_array_equal, run.variables, restored)
  assert run.defaults == runs.Defaults(
    target_snr_db=saved.inference.target_snr_db,
    confidence=saved.inference.confidence,
    chunk_seconds=saved.inference.chunk_seconds,
    overlap_seconds=saved.inference.overlap_seconds,
    chunk_batch=saved.inference.chunk_batch,
    targets_db=tuple(saved.evaluation.targets_db),
    confidences=tuple(saved.evaluation.confidences),
  )
  rate = run.model_config.sample_rate
  assert run.chunk_lengths() == (
    round(saved.inference.chunk_seconds * rate),
    round(saved.inference.overlap_seconds * rate),
  )
  # Never calibrated: no scales, and scales it has not are fitted in no regime.
  assert run.posthoc_scales is None and run.posthoc_regime is None
  assert not run.posthoc_fits(saved.inference.chunk_seconds, saved.inference.overlap_seconds)


def test_posthoc_scales_come_whole_with_their_regime(run_copy):
  num_exits = config_lib.model_config(runs.load(run_copy).config).num_exits
  calibration.save_posthoc(
    run_copy,
    {"beta_scale": [1.5] * num_exits},
    regime={"chunk_seconds": 1.0, "overlap_seconds": 0.25},
  )
  run = runs.load(run_copy)
  assert run.model_config.num_exits == num_exits
  assert run.model_config.variance.parameterisation.startswith("student")
  # The scales not fitted are the identity, one per exit.
  assert set(run.posthoc_scales) == {"beta_scale", "alpha_excess_scale", "crosstalk_slope"}
  np.testing.assert_array_equal(run.posthoc_scales["beta_scale"], [1.5] * num_exits)
  np.testing.assert_array_equal(run.posthoc_scales["alpha_excess_scale"], [1.0] * num_exits)
  np.testing.assert_array_equal(run.posthoc_scales["crosstalk_slope"], [0.0] * num_exits)
  assert run.posthoc_path == str(run_copy / calibration.POSTHOC_FILE)
  assert run.posthoc_regime == {"chunk_seconds": 1.0, "overlap_seconds": 0.25}
  rate = run.model_config.sample_rate
  assert run.posthoc_fits(1.0, 0.25)
  assert run.posthoc_fits(1.0 + 0.1 / rate, 0.25)  # The same chunks in samples.
  assert not run.posthoc_fits(2.0, 0.25) and not run.posthoc_fits(1.0, 0.5)


@pytest.mark.parametrize(
  "contents, problem",
  [
    ('{"beta_scale": [1.0, ', "damaged post-hoc calibration, not JSON"),
    (
      '{"beta_scale": [1.0, 1.0]}',
      "post-hoc beta_scale has shape (2,), not one value for each of the model's 3 exits. "
      "Run `eesep calibrate` again, or pass --no-posthoc.",
    ),
  ],
  ids=["truncated", "another_model's"],
)
def test_a_damaged_posthoc_file_is_one_line_naming_it_when_read(run_copy, contents, problem):
  path = run_copy / calibration.POSTHOC_FILE
  path.write_text(contents)
  run = runs.load(run_copy)  # `calibrate` loads the run to replace the file.
  assert run.model_config.num_exits == 3
  with pytest.raises(errors.DataError) as raised:
    _ = run.posthoc_scales
  message = str(raised.value)
  assert message.startswith(f"{path}: {problem}") and "\n" not in message


def test_a_relative_data_root_is_located_only_when_asked(tmp_path, monkeypatch):
  config = config_lib.base_config(preset="tiny", dataset="folder", data_root="data/demo")
  (tmp_path / "run").mkdir()
  checkpoints.write_config(config, tmp_path / "run")
  (tmp_path / "data" / "demo").mkdir(parents=True)
  (tmp_path / "notebooks").mkdir()
  monkeypatch.chdir(tmp_path / "notebooks")
  assert runs.load(tmp_path / "run").config.data.root == "data/demo"
  assert runs.load(tmp_path / "run", locate_data=True).config.data.root == str(
    tmp_path / "data" / "demo"
  )
  assert runs.locate("runs/demo") is None


def test_a_folder_that_is_no_run_is_a_usage_error(tmp_path):
  with pytest.raises(errors.UsageError, match=f"{tmp_path}: holds no config.json"):
    runs.load(tmp_path)


def test_a_run_restores_the_checkpoint_of_the_step_asked(run_copy):
  saved = sorted(
    int(path.name) for path in (run_copy / "checkpoints").iterdir() if path.name.isdigit()
  )
  default, earlier = runs.load(run_copy), runs.load(run_copy, step=saved[0])
  assert default.checkpoint_step == saved[-1] != earlier.checkpoint_step == saved[0]
  _, restored = checkpoints.restore_params(run_copy, step=saved[0])
  jax.tree.map(np.testing.assert_array_equal, earlier.variables, restored)
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(earlier.variables), jax.tree.leaves(default.variables))
  )
  with pytest.raises(errors.UsageError, match=f"no checkpoint of step 999 \\(saved: {saved[0]}, "):
    _ = runs.load(run_copy, step=999).variables
  # Scales fitted on the default checkpoint are not another step's.
  calibration.save_posthoc(run_copy, {"beta_scale": [1.5] * default.model_config.num_exits})
  assert runs.load(run_copy).posthoc_scales is not None
  with pytest.raises(errors.DataError, match=f"fitted on the checkpoint of step {saved[-1]}, not"):
    _ = runs.load(run_copy, step=saved[0]).posthoc_scales
