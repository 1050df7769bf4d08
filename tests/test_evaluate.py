"""Evaluation (`analysis/evaluate`): the exit table, policies simulated from it against
the real stopping loop, and the report files (the table's npz and CSV export), on a
random tiny model. The `eesep evaluate` command: test_cli_evaluate.py."""

import csv
import json
import os

import numpy as np
import pytest

from conftest import make_exit_table
from conftest import write_speech_mixtures
from eesep_jax import data
from eesep_jax import inference
from eesep_jax.analysis import evaluate
from eesep_jax.analysis import exit_table
from eesep_jax.analysis import operating_points
from eesep_jax.core import metrics
from eesep_jax.core import stopping

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
  table, summary = evaluate.evaluate_model(
    variables, config, source, targets=TARGETS, enhancement_metrics=True, span=False, progress=False
  )
  return source, table, summary


def test_table_holds_every_exit_and_improvements_over_the_mixture(evaluation):
  source, table, _ = evaluation
  assert table.ids.tolist() == sorted(IDS) and table.si_snr.shape == (3, 3)
  for index, name in enumerate(table.ids):
    example = source[source.ids.index(name)]
    baseline = np.mean(
      metrics.si_snr(
        example["sources"], np.broadcast_to(example["mixture"], example["sources"].shape)
      )
    )
    np.testing.assert_allclose(table.si_snr[index] - table.si_snri[index], baseline, atol=1e-4)
  # A higher target is less likely to be met.
  np.testing.assert_array_equal(table.targets_db, TARGETS)
  assert np.all(np.diff(table.probability, axis=-1) <= 0)
  assert {name: value.shape for name, value in table.variance.items()} == {
    "alpha": (3, 3, 2, 1),
    "beta": (3, 3, 2, 1),
  }
  assert table.source_snr.shape == table.error_energy.shape == (3, 3, 2)


def test_pesq_failures_are_reported_not_raised(evaluation):
  _, table, summary = evaluation
  silent = table.ids == "silent_s2"
  assert np.all(np.isnan(table.pesq[silent]))
  assert all("s2: PESQ: No utterances" in problem for problem in table.problems[silent][0])
  assert summary["failures"]["pesq"] == table.num_exits
  assert {problem["id"] for problem in summary["problems"]} == {"silent_s2"}
  assert np.all(np.isfinite(table.pesq[~silent]))


def test_simulated_stopping_matches_the_stopping_loop(model, evaluation):
  config, variables = model
  source, table, _ = evaluation
  examples = [
    dict(
      zip(
        ("mixture", "sources"), inference.training_level(example["mixture"], example["sources"])[1:]
      )
    )
    for example in (source[source.ids.index(name)] for name in table.ids)
  ]
  mixtures = np.stack([example["mixture"] for example in examples])
  outputs = [
    evaluate.exit_outputs(
      variables, config, example["mixture"], example["sources"], targets=TARGETS
    )
    for example in examples
  ]
  grid_points, exits_taken = 0, set()
  for target in TARGETS:
    levels = np.unique(table.probability[..., table.target_index(target)])
    # Midway between observed probabilities, where float rounding cannot flip a decision.
    for confidence in ((levels[:-1] + levels[1:]) / 2)[np.diff(levels) > 1e-4][::2]:
      exits = operating_points.policy_exits(
        table, "probabilistic", target_snr_db=target, confidence=confidence
      )
      result = inference.separate(
        variables,
        config,
        mixtures,
        target_snr_db=target,
        confidence=float(confidence),
        normalize_level=False,
      )
      np.testing.assert_array_equal(result.exit_index, exits)
      for b, (k, output) in enumerate(zip(exits, outputs)):
        # Reference order back to the network's: `order[j]` is reference j's output.
        np.testing.assert_allclose(
          result.estimates[b][output["order"][k - 1]], output["estimates"][k - 1], atol=1e-5
        )
      grid_points += 1
      exits_taken.update(exits.tolist())
  assert grid_points >= 3 and len(exits_taken) >= 2


def test_bucketed_evaluation_equals_each_utterance_alone(model, tmp_path):
  """Utterances of three lengths share padded batches (`EVAL_BATCH`, `PAD_SECONDS`); each
  gets the table row it gets from a forward of its own, unpadded."""
  config, variables = model
  for name, length in (("short", 3001), ("mid", 5555), ("long", 9100)):
    write_speech_mixtures(tmp_path, "tt", (name,), length=length, rate=RATE)
  source = data.open_dataset("wsj0-mix", tmp_path, "tt", sample_rate=RATE)
  table, _ = evaluate.evaluate_model(
    variables, config, source, targets=TARGETS, span=False, progress=False
  )
  for name in source.ids:
    example = dict(
      zip(
        ("mixture", "sources"),
        inference.training_level(
          source[source.ids.index(name)]["mixture"], source[source.ids.index(name)]["sources"]
        )[1:],
      )
    )
    alone = exit_table.from_exit_outputs(
      name,
      evaluate.exit_outputs(
        variables, config, example["mixture"], example["sources"], targets=TARGETS
      ),
      example["mixture"],
      example["sources"],
      sample_rate=RATE,
      targets=TARGETS,
    ).arrays()
    bucketed = table.subset(table.ids == name).arrays()
    assert bucketed["snr_min"].shape == alone["snr_min"].shape == (1, config.num_exits)
    assert bucketed.keys() == alone.keys()
    for field, value in alone.items():
      if value.dtype.kind == "U":
        np.testing.assert_array_equal(bucketed[field], value)
      elif field in ("error_energy", "estimate_energy"):
        np.testing.assert_allclose(bucketed[field], value, rtol=1e-4, err_msg=field)
      else:
        np.testing.assert_allclose(bucketed[field], value, rtol=1e-4, atol=1e-4, err_msg=field)


def test_posthoc_scales_rescale_every_exit_without_recompiling(model, evaluation):
  """Evaluation takes the post-hoc scales as `inference.separate` does, traced: neither
  calibrating nor new scales compile again, the table holds the scaled parameters, and
  their probabilities are the stopping loop's with the same scales."""
  config, variables = model
  source, table, _ = evaluation
  compiled = evaluate._exit_outputs._cache_size()  # pylint: disable=protected-access
  tables = {}
  for beta_scale in ((0.5, 2.0, 4.0), (3.0, 1.0, 0.25)):
    scales = {"beta_scale": np.array(beta_scale)}
    tables[beta_scale], _ = evaluate.evaluate_model(
      variables, config, source, targets=TARGETS, posthoc_scales=scales, span=False, progress=False
    )
    scaled = tables[beta_scale]
    np.testing.assert_allclose(
      scaled.variance["beta"],
      table.variance["beta"] * np.reshape(beta_scale, (1, 3, 1, 1)),
      rtol=1e-6,
    )
    np.testing.assert_array_equal(scaled.variance["alpha"], table.variance["alpha"])
    np.testing.assert_array_equal(scaled.si_snr, table.si_snr)
    row = scaled.ids.tolist().index("u0")
    example = source[source.ids.index("u0")]
    for k in (1, 2, 3):
      loop = inference.separate(
        variables,
        config,
        example["mixture"][None],
        policy="fixed",
        exit_index=k,
        target_snr_db=TARGETS[1],
        posthoc_scales=scales,
      )
      assert loop.probability[0] == pytest.approx(scaled.probability[row, k - 1, 1], abs=1e-5)
  assert evaluate._exit_outputs._cache_size() == compiled  # pylint: disable=protected-access
  assert not np.allclose(*(t.probability for t in tables.values()), atol=1e-3)


def test_estimates_get_their_best_si_snr_permutation(model, evaluation):
  config, variables = model
  source, table, _ = evaluation
  # At the training level, where `evaluate_model` runs the network.
  example = dict(
    zip(
      ("mixture", "sources"),
      inference.training_level(
        source[source.ids.index("u0")]["mixture"], source[source.ids.index("u0")]["sources"]
      )[1:],
    )
  )
  output = evaluate.exit_outputs(
    variables, config, example["mixture"], example["sources"], targets=TARGETS
  )
  chosen = metrics.si_snr(example["sources"], output["estimates"]).mean(axis=-1)
  swapped = metrics.si_snr(example["sources"], output["estimates"][:, ::-1]).mean(axis=-1)
  assert np.all(chosen >= swapped)
  np.testing.assert_allclose(chosen, table.si_snr[table.ids.tolist().index("u0")], atol=1e-5)


def test_policy_simulation_rules():
  table = make_exit_table(
    3,
    3,
    2,
    targets_db=np.array([5.0, 10.0]),
    # The 5 dB probabilities, all 1, must not be the ones read at 10 dB.
    probability=np.stack(
      [np.ones((3, 3)), [[0.2, 0.6, 0.95], [0.9, 0.1, 0.99], [0.1, 0.2, 0.3]]], axis=-1
    ),
    expected_snr_db=np.array([[8.0, 12.0, 20.0], [11.0, 9.0, 15.0], [1.0, 2.0, 3.0]]),
    snr_min=np.array([[5.0, 9.0, 10.5], [3.0, 12.0, 13.0], [20.0, 0.0, 30.0]]),
  )
  exits = {
    "probabilistic": operating_points.policy_exits(
      table, "probabilistic", target_snr_db=10.0, confidence=0.5
    ),
    "expected-snr": operating_points.policy_exits(table, "expected-snr", target_snr_db=10.0),
    "oracle": operating_points.policy_exits(table, "oracle", target_snr_db=10.0),
    "fixed": operating_points.policy_exits(table, "fixed", exit_index=2),
  }
  assert {name: value.tolist() for name, value in exits.items()} == {
    "probabilistic": [2, 1, 3],
    "expected-snr": [2, 1, 3],
    "oracle": [3, 2, 1],
    "fixed": [2, 2, 2],
  }
  with pytest.raises(ValueError, match="policy"):
    operating_points.policy_exits(table, "budget", target_snr_db=10.0)
  with pytest.raises(ValueError, match="no exit probabilities for 15 dB"):
    operating_points.policy_exits(table, "probabilistic", target_snr_db=15.0, confidence=0.5)


def test_summary_covers_the_grid(model, evaluation):
  config, _ = model
  _, table, summary = evaluation
  points = summary["operating_points"]
  columns = len(stopping.CONFIDENCES) + 2 + config.num_exits
  assert points["policy"] == (
    ["probabilistic"] * len(stopping.CONFIDENCES)
    + ["expected-snr", "oracle"]
    + ["fixed"] * config.num_exits
  )
  assert points["exit_index"][-config.num_exits :] == [1, 2, 3]
  assert points["targets_db"] == list(TARGETS)
  assert np.shape(points["reach"]) == np.shape(points["oracle_share"]) == (len(TARGETS), columns)
  assert np.shape(points["exit_histogram"]) == (len(TARGETS), columns, config.num_exits)
  assert np.all(np.sum(points["exit_histogram"], axis=-1) == 3)
  for k in (1, 2, 3):
    q = points["exit_index"].index(k)
    per_exit = summary["per_exit"][k - 1]
    assert all(row[q] == k for row in points["mean_exit"])
    assert all(row[q] == pytest.approx(per_exit["si_snri"]) for row in points["means"]["si_snri"])
    np.testing.assert_allclose(
      np.array(points["reach"])[:, q], np.mean(table.snr_min[:, k - 1, None] >= TARGETS, axis=0)
    )
  # No policy reaches the target more often than the one that knows the references.
  reach = np.array(points["reach"])
  np.testing.assert_array_equal(reach[:, points["policy"].index("oracle")], reach.max(axis=1))


def test_span_adds_the_whole_decibels_where_exits_differ(model, evaluation):
  config, variables = model
  source, table, _ = evaluation
  # What `evaluate_model` keeps of the candidates it computed probabilities for.
  spanned, summary = evaluate.evaluate_model(
    variables, config, source, targets=(0.5,), target_snr_db=2.0, confidence=0.75, progress=False
  )
  # A random model's span reaches below the candidates: only those within are kept.
  span = set(operating_points.span_targets(spanned.snr_min)) & set(evaluate.SPAN_CANDIDATES_DB)
  assert span
  assert summary["targets_db"] == spanned.targets_db.tolist() == sorted({0.5, 2.0, *span})
  assert 0.75 in summary["confidences"] and summary["target_snr_db"] == 2.0
  # The probabilities kept are those of each target, as computed without the span.
  for target in (0.5, 2.0):
    np.testing.assert_allclose(
      spanned.probability[..., spanned.target_index(target)],
      table.probability[..., table.target_index(target)],
      rtol=1e-5,
      atol=1e-6,
    )


def _csv_rows(path):
  with open(path, newline="") as file:
    return list(csv.DictReader(file))


def _assert_tables_equal(got, want):
  """Every field equal, dtypes included, NaN where NaN."""
  got, want = got.arrays(), want.arrays()
  assert got.keys() == want.keys()
  for name, value in want.items():
    assert got[name].dtype == value.dtype, name
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def _two_block_chunks():
  """Two chunks of one utterance whose variance has one and two blocks: NaN-padded."""
  rng = np.random.default_rng(0)

  def chunk(start, blocks):
    return make_exit_table(
      1,
      2,
      2,
      ids=np.array([f"long@{start}"]),
      utterance=np.array(["long"]),
      chunk_start=np.array([start]),
      num_samples=np.array([4000 * blocks]),
      variance={"variance": rng.uniform(size=(1, 2, 2, blocks))},
    )

  return exit_table.concatenate([chunk(0, 1), chunk(3000, 2)])


def test_the_table_saves_and_loads_exactly(evaluation, tmp_path):
  _, table, _ = evaluation
  table.save(tmp_path / "table.npz")
  _assert_tables_equal(exit_table.load(tmp_path / "table.npz"), table)
  chunks = _two_block_chunks()
  assert chunks.variance["variance"].shape == (2, 2, 2, 2)
  assert np.isnan(chunks.variance["variance"][0, ..., 1]).all()
  chunks.save(tmp_path / "chunks.npz")
  _assert_tables_equal(exit_table.load(tmp_path / "chunks.npz"), chunks)
  _assert_tables_equal(
    exit_table.concatenate([table.subset(slice(0, 1)), table.subset([1, 2])]), table
  )


def test_the_csv_export_has_the_documented_columns_and_the_table_values(evaluation, tmp_path):
  _, table, _ = evaluation
  table.to_csv(tmp_path / "table.csv")
  rows = _csv_rows(tmp_path / "table.csv")
  assert [(row["id"], row["exit"]) for row in rows] == [
    (name, str(k)) for name in sorted(IDS) for k in (1, 2, 3)
  ]
  i, k = table.ids.tolist().index("silent_s2"), 1  # Exit 2, where PESQ fails.
  row = rows[i * table.num_exits + k]
  expected = {
    **{
      name: getattr(table, name)[i, k]
      for name in (
        "si_snr",
        "si_snri",
        "snr",
        "snri",
        "sdr",
        "sdri",
        "pesq",
        "stoi",
        "snr_min",
        "expected_snr_db",
        "crosstalk",
      )
    },
    **{exit_table.probability_column(t): table.probability[i, k, j] for j, t in enumerate(TARGETS)},
    "num_samples": table.num_samples[i],
    **{
      f"{name}_s{c + 1}": getattr(table, field)[i, k, c]
      for name, field in (
        ("snr", "source_snr"),
        ("error_energy", "error_energy"),
        ("estimate_energy", "estimate_energy"),
      )
      for c in range(2)
    },
    **{
      f"{name}_s{c + 1}": table.variance[name][i, k, c, 0]
      for name in ("alpha", "beta")
      for c in range(2)
    },
  }
  for name, value in expected.items():
    np.testing.assert_allclose(float(row[name]), value, rtol=1e-5, err_msg=name)
  assert row["problems"] == table.problems[i, k] and "PESQ" in row["problems"]
  # In chunks: `utterance` and `chunk_start` last; several blocks joined by ";".
  chunks = _two_block_chunks()
  chunks.to_csv(tmp_path / "chunks.csv")
  rows = _csv_rows(tmp_path / "chunks.csv")
  assert list(rows[0])[-4:] == ["variance_s1", "variance_s2", "utterance", "chunk_start"]
  assert [(row["utterance"], row["chunk_start"]) for row in rows] == [("long", "0")] * 2 + [
    ("long", "3000")
  ] * 2
  blocks = [float(value) for value in rows[3]["variance_s2"].split(";")]
  np.testing.assert_allclose(blocks, chunks.variance["variance"][1, 1, 1], rtol=1e-5)
  np.testing.assert_allclose(
    float(rows[0]["variance_s1"]), chunks.variance["variance"][0, 0, 0, 0], rtol=1e-5
  )


def test_report_files(evaluation, tmp_path):
  _, table, summary = evaluation
  paths = evaluate.write_report(tmp_path, table, summary)
  rows = _csv_rows(paths["csv"])
  assert list(rows[0]) == [
    "id",
    "exit",
    "si_snr",
    "si_snri",
    "snr",
    "snri",
    "sdr",
    "sdri",
    "pesq",
    "stoi",
    "problems",
    "snr_min",
    *map(exit_table.probability_column, TARGETS),
    "expected_snr_db",
    "crosstalk",
    "num_samples",
    "snr_s1",
    "snr_s2",
    "error_energy_s1",
    "error_energy_s2",
    "estimate_energy_s1",
    "estimate_energy_s2",
    "alpha_s1",
    "alpha_s2",
    "beta_s1",
    "beta_s2",
  ]
  assert len(rows) == table.ids.size * table.num_exits
  assert paths["table"].name == "exit_table.npz"
  _assert_tables_equal(exit_table.load(paths["table"]), table)
  report = json.loads(paths["json"].read_text())  # Strict JSON: NaN became null.
  assert report["num_utterances"] == 3 and report["per_exit"][0]["sdr"] is not None
  markdown = paths["markdown"].read_text()
  assert markdown.count("| probabilistic, p = ") == len(stopping.CONFIDENCES)
  assert "## Stopping at γ = 2 dB" in markdown  # The grid's middle, no default given.
  assert "PESQ could not be computed for 3 utterance-exits" in markdown
  assert len(report["operating_points"]["reach"]) == len(TARGETS)
  for kind in operating_points.FIGURE_FILES:
    assert paths[kind].stat().st_size > 10_000


def test_a_report_interrupted_while_written_leaves_the_earlier_one(
  evaluation, tmp_path, monkeypatch
):
  """Ctrl-C while the last figure is drawn: every file of the earlier report stays as
  it was, and no temporary file remains."""
  from matplotlib import figure

  _, table, summary = evaluation
  earlier = {
    path: path.read_bytes() for path in evaluate.write_report(tmp_path, table, summary).values()
  }
  savefig = figure.Figure.savefig

  def interrupted(self, path, **kwargs):
    if "satisfaction" in os.path.basename(path):  # Under its temporary name.
      raise KeyboardInterrupt
    return savefig(self, path, **kwargs)

  monkeypatch.setattr(figure.Figure, "savefig", interrupted)
  changed = dict(summary, num_utterances=summary["num_utterances"] + 1)
  with pytest.raises(KeyboardInterrupt):
    evaluate.write_report(tmp_path, table, changed)
  assert {path: path.read_bytes() for path in earlier} == earlier
  assert sorted(tmp_path.iterdir()) == sorted(earlier)
