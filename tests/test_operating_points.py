"""The operating points of stopping policies against brute force on small synthetic exit
tables: reach, satisfaction, the static frontier, the oracle's share and every interval."""

import itertools

import numpy as np
import pytest
import scipy.stats

from conftest import make_exit_table
from eesep_jax.analysis import calibration
from eesep_jax.analysis import operating_points

COSTS = np.array([1.0, 1.7, 3.0])
TARGETS = np.array([4.0, 6.0, 8.0])
CONFIDENCES = (0.5, 0.8)


def _table(utterances=40, seed=0):
  """Exits whose worst-source SNR rises with depth, probabilities loosely tied to it."""
  rng = np.random.default_rng(seed)
  snr_min = (
    rng.normal(6.0, 3.0, (utterances, 1)) + [0.0, 1.0, 1.6] + rng.normal(0, 1.0, (utterances, 3))
  )
  noisy = snr_min[..., None] + rng.normal(0, 2.0, snr_min.shape + (1,)) - TARGETS
  return make_exit_table(
    utterances,
    3,
    2,
    targets_db=TARGETS,
    snr_min=snr_min,
    si_snri=snr_min + 4.0,
    expected_snr_db=snr_min + rng.normal(0, 1.0, snr_min.shape),
    probability=1 / (1 + np.exp(-noisy)),
  )


def _exit_taken(table, policy, target, confidence=None, exit_index=None):
  """The 0-based exit of every utterance, by loops over the exits."""
  k_target = list(TARGETS).index(target)
  taken = []
  for i in range(len(table.ids)):
    for k in range(table.num_exits):
      accepted = {
        "probabilistic": lambda: table.probability[i, k, k_target] >= confidence,
        "expected-snr": lambda: table.expected_snr_db[i, k] >= target,
        "oracle": lambda: table.snr_min[i, k] >= target,
        "fixed": lambda: k + 1 >= exit_index,
      }[policy]()
      if accepted or k == table.num_exits - 1:
        taken.append(k)
        break
  return np.array(taken)


def _brute_force(table, target, columns):
  """Reach, compute, satisfaction and the oracle's share of every column by loops."""
  rows = []
  oracle = COSTS[_exit_taken(table, "oracle", target)].mean()
  for policy, confidence, exit_index in columns:
    taken = _exit_taken(table, policy, target, confidence, exit_index)
    reached = np.array([table.snr_min[i, k] >= target for i, k in enumerate(taken)])
    early = taken < table.num_exits - 1
    cost = COSTS[taken].mean()
    rows.append(
      {
        "reach": reached.mean(),
        "gmacs": cost,
        "satisfaction": reached[early].mean() if early.any() else np.nan,
        "successes": int(reached[early].sum()),
        "early": int(early.sum()),
        "oracle_share": (
          (COSTS[-1] - cost) / (COSTS[-1] - oracle) if COSTS[-1] > oracle else np.nan
        ),
      }
    )
  return rows


def _frontier_by_search(costs, values, budget, step=0.005):
  """The best `Σ w_k v_k` over mixture weights on a grid of the simplex, `Σ w_k c_k ≤
  budget`."""
  grid = np.arange(0, 1 + step / 2, step)
  best = -np.inf
  for w1, w2 in itertools.product(grid, grid):
    if w1 + w2 > 1 + 1e-12:
      continue
    weights = np.array([w1, w2, max(0.0, 1 - w1 - w2)])
    if weights @ costs <= budget + 1e-12:
      best = max(best, weights @ values)
  return best


@pytest.mark.parametrize("values", [[0.5, 0.6, 0.9], [0.5, 0.85, 0.9], [0.7, 0.6, 0.65]])
def test_static_frontier_is_the_best_mix_of_fixed_exits(values):
  values = np.array(values)
  budgets = np.array([1.0, 1.2, 1.7, 2.3, 2.999, 3.0])
  frontier = operating_points.static_frontier(COSTS, values, budgets)
  for budget, best in zip(budgets, frontier):
    searched = _frontier_by_search(COSTS, values, budget)
    # The grid finds mixes at most one step of weight from the best.
    assert searched - 1e-12 <= best <= searched + 0.005 * np.ptp(values) + 1e-9, budget
  assert np.isnan(operating_points.static_frontier(COSTS, values, 0.9))
  # Broadcast: values [..., exits] against budgets [...].
  stacked = operating_points.static_frontier(
    COSTS, np.stack([values, values[::-1]]), np.array([2.0, 2.0])
  )
  assert stacked[0] == pytest.approx(operating_points.static_frontier(COSTS, values, 2.0))
  assert stacked[1] == pytest.approx(operating_points.static_frontier(COSTS, values[::-1], 2.0))


def test_clopper_pearson_against_the_binomial_tails():
  successes, count = np.array([0, 3, 17, 40, 12]), np.array([40, 40, 40, 40, 13])
  low, high = calibration.clopper_pearson(successes, count, 0.95)
  for k, n, lo, hi in zip(successes, count, low, high):
    interval = scipy.stats.binomtest(int(k), int(n)).proportion_ci(0.95, method="exact")
    assert (lo, hi) == pytest.approx((interval.low, interval.high), abs=1e-10)
    # The exact interval's definition: each bound leaves 2.5% in its binomial tail.
    if k > 0:
      assert scipy.stats.binom.sf(k - 1, n, lo) == pytest.approx(0.025, abs=1e-8)
    if k < n:
      assert scipy.stats.binom.cdf(k, n, hi) == pytest.approx(0.025, abs=1e-8)
  assert calibration.clopper_pearson(0, 0) == (0.0, 1.0)


def test_clopper_pearson_covers_at_least_its_level():
  """Monte Carlo: intervals of shares drawn in the test cover the true share."""
  rng = np.random.default_rng(1)
  for share in (0.1, 0.5, 0.93):
    successes = rng.binomial(50, share, size=4000)
    low, high = calibration.clopper_pearson(successes, 50, 0.9)
    assert np.mean((low <= share) & (share <= high)) >= 0.9 - 0.01


def test_operating_points_match_brute_force():
  table = _table()
  points = operating_points.operating_points(
    table, gmacs_per_second=COSTS, targets=TARGETS, confidences=CONFIDENCES, resamples=50
  )
  columns = list(zip(points.policy, points.confidence, points.exit_index))
  assert [c[0] for c in columns] == ["probabilistic"] * 2 + ["expected-snr", "oracle"] + [
    "fixed"
  ] * 3
  for i, target in enumerate(TARGETS):
    expected = _brute_force(table, target, columns)
    fixed_reach = [row["reach"] for row in expected[-3:]]
    for q, row in enumerate(expected):
      assert points.reach[i, q] == pytest.approx(row["reach"])
      assert points.gmacs_per_second[i, q] == pytest.approx(row["gmacs"])
      assert points.stopped_early[i, q] == row["early"]
      np.testing.assert_allclose(points.satisfaction[i, q], row["satisfaction"])
      np.testing.assert_allclose(points.oracle_share[i, q], row["oracle_share"])
      assert points.reach_gain[i, q] == pytest.approx(row["reach"] - fixed_reach[-1])
      low, high = calibration.clopper_pearson(row["successes"], row["early"])
      assert (points.satisfaction_low[i, q], points.satisfaction_high[i, q]) == (low, high)
      searched = _frontier_by_search(COSTS, np.array(fixed_reach), row["gmacs"], step=0.01)
      assert searched - 1e-9 <= points.frontier_reach[i, q] <= searched + 0.01
      assert points.frontier_gain[i, q] == pytest.approx(row["reach"] - points.frontier_reach[i, q])
    # The oracle saves all of its own saving; no fixed exit beats the frontier, exit 1
    # (nothing cheaper to mix) is on it.
    assert points.oracle_share[i, points.column("oracle")] == pytest.approx(1.0)
    assert np.all(points.frontier_gain[i, -3:] <= 0) and points.frontier_gain[i, -3] == 0


def test_bootstrap_intervals_match_resampling_by_hand():
  table = _table(utterances=30, seed=2)
  resamples, seed = 40, 5
  points = operating_points.operating_points(
    table,
    gmacs_per_second=COSTS,
    targets=TARGETS,
    confidences=CONFIDENCES,
    resamples=resamples,
    seed=seed,
    confidence_level=0.8,
  )
  weights = operating_points.bootstrap_weights(30, resamples, seed)
  assert weights.shape == (resamples, 30) and np.all(weights.sum(axis=1) == 30)
  columns = list(zip(points.policy, points.confidence, points.exit_index))
  q = points.column("probabilistic", 0.8)
  for i, target in enumerate(TARGETS):
    samples = {"si_snri": [], "frontier_gain": [], "oracle_share": [], "reach_gain": []}
    for counts in weights:
      drawn = table.subset(np.repeat(np.arange(30), counts))
      rows = _brute_force(drawn, target, columns)
      taken = _exit_taken(drawn, "probabilistic", target, confidence=0.8)
      samples["si_snri"].append(drawn.si_snri[np.arange(30), taken].mean())
      fixed_reach = np.array([row["reach"] for row in rows[-3:]])
      samples["frontier_gain"].append(
        rows[q]["reach"] - _frontier_by_search(COSTS, fixed_reach, rows[q]["gmacs"], step=0.01)
      )
      samples["oracle_share"].append(rows[q]["oracle_share"])
      samples["reach_gain"].append(rows[q]["reach"] - fixed_reach[-1])
    for name, values in samples.items():
      low, high = np.percentile(values, [10, 90])
      tolerance = 0.011 if name == "frontier_gain" else 1e-9  # The search's grid.
      assert getattr(points, f"{name}_low")[i, q] == pytest.approx(low, abs=tolerance), name
      assert getattr(points, f"{name}_high")[i, q] == pytest.approx(high, abs=tolerance), name


def test_span_and_chosen_target():
  rng = np.random.default_rng(3)
  snr_min = rng.normal(5.0, 2.0, (400, 1)) + [0.0, 1.5, 2.5]
  span = operating_points.span_targets(snr_min)
  assert span[0] == np.floor(np.quantile(snr_min[:, 0], 0.1))
  assert span[-1] == np.ceil(np.quantile(snr_min[:, -1], 0.9))
  assert np.all(np.diff(span) == 1)
  target, reach = operating_points.choose_target(snr_min)
  assert target == round(target)
  # By hand: every whole dB, exit 1 within 30-70%, the one where depth gains most.
  best = max(
    (np.mean(snr_min[:, -1] >= t) - np.mean(snr_min[:, 0] >= t), t)
    for t in range(-10, 20)
    if 0.3 <= np.mean(snr_min[:, 0] >= t) <= 0.7
  )
  assert target == best[1]
  np.testing.assert_allclose(reach, np.mean(snr_min >= target, axis=0))
  with pytest.raises(ValueError, match="no whole dB"):
    operating_points.choose_target(np.repeat(snr_min[:, :1], 3, axis=1))


def test_figures_draw_every_policy(tmp_path):
  table = _table()
  points = operating_points.operating_points(
    table, gmacs_per_second=COSTS, targets=TARGETS, confidences=CONFIDENCES, resamples=20
  )
  restored = operating_points.from_json(points.to_json())
  np.testing.assert_array_equal(restored.satisfaction, points.satisfaction)
  np.testing.assert_array_equal(restored.exit_index, points.exit_index)
  assert 6.0 in operating_points.figure_targets(restored, 6.0, count=2)
  paths = operating_points.write_figures(tmp_path, restored, 6.0)
  reach = operating_points.reach_figure(restored, [6.0])
  labels = reach.axes[0].get_legend_handles_labels()[1]
  assert {
    "fixed exits",
    "static frontier",
    "probabilistic (over p)",
    "oracle",
    "expected-snr",
  } <= set(labels)
  assert all(path.stat().st_size > 10_000 for path in paths.values())
