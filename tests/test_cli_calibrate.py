"""`eesep calibrate` end to end on a random tiny model: its files, and post-hoc scales
picked up by `evaluate` and `separate`. The report itself, on simulated populations:
test_calibration_report.py."""

import contextlib
import functools
import io
import json

import numpy as np
import pytest
import scipy.stats

from conftest import write_speech_mixtures
from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax import inference
from eesep_jax.analysis import calibration
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.analysis import exit_table
from eesep_jax.app import cli
from eesep_jax.app import separate_files
from eesep_jax.core import probabilistic
from eesep_jax.training import checkpoints


def _scipy_exceedance(estimate_energy, params, num_samples, target_snr_db):
  """`P(SNR ≥ γ) = P(E ≤ S/(10^(γ/10) − 1))` per source, from scipy's laws of `E`:
  `2β BetaPrime(T/2, α)` (Student-t) or `σ² χ²_T` (Gaussian); the reference."""
  threshold = np.asarray(estimate_energy, np.float64) / np.expm1(target_snr_db * np.log(10) / 10)
  if "variance" in params:
    return scipy.stats.chi2.cdf(threshold, num_samples, scale=params["variance"])
  return scipy.stats.betaprime.cdf(
    threshold, num_samples / 2, params["alpha"], scale=2 * np.asarray(params["beta"], np.float64)
  )


RATE = 8000
LENGTH = RATE // 2  # One length for every utterance: one compilation.
TARGETS = (0.5, 2.0, 5.0)  # Where a random model's exit probabilities vary.


def _parameters(table):
  """The one variance block of a table's parameters, `[utterances, exits, sources]`."""
  return {name: value[..., 0] for name, value in table.variance.items()}


# ----------------------------------------------------------------------------------
# `eesep calibrate` and the commands that pick its scales up, on a random tiny model.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Validation (4) and test (3) splits of 0.5 s two-speaker mixtures."""
  root = tmp_path_factory.mktemp("wsj0-mix")
  write_speech_mixtures(root, "cv", [f"cv{k}" for k in range(4)], length=LENGTH, rate=RATE)
  write_speech_mixtures(root, "tt", [f"tt{k}" for k in range(3)], length=LENGTH, rate=RATE)
  return root


def _run(argv, model, corpus, exit_code=None):
  """`eesep ...` with the checkpoint replaced by `model` on `corpus`; `(stdout, stderr)`.
  With `exit_code`, the command must exit with it (an error)."""
  config, variables = model
  stdout, stderr = io.StringIO(), io.StringIO()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
      checkpoints,
      "read_config",
      lambda workdir: config_lib.base_config(
        preset="tiny", dataset="wsj0-mix", data_root=str(corpus)
      ),
    )
    patch.setattr(checkpoints, "restore_params", lambda workdir, step: (config, variables))
    patch.setattr(checkpoints, "chosen_step", lambda workdir, step=None: 1)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      if exit_code is None:
        cli.main(argv)
      else:
        with pytest.raises(SystemExit) as raised:
          cli.main(argv)
        assert raised.value.code == exit_code
  return stdout.getvalue(), stderr.getvalue()


# The grid and certificate of every `eesep calibrate` run of this file.
GRID_FLAGS = (
  *("--targets", "0.5,5", "--confidences", "0.3,0.6,0.9", "--target-snr", "2"),
  *("--delta", "0.5", "--epsilon", "0.5"),
)


def _calibrate_run(model, corpus, checkpoint, *flags):
  """`(checkpoint, out, stdout)` of `eesep calibrate` on `checkpoint` with `flags`."""
  out = checkpoint / "calibration"
  argv = ["calibrate", "--checkpoint", str(checkpoint), "--out", str(out), *GRID_FLAGS, *flags]
  stdout, _ = _run(argv, model, corpus)
  return checkpoint, out, stdout


@pytest.fixture(scope="module")
def calibrated(model, corpus, tmp_path_factory):
  """`(checkpoint, out, stdout)` of one `eesep calibrate` run."""
  return _calibrate_run(model, corpus, tmp_path_factory.mktemp("run"))


def test_calibrate_writes_the_report_figures_and_scales(calibrated):
  checkpoint, out, stdout = calibrated
  report = json.loads((out / calibration_report.JSON_FILE).read_text())
  assert report["num_utterances"] == 3 and report["targets_db"] == list(TARGETS)
  assert report["fit_dataset"].startswith("MixtureSource(wsj0-mix 'cv'")
  assert report["posthoc"]["num_utterances"] == 2  # Half of the 4 validation utterances.
  for stage in ("before", "after"):
    for entry in report[stage]["per_exit"] + [report[stage]["pooled"]]:
      assert {"ece", "ks", "crps", "nll", "sharpness"} <= set(entry)
      assert set(entry["ece"]) == {"0.5", "2", "5"}
    assert {
      (e["target_snr_db"], e["confidence"]) for e in report[stage]["target_satisfaction"]
    } == {(t, p) for t in TARGETS for p in (0.3, 0.6, 0.9)}
  assert report["guarantee"]["num_utterances"] == 2
  assert {"threshold", "delta", "epsilon", "test"} <= set(report["guarantee"])
  for name in calibration_report.FIGURE_FILES.values():
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = exit_table.load(out / evaluate.TABLE_FILE)
  assert table.error_energy.shape == (3, 3, 2) and table.num_samples.shape == (3,)
  with (out / evaluate.CSV_FILE).open() as file:  # The export for people.
    header, *rows = file.read().splitlines()
  assert len(rows) == 3 * 3 and {"error_energy_s2", "num_samples"} <= set(header.split(","))
  scales = calibration.load_posthoc(checkpoint)
  np.testing.assert_allclose(scales["beta_scale"], report["posthoc"]["scales"]["beta_scale"])
  assert not np.allclose(scales["beta_scale"], 1.0)
  assert "saved post-hoc scales" in stdout
  assert "Certified threshold" in stdout or "No threshold certified" in stdout


def test_report_recomputes_from_the_saved_table(calibrated):
  _, out, _ = calibrated
  report = json.loads((out / calibration_report.JSON_FILE).read_text())
  table = exit_table.load(out / evaluate.TABLE_FILE)
  again = calibration_report.calibration_report(
    table,
    gmacs_per_second=report["gmacs_per_second_by_exit"],
    targets=TARGETS,
    confidences=(0.3, 0.6, 0.9),
  )
  for name in ("ks", "crps", "nll", "sharpness"):
    assert again["pooled"][name] == pytest.approx(report["before"]["pooled"][name], rel=1e-3)


def test_worst_source_probability_is_the_exit_probability(calibrated):
  """The report's per-source probabilities, combined, are what the network reported."""
  _, out, _ = calibrated
  table = exit_table.load(out / evaluate.TABLE_FILE)
  for target in TARGETS:
    worst = _scipy_exceedance(
      table.estimate_energy, _parameters(table), table.num_samples[:, None, None], target
    ).min(axis=-1)
    np.testing.assert_allclose(worst, table.probability[..., table.target_index(target)], atol=1e-4)


def test_evaluate_applies_the_saved_scales(calibrated, model, corpus):
  checkpoint, out, _ = calibrated
  _, stderr = _run(
    [
      "evaluate",
      "--checkpoint",
      str(checkpoint),
      "--targets",
      "0.5,2,5",
      "--out",
      str(checkpoint / "evaluated"),
    ],
    model,
    corpus,
  )
  assert "applying post-hoc calibration from" in stderr
  # `eesep calibrate` wrote the test split's table without post-hoc calibration.
  before = exit_table.load(out / evaluate.TABLE_FILE)
  after = exit_table.load(checkpoint / "evaluated" / evaluate.TABLE_FILE)
  scales = calibration.load_posthoc(checkpoint)
  for target in TARGETS:
    expected = _scipy_exceedance(
      before.estimate_energy,
      probabilistic.apply_posthoc(_parameters(before), scales, exit_axis=1),
      before.num_samples[:, None, None],
      target,
    ).min(axis=-1)
    np.testing.assert_allclose(
      after.probability[..., after.target_index(target)], expected, atol=1e-4
    )
  at_2db = after.target_index(2.0)
  assert not np.allclose(
    after.probability[..., at_2db], before.probability[..., before.target_index(2.0)], atol=1e-3
  )
  # Estimates untouched (to float32 rounding: evaluate computes probabilities for more
  # targets than calibrate, in another compiled program).
  np.testing.assert_allclose(after.si_snr, before.si_snr, rtol=1e-6)
  report = json.loads((checkpoint / "evaluated" / evaluate.JSON_FILE).read_text())
  np.testing.assert_allclose(report["posthoc_scales"]["beta_scale"], scales["beta_scale"])


def test_separate_applies_scales_without_recompiling(calibrated, model, corpus):
  config, variables = model
  checkpoint, out, _ = calibrated
  scales = calibration.load_posthoc(checkpoint)
  example = data.open_dataset("wsj0-mix", corpus, "tt", sample_rate=RATE)[0]
  table = exit_table.load(out / evaluate.TABLE_FILE)
  params = probabilistic.apply_posthoc(_parameters(table), scales, exit_axis=1)
  expected = _scipy_exceedance(
    table.estimate_energy, params, table.num_samples[:, None, None], 2.0
  ).min(axis=-1)[table.ids.tolist().index(example["id"])]
  separate = functools.partial(
    inference.separate,
    variables,
    config,
    example["mixture"][None],
    policy="fixed",
    target_snr_db=2.0,
  )
  plain = [separate(exit_index=k).probability[0] for k in (1, 2, 3)]
  compiled = inference._stopping_loop._cache_size()  # pylint: disable=protected-access
  identity = {name: np.ones(3) for name in scales}
  for k in (1, 2, 3):
    assert separate(exit_index=k, posthoc_scales=identity).probability[0] == plain[k - 1]
    probability = separate(exit_index=k, posthoc_scales=scales).probability[0]
    assert probability == pytest.approx(expected[k - 1], abs=1e-4)
  assert inference._stopping_loop._cache_size() == compiled  # pylint: disable=protected-access
  assert not np.allclose(
    [separate(exit_index=k, posthoc_scales=scales).probability[0] for k in (1, 2, 3)],
    plain,
    atol=1e-3,
  )


def _brute_force_crosstalk(estimates):
  """`|ŝ₁ᵀŝ₂| / (‖ŝ₁‖ ‖ŝ₂‖)` of two estimates `[2, time]`, in float64."""
  first, second = np.asarray(estimates, np.float64)
  return abs(first @ second) / (np.linalg.norm(first) * np.linalg.norm(second))


def test_brier_calibration_widens_what_separate_reads_with_crosstalk(
  model, corpus, tmp_path_factory
):
  config, variables = model
  checkpoint, out, _ = _calibrate_run(
    model, corpus, tmp_path_factory.mktemp("run"), "--method", "brier"
  )
  report = json.loads((out / calibration_report.JSON_FILE).read_text())
  assert report["posthoc"]["method"] == "brier"
  scales = calibration.load_posthoc(checkpoint)
  assert set(scales) == {"beta_scale", "crosstalk_slope"}
  slope = scales["crosstalk_slope"]
  assert np.all(slope == slope[0]) and np.isfinite(slope[0]) and slope[0] != 0
  table = exit_table.load(out / evaluate.TABLE_FILE)
  example = data.open_dataset("wsj0-mix", corpus, "tt", sample_rate=RATE)[0]
  row = table.ids.tolist().index(example["id"])
  for k in (1, 2, 3):
    result = inference.separate(
      variables,
      config,
      example["mixture"][None],
      policy="fixed",
      exit_index=k,
      target_snr_db=2.0,
      posthoc_scales=scales,
    )
    estimates = np.asarray(result.estimates[0])
    rho = _brute_force_crosstalk(estimates)
    np.testing.assert_allclose(table.crosstalk[row, k - 1], rho, rtol=1e-4)
    params = _parameters(table)
    widened = {
      "alpha": params["alpha"][row, k - 1],
      "beta": params["beta"][row, k - 1] * scales["beta_scale"][k - 1] * np.exp(slope[0] * rho),
    }
    expected = _scipy_exceedance(
      np.sum(np.asarray(estimates, np.float64) ** 2, axis=-1), widened, LENGTH, 2.0
    ).min()
    assert result.probability[0] == pytest.approx(expected, abs=1e-4)


def test_separate_command_passes_the_saved_scales_on(
  calibrated, model, corpus, monkeypatch, tmp_path
):
  checkpoint, _, _ = calibrated
  calls = []
  monkeypatch.setattr(
    separate_files, "separate_files", lambda paths, **kwargs: calls.append(kwargs) or []
  )
  argv = ["separate", "x.wav", "--checkpoint", str(checkpoint), "--out-dir", str(tmp_path)]
  _, stderr = _run(argv, model, corpus)
  _run([*argv, "--no-posthoc"], model, corpus)
  _, quiet_stderr = _run([*argv, "--quiet"], model, corpus)
  scales = calibration.load_posthoc(checkpoint)
  np.testing.assert_array_equal(calls[0]["posthoc_scales"]["beta_scale"], scales["beta_scale"])
  np.testing.assert_array_equal(calls[0]["posthoc_scales"]["alpha_excess_scale"], 1.0)
  assert calls[1]["posthoc_scales"] is None
  assert "applying post-hoc calibration" in stderr and not quiet_stderr

  calibration.save_posthoc(tmp_path, {"beta_scale": np.ones(2)})  # A 2-exit model's.
  _, stderr = _run([*argv[:3], str(tmp_path), *argv[4:]], model, corpus, exit_code=1)
  assert "not one value for each of the model's 3 exits" in stderr


def test_the_fit_split_may_come_from_another_corpus(model, corpus, tmp_path):
  """Fit on in-domain validation data, test on a shifted corpus."""
  shifted = tmp_path / "shifted"
  write_speech_mixtures(shifted, "tt", ["shifted0", "shifted1"], length=LENGTH, rate=RATE)
  out, checkpoint = tmp_path / "out", tmp_path / "run"
  checkpoint.mkdir()  # Where the scales go; the model is the patched-in random one.
  stdout, stderr = _run(
    [
      "calibrate",
      "--checkpoint",
      str(checkpoint),
      "--out",
      str(out),
      "--data-root",
      str(shifted),
      "--fit-data-root",
      str(corpus),
      "--targets",
      "0.5,5",
      "--target-snr",
      "2",
      "--delta",
      "0.5",
      "--epsilon",
      "0.5",
    ],
    model,
    corpus,
  )
  report = json.loads((out / calibration_report.JSON_FILE).read_text())
  assert (
    report["fit_dataset"] == f"MixtureSource(wsj0-mix 'cv' at {corpus}, 4 examples, "
    "2 sources, 8000 Hz)"
  )
  assert report["dataset"].startswith(f"MixtureSource(wsj0-mix 'tt' at {shifted}, 2 examples")
  assert "same split" not in stderr and "saved post-hoc scales" in stdout


# ----------------------------------------------------------------------------------
# The regime `separate` deploys: chunks.

CHUNKING = ("--chunk-seconds", "0.25", "--overlap-seconds", "0.05")  # 3 chunks of 0.5 s.


@pytest.fixture(scope="module")
def calibrated_in_chunks(model, corpus, tmp_path_factory):
  """`(checkpoint, out, stdout)` of `eesep calibrate` in chunks of 0.25 s."""
  return _calibrate_run(model, corpus, tmp_path_factory.mktemp("run_in_chunks"), *CHUNKING)


def test_calibrate_records_the_default_regime_of_separate(calibrated):
  checkpoint, out, stdout = calibrated
  regime = {"chunk_seconds": inference.CHUNK_SECONDS, "overlap_seconds": inference.OVERLAP_SECONDS}
  assert calibration.load_posthoc_regime(checkpoint) == regime
  report = json.loads((out / calibration_report.JSON_FILE).read_text())
  assert report["regime"] == report["posthoc"]["regime"] == regime
  # Utterances no longer than a chunk are separated whole: the regimes coincide.
  assert report["num_chunks"] == report["num_utterances"] == 3
  assert report["whole_utterances"]["before"] == report["before"]
  assert "--chunk-seconds 4 --overlap-seconds 0.5" in stdout


def test_calibrate_in_chunks_evaluates_what_separate_long_separates(
  calibrated_in_chunks, model, corpus
):
  config, variables = model
  checkpoint, out, stdout = calibrated_in_chunks
  report = json.loads((out / calibration_report.JSON_FILE).read_text())
  regime = {"chunk_seconds": 0.25, "overlap_seconds": 0.05}
  assert report["regime"] == calibration.load_posthoc_regime(checkpoint) == regime
  assert (report["num_utterances"], report["num_chunks"]) == (3, 9)
  # The fit split's halves are by utterance: 2 utterances (6 chunks) each.
  assert (report["posthoc"]["num_utterances"], report["posthoc"]["num_chunks"]) == (2, 6)
  assert (report["guarantee"]["num_utterances"], report["guarantee"]["num_chunks"]) == (2, 6)
  assert report["whole_utterances"]["num_utterances"] == 3
  assert report["whole_utterances"]["before"] != report["before"]
  for name in calibration_report.FIGURE_FILES.values():
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "in chunks" in stdout and "on whole utterances" in stdout

  table = exit_table.load(out / evaluate.TABLE_FILE)
  assert table.ids[:3].tolist() == ["tt0@0", "tt0@1600", "tt0@2000"]
  assert table.utterance[:4].tolist() == ["tt0", "tt0", "tt0", "tt1"]
  assert table.chunk_start[:4].tolist() == [0, 1600, 2000, 0]
  # Every chunk's exit probabilities are those `separate_long` stops on.
  example = data.open_dataset("wsj0-mix", corpus, "tt", sample_rate=RATE)[0]
  for k in (1, 3):
    result = inference.separate_long(
      variables,
      config,
      example["mixture"],
      policy="fixed",
      exit_index=k,
      target_snr_db=2.0,
      **regime,
    )
    np.testing.assert_array_equal(result.exits.starts, [0, 1600, 2000])
    np.testing.assert_allclose(
      result.exits.probability, table.probability[:3, k - 1, table.target_index(2.0)], atol=1e-4
    )


def test_separate_warns_when_its_regime_is_not_the_calibrated_one(
  calibrated, calibrated_in_chunks, model, corpus, monkeypatch, tmp_path
):
  monkeypatch.setattr(separate_files, "separate_files", lambda paths, **kwargs: [])

  def warnings_of(checkpoint, *flags):
    argv = [
      "separate",
      "x.wav",
      "--checkpoint",
      str(checkpoint),
      "--out-dir",
      str(tmp_path),
      "--quiet",
      *flags,
    ]
    return [
      line for line in _run(argv, model, corpus)[1].splitlines() if line.startswith("warning:")
    ]

  default, chunked = calibrated[0], calibrated_in_chunks[0]
  assert warnings_of(default) == warnings_of(chunked, *CHUNKING) == []
  assert warnings_of(chunked, "--no-posthoc") == []
  (line,) = warnings_of(default, *CHUNKING)
  assert "fitted on chunks of 4 s overlapping 0.5 s" in line
  assert "eesep calibrate --chunk-seconds 0.25 --overlap-seconds 0.05" in line
  (line,) = warnings_of(chunked)
  assert "fitted on chunks of 0.25 s" in line and "runs on chunks of 4 s" in line
  # Scales saved before regimes were recorded were fitted on whole utterances.
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  (legacy / calibration.POSTHOC_FILE).write_text(json.dumps({"beta_scale": [1.0, 1.0, 1.0]}))
  (line,) = warnings_of(legacy)
  assert "fitted on whole utterances" in line


def test_the_method_choices_are_the_libraries():
  """The parser lists them without importing JAX; `probabilistic` owns them."""
  [calibrate] = [
    parser
    for action in cli.build_parser()._subparsers._group_actions  # pylint: disable=protected-access
    for name, parser in action.choices.items()
    if name == "calibrate"
  ]
  [method] = [action for action in calibrate._actions if "--method" in action.option_strings]  # pylint: disable=protected-access
  assert tuple(method.choices) == probabilistic.POSTHOC_METHODS


def test_calibrate_usage_errors(corpus, monkeypatch, capsys):
  config = config_lib.base_config(preset="tiny", dataset="wsj0-mix", data_root=str(corpus))
  monkeypatch.setattr(checkpoints, "read_config", lambda workdir: config)
  with pytest.raises(SystemExit):
    cli.main(
      ["calibrate", "--checkpoint", "run", "--out", "out", "--fit-alpha", "--method", "moments"]
    )
  assert "error: --fit-alpha: needs --method nll" in capsys.readouterr().err
  # The method may come from the run's config.
  config.evaluation.calibration_method = "brier"
  with pytest.raises(SystemExit):
    cli.main(["calibrate", "--checkpoint", "run", "--out", "out", "--fit-alpha"])
  assert "error: --fit-alpha: needs --method nll" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["calibrate", "--checkpoint", "run", "--out", "out", "--delta", "1"])
  assert "strictly between 0 and 1" in capsys.readouterr().err


def test_calibrate_rejects_chunks_separate_would_reject(corpus, monkeypatch, capsys):
  monkeypatch.setattr(
    checkpoints,
    "read_config",
    lambda workdir: config_lib.base_config(
      preset="tiny", dataset="wsj0-mix", data_root=str(corpus)
    ),
  )
  with pytest.raises(SystemExit):
    cli.main(
      [
        "calibrate",
        "--checkpoint",
        "run",
        "--out",
        "out",
        "--chunk-seconds",
        "1",
        "--overlap-seconds",
        "0.6",
      ]
    )
  assert capsys.readouterr().err.startswith(
    "error: --overlap-seconds 0.6: 0.6 s is more than half of the 1 s chunk"
  )
