"""The calibration report (`analysis/calibration_report`) on simulated populations:
calibrated predictions against over- and underconfident ones, post-hoc scales that
recover them, the report's layout and the certified threshold. `eesep calibrate`:
test_cli_calibrate.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from conftest import make_exit_table
from eesep_jax.analysis import calibration_report
from eesep_jax.core import probabilistic
from eesep_jax.core import stopping

GMACS = (1.0, 2.0, 3.0)


# ----------------------------------------------------------------------------------
# Simulated populations: predictions that are calibrated or off by a known factor.


def _population(seed, n, *, factor=1.0, gaussian=False, exits=3, sources=2):
  """An exit table whose error energies follow the generative model of predictions
  whose `β` (or `σ²`) is then multiplied by `factor`: calibrated for 1, overconfident
  below 1. Later exits are 3 dB better on average."""
  rng = np.random.default_rng(seed)
  time = rng.integers(4000, 16000, n).astype(float)
  shape = (n, exits, sources)
  samples = np.broadcast_to(time[:, None, None], shape)
  signal = samples * np.exp(rng.uniform(-6, -2, shape))
  snr_db = rng.uniform(0, 25, shape) + 3 * np.arange(exits)[:, None]
  mean_variance = signal / samples / 10 ** (snr_db / 10)
  if gaussian:
    params = {"variance": mean_variance}
    energy = mean_variance * rng.chisquare(samples)
  else:
    alpha = rng.uniform(2, 8, shape)
    params = {"alpha": alpha, "beta": (alpha - 1) * mean_variance}
    energy = params["beta"] / rng.gamma(alpha) * rng.chisquare(samples)
  scaled = "variance" if gaussian else "beta"
  params[scaled] = params[scaled] * factor
  realised = 10 * np.log10(1 + signal / energy)  # No cross term: exactly the model's SNR.
  return make_exit_table(
    n,
    exits,
    sources,
    num_samples=time,
    snr_min=realised.min(axis=-1),
    si_snri=realised.mean(axis=-1),
    source_snr=realised,
    error_energy=energy,
    estimate_energy=signal,
    variance={name: value[..., None] for name, value in params.items()},
  )


def _report(table, **kwargs):
  return calibration_report.calibration_report(
    table, gmacs_per_second=GMACS, targets=(5.0, 10.0, 15.0), **kwargs
  )


@pytest.mark.parametrize("gaussian", [False, True])
def test_calibrated_predictions_score_better_and_posthoc_recovers_them(gaussian):
  calibrated = _report(_population(0, 1000, gaussian=gaussian))
  overconfident_table = _population(0, 1000, factor=0.25, gaussian=gaussian)
  overconfident = _report(overconfident_table)
  underconfident = _report(_population(0, 1000, factor=4.0, gaussian=gaussian))
  for worse in (overconfident, underconfident):
    for good, bad in zip(
      calibrated["per_exit"] + [calibrated["pooled"]], worse["per_exit"] + [worse["pooled"]]
    ):
      assert good["ece_mean"] < 0.02 and bad["ece_mean"] > 0.08
      assert good["ks"] < 0.05 and bad["ks"] > 0.3
      assert good["crps"] < bad["crps"] and good["nll"] < bad["nll"]
      # Sharpness does not see the level, only the spread.
      assert good["sharpness"] == pytest.approx(bad["sharpness"])
  # Calibrated exits keep their promise; overconfident ones do not.
  for good, bad in zip(calibrated["target_satisfaction"], overconfident["target_satisfaction"]):
    assert good["count"] > 100 and good["share"] >= good["confidence"] - 0.03
    assert bad["share"] < good["share"]
  assert min(e["share"] - e["confidence"] for e in overconfident["target_satisfaction"]) < -0.2

  scales = calibration_report.fit_scales(overconfident_table)
  np.testing.assert_allclose(scales["variance_scale" if gaussian else "beta_scale"], 4.0, rtol=0.1)
  recovered = _report(overconfident_table, scales=scales)
  assert recovered["pooled"]["ece_mean"] < 0.02 and recovered["pooled"]["ks"] < 0.05


def test_report_layout():
  report = _report(_population(1, 200))
  assert [entry["exit"] for entry in report["per_exit"]] == [1, 2, 3]
  assert set(report["pooled"]) == {
    "ece",
    "ece_mean",
    "ks",
    "crps",
    "nll",
    "sharpness",
    "reliability",
    "pit_histogram",
    "brier",
    "brier_mean",
  }
  assert set(report["pooled"]["ece"]) == {"5", "10", "15"}
  assert sum(report["pooled"]["pit_histogram"]) == 200 * 3 * 2
  assert sum(report["per_exit"][0]["reliability"]["10"]["count"]) == 200 * 2
  grid = {(e["target_snr_db"], e["confidence"]) for e in report["target_satisfaction"]}
  assert grid == {(t, p) for t in (5, 10, 15) for p in stopping.CONFIDENCES}
  for entry in report["target_satisfaction"]:
    assert sum(entry["exit_histogram"]) == 200
    assert entry["low"] <= entry["share"] <= entry["high"]
  with pytest.raises(ValueError, match="one variance block"):
    _report(make_exit_table(2, 3, 2, variance={"variance": np.ones((2, 3, 2, 2))}))


def test_brier_score_of_the_worst_source_against_scipy():
  table = _population(5, 300, factor=0.5)
  report = _report(table)
  beta = table.variance["beta"][..., 0]
  for target in (5.0, 10.0, 15.0):
    threshold = table.estimate_energy / (10 ** (target / 10) - 1)
    worst = scipy.stats.betaprime.cdf(
      threshold,
      table.num_samples[:, None, None] / 2,
      table.variance["alpha"][..., 0],
      scale=2 * beta,
    ).min(axis=-1)  # [utterances, exits]
    squared = (worst - (table.snr_min >= target)) ** 2
    key = f"{target:g}"
    assert report["pooled"]["brier"][key] == pytest.approx(squared.mean(), abs=1e-5)
    for k, entry in enumerate(report["per_exit"]):
      assert entry["brier"][key] == pytest.approx(squared[:, k].mean(), abs=1e-5)
  # Over-confident predictions score worse than calibrated ones.
  calibrated = _report(_population(5, 300))
  assert calibrated["pooled"]["brier_mean"] < report["pooled"]["brier_mean"]


def test_a_slope_needs_the_tables_crosstalk():
  table = _population(3, 20)  # As saved before cross-talk was recorded.
  assert table.crosstalk is None
  slope = {"beta_scale": np.ones(3), "crosstalk_slope": np.ones(3)}
  with pytest.raises(ValueError, match="records no crosstalk"):
    _report(table, scales=slope)
  with pytest.raises(ValueError, match="records no crosstalk"):
    calibration_report.fit_scales(table, "brier")
  _report(table, scales={"beta_scale": np.ones(3)})  # Scales without a slope need none.


def test_resampled_ece_of_the_whole_population_is_the_reports():
  table = _population(2, 60, factor=0.5)
  targets = (5.0, 10.0, 15.0)
  weights = np.vstack([np.ones(60, int), np.random.default_rng(0).multinomial(60, [1 / 60] * 60)])
  whole, resampled = calibration_report.resampled_ece(table, weights, targets=targets)
  assert whole == pytest.approx(_report(table)["pooled"]["ece_mean"])
  # A resample is a population of its own: the utterances drawn, each as often as drawn.
  drawn = np.repeat(np.arange(60), weights[1])
  assert resampled == pytest.approx(_report(table.subset(drawn))["pooled"]["ece_mean"])


def test_certified_threshold_holds_on_fresh_utterances():
  result = calibration_report.guarantee(
    _population(2, 1000),
    _population(3, 1000),
    target_snr_db=5.0,
    delta=0.1,
    epsilon=0.1,
    gmacs_per_second=GMACS,
  )
  assert 0 < result["threshold"] < 1 and result["calibration_risk"] <= 0.1
  test = result["test"]
  assert test["risk"] < 0.13 and test["low"] <= test["risk"] <= test["high"]
  assert 1 < test["mean_exit"] < 3 and sum(test["exit_histogram"]) == 1000
  # The last exit alone misses 5 dB on ~1% of utterances: no threshold can do better.
  assert (
    calibration_report.guarantee(
      _population(2, 1000),
      _population(3, 1000),
      target_snr_db=5.0,
      delta=0.005,
      epsilon=0.1,
      gmacs_per_second=GMACS,
    )["threshold"]
    is None
  )


def test_a_single_exit_model_is_reported_with_no_threshold():
  table = _population(5, 100, exits=1)
  report = calibration_report.calibration_report(table, gmacs_per_second=GMACS[:1], targets=(5.0,))
  assert [entry["exit"] for entry in report["per_exit"]] == [1]
  assert all(entry["mean_exit"] == 1 for entry in report["target_satisfaction"])
  result = calibration_report.guarantee(
    table, table, target_snr_db=5.0, delta=0.1, epsilon=0.1, gmacs_per_second=GMACS[:1]
  )
  assert result["threshold"] is None and result["num_utterances"] == 100


def test_identity_scales_leave_parameters_bit_for_bit():
  rng = np.random.default_rng(4)
  params = {
    "alpha": (1.01 + rng.exponential(3, (5, 3))).astype(np.float32),
    "beta": rng.exponential(1, (5, 3)).astype(np.float32),
  }
  identity = {
    name: np.full(3, probabilistic.POSTHOC_IDENTITY[name])
    for name in probabilistic.LIKELIHOOD_SCALES["student"]
  }
  crosstalk = rng.uniform(0, 1, (5, 1)).astype(np.float32)
  traced = jax.jit(lambda p, s, r: probabilistic.apply_posthoc(p, s, crosstalk=r))(
    jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.float32, identity), crosstalk
  )
  for result in (traced, probabilistic.apply_posthoc(params, identity, crosstalk=crosstalk)):
    for name in params:
      np.testing.assert_array_equal(np.asarray(result[name], np.float32), params[name])
