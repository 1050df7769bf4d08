"""Evaluation: per-exit rows, policies simulated from them against the real stopping
loop, the report files and the `eesep evaluate` command, on a random tiny model."""

import csv
import json

import numpy as np
import pytest

from conftest import write_speech_mixtures
from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax import inference
from eesep_jax.analysis import evaluate
from eesep_jax.app import cli
from eesep_jax.core import metrics
from eesep_jax.training import checkpoints

RATE = 8000
LENGTH = RATE  # One length for every utterance: one compilation.
TARGETS = (0.5, 2.0, 5.0)  # Where a random model's exit probabilities vary.
IDS = ("u0", "u1", "silent_s2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A wsj0-mix test split of three 1 s mixtures; the last one's second source is
  silent, so PESQ cannot score it."""
  root = tmp_path_factory.mktemp("wsj0-mix")
  write_speech_mixtures(root, "tt", IDS, length=LENGTH, rate=RATE, silent_s2=("silent_s2",))
  return root


@pytest.fixture(scope="module")
def evaluation(model, corpus):
  config, variables = model
  source = data.open_dataset("wsj0-mix", corpus, "tt", sample_rate=RATE)
  rows, summary = evaluate.evaluate_model(variables, config, source, targets=TARGETS,
                                          enhancement_metrics=True, progress=False)
  return source, rows, summary


def test_rows_hold_every_exit_and_improvements_over_the_mixture(evaluation):
  source, rows, _ = evaluation
  assert [(row["id"], row["exit"]) for row in rows] == [
      (name, k) for name in sorted(IDS) for k in (1, 2, 3)]
  ids, table = evaluate.exit_table(rows)
  for index, name in enumerate(ids):
    example = source[source.ids.index(name)]
    baseline = np.mean(metrics.si_snr(
        example["sources"], np.broadcast_to(example["mixture"], example["sources"].shape)))
    np.testing.assert_allclose(table["si_snr"][index] - table["si_snri"][index], baseline,
                               atol=1e-4)
  # A higher target is less likely to be met.
  probabilities = [table[evaluate.probability_column(t)] for t in TARGETS]
  assert np.all(np.diff(probabilities, axis=0) <= 0)
  assert {"alpha_s1", "alpha_s2", "beta_s1", "beta_s2"} <= set(rows[0])


def test_pesq_failures_are_reported_not_raised(evaluation):
  _, rows, summary = evaluation
  silent = [row for row in rows if row["id"] == "silent_s2"]
  assert all(np.isnan(row["pesq"]) and "s2: PESQ: No utterances" in row["problems"]
             for row in silent)
  assert summary["failures"]["pesq"] == len(silent)
  assert {problem["id"] for problem in summary["problems"]} == {"silent_s2"}
  assert all(np.isfinite(row["pesq"]) for row in rows if row["id"] != "silent_s2")


def test_simulated_stopping_matches_the_stopping_loop(model, evaluation):
  config, variables = model
  source, rows, _ = evaluation
  ids, table = evaluate.exit_table(rows)
  examples = [source[source.ids.index(name)] for name in ids]
  mixtures = np.stack([example["mixture"] for example in examples])
  outputs = [evaluate.exit_outputs(variables, config, example["mixture"], example["sources"],
                                   targets=TARGETS) for example in examples]
  grid_points, exits_taken = 0, set()
  for target in TARGETS:
    levels = np.unique(table[evaluate.probability_column(target)])
    # Midway between observed probabilities, where float rounding cannot flip a decision.
    for confidence in ((levels[:-1] + levels[1:]) / 2)[np.diff(levels) > 1e-4][::2]:
      exits = evaluate.policy_exits(table, "probabilistic", target_snr_db=target,
                                    confidence=confidence)
      result = inference.separate(variables, config, mixtures, target_snr_db=target,
                                  confidence=float(confidence))
      np.testing.assert_array_equal(result.exit_index, exits)
      for b, (k, output) in enumerate(zip(exits, outputs)):
        # Reference order back to the network's: `order[j]` is reference j's output.
        np.testing.assert_allclose(result.estimates[b][output["order"][k - 1]],
                                   output["estimates"][k - 1], atol=1e-5)
      grid_points += 1
      exits_taken.update(exits.tolist())
  assert grid_points >= 3 and len(exits_taken) >= 2


def test_bucketed_evaluation_equals_each_utterance_alone(model, tmp_path):
  """Utterances of three lengths share padded batches (`EVAL_BATCH`, `PAD_SECONDS`); each
  gets the rows it gets from a forward of its own, unpadded."""
  config, variables = model
  for name, length in (("short", 3001), ("mid", 5555), ("long", 9100)):
    write_speech_mixtures(tmp_path, "tt", (name,), length=length, rate=RATE)
  source = data.open_dataset("wsj0-mix", tmp_path, "tt", sample_rate=RATE)
  rows, _ = evaluate.evaluate_model(variables, config, source, targets=TARGETS,
                                    progress=False)
  for name in source.ids:
    example = source[source.ids.index(name)]
    alone = evaluate.exit_rows(
        name, evaluate.exit_outputs(variables, config, example["mixture"],
                                    example["sources"], targets=TARGETS),
        example["mixture"], example["sources"], sample_rate=RATE, targets=TARGETS)
    bucketed = [row for row in rows if row["id"] == name]
    assert len(bucketed) == len(alone) == config.num_exits
    for got, want in zip(bucketed, alone):
      assert got.keys() == want.keys()
      for field, value in want.items():
        if isinstance(value, str):
          assert got[field] == value
        elif field.startswith(("error_energy", "estimate_energy")):
          np.testing.assert_allclose(got[field], value, rtol=1e-4, err_msg=field)
        else:
          np.testing.assert_allclose(got[field], value, rtol=1e-4, atol=1e-4, err_msg=field)


def test_estimates_get_their_best_si_snr_permutation(model, evaluation):
  config, variables = model
  source, rows, _ = evaluation
  example = source[source.ids.index("u0")]
  output = evaluate.exit_outputs(variables, config, example["mixture"], example["sources"],
                                 targets=TARGETS)
  chosen = metrics.si_snr(example["sources"], output["estimates"]).mean(axis=-1)
  swapped = metrics.si_snr(example["sources"], output["estimates"][:, ::-1]).mean(axis=-1)
  assert np.all(chosen >= swapped)
  np.testing.assert_allclose(chosen, [row["si_snr"] for row in rows if row["id"] == "u0"],
                             atol=1e-5)


def test_policy_simulation_rules():
  table = {
      evaluate.probability_column(10.0): np.array([[0.2, 0.6, 0.95], [0.9, 0.1, 0.99],
                                                   [0.1, 0.2, 0.3]]),
      "expected_snr_db": np.array([[8.0, 12.0, 20.0], [11.0, 9.0, 15.0], [1.0, 2.0, 3.0]]),
      "snr_min": np.array([[5.0, 9.0, 10.5], [3.0, 12.0, 13.0], [20.0, 0.0, 30.0]]),
  }
  exits = {
      "probabilistic": evaluate.policy_exits(table, "probabilistic", target_snr_db=10.0,
                                             confidence=0.5),
      "expected-snr": evaluate.policy_exits(table, "expected-snr", target_snr_db=10.0),
      "oracle": evaluate.policy_exits(table, "oracle", target_snr_db=10.0),
      "fixed": evaluate.policy_exits(table, "fixed", exit_index=2),
  }
  assert {name: value.tolist() for name, value in exits.items()} == {
      "probabilistic": [2, 1, 3], "expected-snr": [2, 1, 3], "oracle": [3, 2, 1],
      "fixed": [2, 2, 2]}
  with pytest.raises(ValueError, match="policy"):
    evaluate.policy_exits(table, "budget", target_snr_db=10.0)


def test_summary_covers_the_grid(model, evaluation):
  config, _ = model
  _, _, summary = evaluation
  policies = summary["policies"]
  grid = {name: [entry for entry in policies if entry["policy"] == name]
          for name in inference.POLICIES}
  assert len(grid["probabilistic"]) == len(TARGETS) * len(evaluate.CONFIDENCES)
  assert len(grid["fixed"]) == len(TARGETS) * config.num_exits
  assert len(grid["oracle"]) == len(grid["expected-snr"]) == len(TARGETS)
  for entry in grid["fixed"]:
    k = entry["exit_index"]
    assert entry["mean_exit"] == k and entry["exit_histogram"][k - 1] == 3
    per_exit = summary["per_exit"][k - 1]
    assert entry["si_snri"] == pytest.approx(per_exit["si_snri"])
    assert entry["gmacs_per_second"] == pytest.approx(per_exit["gmacs_per_second"])
  for oracle in grid["oracle"]:
    # No policy reaches the target more often than the one that knows the references.
    others = [entry["reached_target"] for entry in policies
              if entry["target_snr_db"] == oracle["target_snr_db"]]
    assert oracle["reached_target"] == max(others)
  assert all(sum(entry["exit_histogram"]) == 3 for entry in policies)


def test_report_files(evaluation, tmp_path):
  _, rows, summary = evaluation
  paths = evaluate.write_report(tmp_path, rows, summary)
  with open(paths["csv"], newline="") as file:
    table = list(csv.DictReader(file))
  assert list(table[0]) == [
      "id", "exit", "si_snr", "si_snri", "snr", "snri", "sdr", "sdri", "pesq", "stoi",
      "problems", "snr_min", *map(evaluate.probability_column, TARGETS), "expected_snr_db",
      "num_samples", "snr_s1", "snr_s2", "error_energy_s1", "error_energy_s2",
      "estimate_energy_s1", "estimate_energy_s2", "alpha_s1", "alpha_s2", "beta_s1",
      "beta_s2"]
  assert len(table) == len(rows)
  report = json.loads(paths["json"].read_text())  # Strict JSON: NaN became null.
  assert report["num_utterances"] == 3 and report["per_exit"][0]["sdr"] is not None
  markdown = paths["markdown"].read_text()
  assert markdown.count("| probabilistic |") == len(TARGETS) * len(evaluate.CONFIDENCES)
  assert "PESQ could not be computed for 3 utterance-exits" in markdown


def test_cli_evaluates_a_checkpoint_on_its_test_split(model, corpus, tmp_path, monkeypatch,
                                                      capsys):
  config, variables = model
  monkeypatch.setattr(checkpoints, "read_config", lambda workdir: config_lib.base_config(
      preset="tiny", dataset="wsj0-mix", data_root=str(corpus)))
  monkeypatch.setattr(checkpoints, "restore_params", lambda workdir: (config, variables))
  out = tmp_path / "evaluation"
  cli.main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--out", str(out),
            "--max-utterances", "2", "--targets", "0.5,2,5", "--confidences", "0.5,0.9"])
  report = json.loads((out / evaluate.JSON_FILE).read_text())
  assert report["num_utterances"] == 2 and report["targets_db"] == list(TARGETS)
  assert report["dataset"].startswith("MixtureSource(wsj0-mix 'tt'")
  assert "pesq" not in report["per_exit"][0]  # Separation: no enhancement metrics.
  assert (out / evaluate.CSV_FILE).is_file()
  assert "| probabilistic | 5 | 0.9 |" in capsys.readouterr().out
  capsys.readouterr()
  with pytest.raises(SystemExit) as raised:
    cli.main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--out", str(out),
              "--data-root", str(tmp_path / "elsewhere")])
  assert raised.value.code == 2
  assert capsys.readouterr().err == (f"error: --data-root {tmp_path / 'elsewhere'}: "
                                     "does not exist\n")
