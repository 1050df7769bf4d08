"""Calibration measures, post-hoc scales and guaranteed thresholds against scipy and
simulations of the generative model (`σ² ~ InvGamma(α, β)`, `‖e‖² ~ σ² χ²_T`)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats

from eesep_jax.analysis import calibration
from eesep_jax.core import probabilistic

DB = 10 / math.log(10)


def _rng(seed):
  return np.random.default_rng(seed)


def _student_energy(rng, time, alpha, beta):
  """Error energies `E = σ² χ²_T`, `σ² ~ InvGamma(α, β)` (`β/G`, `G ~ Gamma(α)`)."""
  alpha, beta, time = np.broadcast_arrays(alpha, beta, time)
  return beta / rng.gamma(alpha) * rng.chisquare(time)


def _threshold(signal_energy, gamma_db):
  """The error energy at which the cross-term-free SNR is `γ`."""
  return signal_energy / (10 ** (gamma_db / 10) - 1)


# ----------------------------------------------------------------------------------
# Reliability.


def test_brier_score_hand_computed():
  assert calibration.brier_score([0.2, 0.9, 0.5], [0, 1, True]) == pytest.approx(
    (0.04 + 0.01 + 0.25) / 3
  )


def test_reliability_hand_computed():
  result = calibration.reliability([0.05, 0.15, 0.12, 0.95, 1.0], [0, 1, 0, 1, 1])
  np.testing.assert_allclose(result["edges"], np.linspace(0, 1, 11))
  np.testing.assert_array_equal(result["count"], [1, 2, 0, 0, 0, 0, 0, 0, 0, 2])
  np.testing.assert_allclose(result["confidence"][[0, 1, 9]], [0.05, 0.135, 0.975])
  np.testing.assert_allclose(result["frequency"][[0, 1, 9]], [0.0, 0.5, 1.0])
  assert np.isnan(result["confidence"][2]) and np.isnan(result["frequency"][2])
  # (1 · |0 − 0.05| + 2 · |0.5 − 0.135| + 2 · |1 − 0.975|) / 5.
  assert result["ece"] == pytest.approx(0.166)


def test_resampled_ece_is_the_ece_of_the_resampled_items():
  rng = _rng(1)
  p = rng.uniform(size=(40, 3, 2))  # [items, ...]: a resample draws whole items.
  outcome = rng.uniform(size=p.shape) < p**0.7
  weights = np.vstack([np.ones(40, int), rng.multinomial(40, np.full(40, 1 / 40), size=5)])
  expected = [
    calibration.reliability(np.repeat(p, w, axis=0), np.repeat(outcome, w, axis=0))["ece"]
    for w in weights
  ]
  np.testing.assert_allclose(calibration.resampled_ece(p, outcome, weights), expected)


def test_reliability_separates_calibrated_from_miscalibrated():
  rng = _rng(0)
  p = rng.uniform(size=(20, 1000))  # Any shape: flattened.
  calibrated = calibration.reliability(p, rng.uniform(size=p.shape) < p)
  overconfident = calibration.reliability(p, rng.uniform(size=p.shape) < p**2)
  assert calibrated["ece"] < 0.015
  assert overconfident["ece"] > 0.15  # E|p − p²| = 1/6.
  assert calibrated["count"].sum() == p.size


# ----------------------------------------------------------------------------------
# Probability integral transform.


def test_ks_distance_matches_scipy():
  rng = _rng(1)
  for u in (
    rng.uniform(size=50),
    rng.uniform(size=3000) ** 1.3,
    rng.beta(2, 2, 777),
    np.array([0.5]),
  ):
    assert calibration.ks_distance(u) == pytest.approx(
      scipy.stats.kstest(u, "uniform").statistic, abs=1e-12
    )


def test_student_pit_is_uniform_under_the_generative_model():
  rng = _rng(2)
  n = 4000
  time = rng.integers(2000, 8000, n)
  alpha, beta = rng.uniform(1.5, 6, n), np.exp(rng.uniform(-8, -2, n))
  energy = _student_energy(rng, time, alpha, beta)
  exact = calibration.pit_values(energy / time, alpha, beta, time)
  large_time = calibration.pit_values(energy / time, alpha, beta)
  misspecified = calibration.pit_values(energy / time, alpha, beta / 3, time)
  assert exact.shape == (n,) and np.all((exact >= 0) & (exact <= 1))
  critical = 1.95 / math.sqrt(n)  # KS test at 0.1%.
  assert calibration.ks_distance(exact) < critical
  assert calibration.ks_distance(large_time) < critical  # E/T ≈ σ² at these lengths.
  assert calibration.ks_distance(misspecified) > 0.3
  # Short signals: only the exact form stays uniform.
  short = _student_energy(rng, 20, alpha, beta)
  assert calibration.ks_distance(calibration.pit_values(short / 20, alpha, beta, 20)) < critical
  assert calibration.ks_distance(calibration.pit_values(short / 20, alpha, beta)) > 0.05


def test_gaussian_pit_is_uniform_under_the_generative_model():
  rng = _rng(3)
  n = 4000
  time, variance = rng.integers(100, 50000, n), np.exp(rng.uniform(-8, 0, n))
  energy = variance * rng.chisquare(time)
  pit = calibration.pit_values_gaussian(energy, variance, time)
  assert calibration.ks_distance(pit) < 1.95 / math.sqrt(n)
  assert (
    calibration.ks_distance(calibration.pit_values_gaussian(energy, 1.2 * variance, time)) > 0.3
  )


# Levels from either tail to the median, where the PIT is pinned to scipy's CDF.
LEVELS = np.array([1e-6, 1e-3, 0.05, 0.5, 0.95, 0.999, 1 - 1e-6])


def test_pit_matches_scipys_law_in_both_tails():
  # The PIT is the predicted law's CDF at the realised energy; at scipy's quantile
  # (float64) of each level it gives the level back, short signals to 10^6 samples:
  # within 1e-4 (float32), and within 20% of the level in the lower tail.
  time = np.array([20, 4000, 10**6])[:, None, None]
  alpha = np.array([1.5, 20.0, 1000.0])[:, None]
  beta = 1e-3 * (alpha - 1)  # A mean variance of 1e-3.
  variance = np.array([1e-6, 1e-3, 1.0])[:, None]
  cases = [
    (
      calibration.pit_values,
      scipy.stats.betaprime.ppf(LEVELS, time / 2, alpha, scale=2 * beta),
      lambda energy: (energy / time, alpha, beta, time),
    ),
    (
      calibration.pit_values,
      scipy.stats.invgamma.ppf(LEVELS, alpha, scale=beta),
      lambda energy: (energy, alpha, beta),
    ),
    (
      calibration.pit_values_gaussian,
      scipy.stats.chi2.ppf(LEVELS, time, scale=variance),
      lambda energy: (energy, variance, time),
    ),
  ]
  for pit_values, energy, arguments in cases:
    pit = pit_values(*arguments(energy))
    expected = np.broadcast_to(LEVELS, energy.shape)
    np.testing.assert_allclose(pit, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(pit[..., :2], expected[..., :2], rtol=0.2)


# ----------------------------------------------------------------------------------
# CRPS and sharpness.

# (params, T, S, realised SNR dB): typical, heavy-tailed, sharp, below the support,
# far in the upper tail, Gaussian.
CRPS_CASES = [
  ({"alpha": 3.0, "beta": 0.02}, 4000, 1265.0, 16.0),
  ({"alpha": 1.2, "beta": 0.002}, 1000, 300.0, 8.0),
  ({"alpha": 50.0, "beta": 0.5}, 4000, 1265.0, 15.0),
  ({"alpha": 2.0, "beta": 0.01}, 100, 3.0, -3.0),
  ({"alpha": 3.0, "beta": 0.02}, 4000, 1265.0, 30.0),
  ({"variance": 0.01}, 4000, 1265.0, 15.05),
]


def _predicted_snr_samples(rng, params, time, signal, size):
  if "variance" in params:
    energy = params["variance"] * rng.chisquare(time, size)
  else:
    energy = _student_energy(rng, np.full(size, time), params["alpha"], params["beta"])
  return DB * np.log1p(signal / energy)


def test_crps_matches_monte_carlo():
  rng = _rng(4)
  size = 200_000
  for params, time, signal, realised in CRPS_CASES:
    x, x_prime = _predicted_snr_samples(rng, params, time, signal, (2, size))
    terms = np.abs(x - realised) - 0.5 * np.abs(x - x_prime)  # E|X − y| − ½ E|X − X'|.
    stderr = terms.std() / math.sqrt(size)
    crps = calibration.snr_crps(signal, params, realised, time)
    assert abs(crps - terms.mean()) < 4 * stderr + 1e-4, (params, realised)


def test_crps_matches_quadrature_and_vectorises():
  # CRPS = ∫ (F(x) − 1{x ≥ y})² dx with F(x) = P(E ≥ c(x)) from scipy.
  expected = []
  for params, time, signal, realised in CRPS_CASES:
    if "variance" in params:
      energy = scipy.stats.chi2(time, scale=params["variance"])
    else:
      energy = scipy.stats.betaprime(time / 2, params["alpha"], scale=2 * params["beta"])

    def cdf(x, energy=energy, signal=signal):
      return energy.sf(_threshold(signal, x))

    low, high = (DB * np.log1p(signal / energy.isf(level)) for level in (1e-13, 1 - 1e-13))
    below = scipy.integrate.quad(
      lambda x: cdf(x) ** 2, low, min(max(realised, low), high), limit=500, epsabs=1e-12
    )[0]
    above = scipy.integrate.quad(
      lambda x: (1 - cdf(x)) ** 2, max(min(realised, high), low), high, limit=500, epsabs=1e-12
    )[0]
    expected.append(below + above + max(realised - high, 0) + max(low - realised, 0))
  student = [i for i, case in enumerate(CRPS_CASES) if "alpha" in case[0]]
  params = {
    name: np.array([CRPS_CASES[i][0][name] for i in student]).reshape(1, -1)
    for name in ("alpha", "beta")
  }
  time, signal, realised = (np.array([CRPS_CASES[i][j] for i in student]) for j in (1, 2, 3))
  crps = calibration.snr_crps(signal, params, realised, time)
  assert crps.shape == (1, len(student))
  np.testing.assert_allclose(crps[0], np.array(expected)[student], rtol=1e-4)
  gaussian = CRPS_CASES[-1]
  assert calibration.snr_crps(gaussian[2], gaussian[0], gaussian[3], gaussian[1]) == (
    pytest.approx(expected[-1], rel=1e-4)
  )


def test_sharpness_is_the_predicted_spread_of_the_error_energy_in_db():
  rng = _rng(5)
  size = 400_000
  alpha, beta, time = np.array([[1.5, 3.0, 20.0]]), 0.01, 200
  energy = _student_energy(rng, time, np.repeat(alpha, size, 0), beta)
  variance = beta / rng.gamma(np.repeat(alpha, size, 0))
  gaussian = 0.01 * rng.chisquare(time, size)
  params = {"alpha": np.repeat(alpha, 2, 0), "beta": np.full((2, 3), beta)}
  np.testing.assert_allclose(
    calibration.sharpness(params, time, axis=0), np.std(DB * np.log(energy), axis=0), rtol=0.01
  )
  np.testing.assert_allclose(
    calibration.sharpness(params, axis=0), np.std(DB * np.log(variance), axis=0), rtol=0.01
  )
  assert calibration.sharpness({"variance": np.full(4, 0.01)}, time) == pytest.approx(
    np.std(DB * np.log(gaussian)), rel=0.01
  )
  with pytest.raises(ValueError):
    calibration.sharpness({"variance": np.ones(3)})


# ----------------------------------------------------------------------------------
# Target satisfaction.


@pytest.mark.parametrize("successes,count", [(0, 10), (3, 10), (10, 10), (97, 100), (1, 1)])
def test_target_satisfaction_interval_matches_scipy(successes, count):
  realised = np.r_[np.full(successes, 20.0), np.full(count - successes, 5.0), [1.0, 30.0]]
  exited = np.r_[np.ones(count, bool), [False, False]]
  result = calibration.target_satisfaction(exited, realised, 15.0, confidence_level=0.9)
  interval = scipy.stats.binomtest(successes, count).proportion_ci(0.9, method="exact")
  assert result["count"] == count
  assert result["share"] == pytest.approx(successes / count)
  assert result["low"] == pytest.approx(interval.low, abs=1e-10)
  assert result["high"] == pytest.approx(interval.high, abs=1e-10)


def test_target_satisfaction_with_nobody_exited():
  result = calibration.target_satisfaction(np.zeros(4, bool), np.full(4, 20.0), 15.0)
  assert result["count"] == 0 and math.isnan(result["share"])
  assert (result["low"], result["high"]) == (0.0, 1.0)


# ----------------------------------------------------------------------------------
# Post-hoc calibration.

SCALES = np.array([3.0, 0.5])  # True β over predicted β, per exit.


def _posthoc_population(rng, n):
  """Predictions `[n, 2 exits]` whose true `β` is `SCALES` times the predicted one."""
  time = rng.integers(1000, 8000, (n, 1))
  alpha = rng.uniform(3, 8, (n, 2))
  mean_variance = np.exp(rng.uniform(-8, -3, (n, 2)))
  beta = (alpha - 1) * mean_variance
  energy = _student_energy(rng, time, alpha, SCALES * beta)
  # S puts the predicted SNR 5–25 dB from the mean error energy, around γ = 15 dB.
  signal = time * mean_variance * 10 ** (rng.uniform(5, 25, (n, 2)) / 10)
  return {"alpha": alpha, "beta": beta}, energy, time, signal


def _calibration_measures(params, energy, time, signal, gamma=15.0):
  """(ECE of P(SNR ≥ γ), KS of the PIT) with the cross-term-free realised SNR."""
  c = _threshold(signal, gamma)
  probability = calibration.pit_values(c / time, params["alpha"], params["beta"], time)
  ece = calibration.reliability(probability, energy <= c)["ece"]
  pit = calibration.pit_values(energy / time, params["alpha"], params["beta"], time)
  return ece, calibration.ks_distance(pit)


def test_posthoc_nll_recovers_the_scale_and_calibrates_held_out_data():
  rng = _rng(6)
  params, energy, time, _ = _posthoc_population(rng, 3000)
  test_params, test_energy, test_time, test_signal = _posthoc_population(rng, 3000)
  before = [
    _calibration_measures(
      {k: v[:, i] for k, v in test_params.items()},
      test_energy[:, i],
      test_time[:, 0],
      test_signal[:, i],
    )
    for i in range(2)
  ]
  for fit_alpha in (False, True):
    scales = calibration.fit_posthoc(params, energy, time, fit_alpha=fit_alpha)
    np.testing.assert_allclose(scales["beta_scale"], SCALES, rtol=0.1 if fit_alpha else 0.05)
    if fit_alpha:
      np.testing.assert_allclose(scales["alpha_excess_scale"], 1.0, rtol=0.15)
    fitted = probabilistic.apply_posthoc(test_params, scales)
    for i in range(2):
      ece, ks = _calibration_measures(
        {k: v[:, i] for k, v in fitted.items()},
        test_energy[:, i],
        test_time[:, 0],
        test_signal[:, i],
      )
      assert before[i][0] > 0.1 and before[i][1] > 0.2
      assert ece < 0.03 and ks < 0.04


def test_posthoc_moments_recover_the_scale():
  rng = _rng(7)
  params, energy, time, _ = _posthoc_population(rng, 3000)
  scales = calibration.fit_posthoc(params, energy, time, method="moments")
  assert set(scales) == {"beta_scale"}
  np.testing.assert_allclose(scales["beta_scale"], SCALES, rtol=0.08)
  with pytest.raises(ValueError):
    calibration.fit_posthoc(params, energy, time, method="moments", fit_alpha=True)


def test_posthoc_nll_maximises_scipys_beta_prime_likelihood():
  rng = _rng(8)
  params, energy, time, _ = _posthoc_population(rng, 300)
  alpha, beta, energy, time = params["alpha"][:, :1], params["beta"][:, :1], energy[:, :1], time

  def nll(log_beta_scale, log_alpha_scale=0.0):
    shape = 1 + np.exp(log_alpha_scale) * (alpha - 1)
    scale = 2 * np.exp(log_beta_scale) * beta
    return -np.sum(scipy.stats.betaprime.logpdf(energy, time / 2, shape, scale=scale))

  one = scipy.optimize.minimize_scalar(nll, bracket=(0.0, 1.0), tol=1e-10).x
  two = scipy.optimize.minimize(
    lambda x: nll(*x), [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10}
  ).x
  fitted_one = calibration.fit_posthoc({"alpha": alpha, "beta": beta}, energy, time)
  fitted_two = calibration.fit_posthoc({"alpha": alpha, "beta": beta}, energy, time, fit_alpha=True)
  np.testing.assert_allclose(np.log(fitted_one["beta_scale"]), [one], atol=1e-4)
  np.testing.assert_allclose(
    np.log([fitted_two["beta_scale"][0], fitted_two["alpha_excess_scale"][0]]), two, atol=1e-3
  )


def test_posthoc_gaussian():
  rng = _rng(9)
  time = rng.integers(1000, 8000, (2000, 1))
  variance = np.exp(rng.uniform(-8, -3, (2000, 3)))
  energy = np.array([2.0, 1.0, 0.3]) * variance * rng.chisquare(time, (2000, 3))
  for method in ("nll", "moments"):
    scales = calibration.fit_posthoc({"variance": variance}, energy, time, method=method)
    np.testing.assert_allclose(scales["variance_scale"], [2.0, 1.0, 0.3], rtol=0.01)
  # The NLL scale maximises scipy's chi-square likelihood.
  best = scipy.optimize.minimize_scalar(
    lambda c: -np.sum(scipy.stats.chi2.logpdf(energy[:, 0], time[:, 0], scale=c * variance[:, 0])),
    bounds=(1.0, 3.0),
    method="bounded",
    options={"xatol": 1e-9},
  ).x
  fitted = calibration.fit_posthoc({"variance": variance}, energy, time)
  assert fitted["variance_scale"][0] == pytest.approx(best, rel=1e-6)


def test_apply_posthoc_along_the_exit_axis_and_under_jit():
  scales = {
    "beta_scale": np.array([2.0, 0.5, 1.0]),
    "alpha_excess_scale": np.array([1.0, 0.1, 3.0]),
  }
  alpha, beta = np.full((4, 3), 1.5), np.full((4, 3), 0.2)
  fitted = probabilistic.apply_posthoc({"alpha": alpha, "beta": beta}, scales)
  np.testing.assert_allclose(fitted["beta"][0], [0.4, 0.1, 0.2])
  np.testing.assert_allclose(fitted["alpha"][0], [1.5, 1.05, 2.5])  # 1 + s (α − 1) > 1.
  # The model's layout: [exits, batch, sources, blocks].
  model = {"alpha": jnp.full((3, 2, 2, 1), 1.5), "beta": jnp.full((3, 2, 2, 1), 0.2)}
  on_model = probabilistic.apply_posthoc(model, scales, exit_axis=0)
  np.testing.assert_allclose(on_model["beta"][:, 1, 0, 0], [0.4, 0.1, 0.2], rtol=1e-6)
  # One exit's scalars, as the stopping loop would apply them.
  one_exit = jax.jit(
    lambda p: probabilistic.apply_posthoc(p, {name: value[1] for name, value in scales.items()})
  )({"alpha": jnp.full((2, 2, 1), 1.5), "beta": jnp.full((2, 2, 1), 0.2)})
  np.testing.assert_allclose(one_exit["alpha"], 1.05, rtol=1e-6)
  np.testing.assert_allclose(one_exit["beta"], 0.1, rtol=1e-6)
  gaussian = probabilistic.apply_posthoc(
    {"variance": np.ones((2, 3))}, {"variance_scale": np.array([1.0, 2.0, 3.0])}
  )
  np.testing.assert_allclose(gaussian["variance"][1], [1.0, 2.0, 3.0])
  with pytest.raises(ValueError):
    probabilistic.apply_posthoc({"variance": np.ones(3)}, scales)


def test_crosstalk_is_the_largest_cosine_between_two_estimates():
  rng = _rng(20)
  estimates = rng.normal(size=(4, 3, 50))
  estimates[1, 1] = 0.3 * estimates[1, 0] + 0.1 * estimates[1, 1]  # Strong leakage.
  estimates[2, 2] = 0.0  # A silent estimate correlates with nothing.
  estimates[3, 1] = -2 * estimates[3, 2]  # Anti-correlated: |cos| = 1.

  def brute_force(sources):
    return max(
      abs(sources[i] @ sources[j]) / (np.linalg.norm(sources[i]) * np.linalg.norm(sources[j]))
      if np.linalg.norm(sources[i]) * np.linalg.norm(sources[j]) > 0
      else 0.0
      for i in range(len(sources))
      for j in range(len(sources))
      if i != j
    )

  rho = np.asarray(probabilistic.crosstalk(estimates))
  np.testing.assert_allclose(rho, [brute_force(e) for e in estimates], rtol=1e-5)
  assert rho[1] > 0.9 and rho[3] == pytest.approx(1.0, rel=1e-6)
  # Padding with zeros changes nothing; one source has no cross-talk.
  padded = np.pad(estimates, [(0, 0), (0, 0), (0, 30)])
  np.testing.assert_allclose(probabilistic.crosstalk(padded), rho, rtol=1e-6)
  np.testing.assert_array_equal(probabilistic.crosstalk(estimates[:, :1]), 0.0)


def test_apply_posthoc_widens_the_variance_with_crosstalk():
  scales = {"beta_scale": np.array([2.0, 0.5]), "crosstalk_slope": np.array([1.5, 1.5])}
  alpha, beta = np.full((3, 2), 4.0), np.full((3, 2), 0.2)
  rho = np.array([[0.0, 0.2], [0.5, 0.5], [1.0, 0.9]])
  fitted = probabilistic.apply_posthoc({"alpha": alpha, "beta": beta}, scales, crosstalk=rho)
  assert isinstance(fitted["beta"], np.ndarray) and fitted["beta"].dtype == np.float64
  np.testing.assert_allclose(fitted["beta"], 0.2 * np.array([2.0, 0.5]) * np.exp(1.5 * rho))
  np.testing.assert_array_equal(fitted["alpha"], alpha)  # The slope leaves the tails.
  # One exit's scalars under jit, `ρ` per example broadcast over sources and blocks.
  one_exit = jax.jit(
    lambda p, r: probabilistic.apply_posthoc(
      p, {name: value[1] for name, value in scales.items()}, crosstalk=r[:, None, None]
    )
  )({"alpha": jnp.full((2, 2, 1), 4.0), "beta": jnp.full((2, 2, 1), 0.2)}, jnp.array([0.0, 0.4]))
  np.testing.assert_allclose(one_exit["beta"][:, 0, 0], 0.1 * np.exp(1.5 * np.array([0, 0.4])))
  gaussian = probabilistic.apply_posthoc(
    {"variance": np.ones((3, 2))}, {"crosstalk_slope": np.array([-1.0, 2.0])}, crosstalk=rho
  )
  np.testing.assert_allclose(gaussian["variance"], np.exp(np.array([-1.0, 2.0]) * rho))
  with pytest.raises(ValueError, match="needs the estimates' crosstalk"):
    probabilistic.apply_posthoc({"alpha": alpha, "beta": beta}, scales)


def _decision_population(rng, n, scales, slope):
  """One source at two exits whose true `β` is `scales · e^{slope·ρ}` times the
  predicted one: `(params, S, snr_min, ρ, T)`, realised SNRs cross-term free."""
  time = rng.integers(1000, 4000, n)
  rho = rng.uniform(0, 1, (n, 2))
  alpha = rng.uniform(3, 8, (n, 2))
  mean_variance = np.exp(rng.uniform(-8, -3, (n, 2)))
  beta = (alpha - 1) * mean_variance
  energy = _student_energy(rng, time[:, None], alpha, beta * scales * np.exp(slope * rho))
  signal = time[:, None] * mean_variance * 10 ** (rng.uniform(0, 20, (n, 2)) / 10)
  snr_min = 10 * np.log10(1 + signal / energy)
  params = {"alpha": alpha[..., None], "beta": beta[..., None]}
  return params, signal[..., None], snr_min, rho, time


def _scipy_brier(params, signal, snr_min, rho, time, scales, slope, targets):
  """The Brier score of `P(SNR ≥ γ)` from scipy's beta prime law of `E`, the reference."""
  beta = params["beta"][..., 0] * scales * np.exp(slope * rho)
  scores = []
  for gamma in targets:
    threshold = _threshold(signal[..., 0], gamma)
    probability = scipy.stats.betaprime.cdf(
      threshold, time[:, None] / 2, params["alpha"][..., 0], scale=2 * beta
    )
    scores.append((probability - (snr_min >= gamma)) ** 2)
  return np.mean(scores)


def test_decision_fit_recovers_the_crosstalk_slope_and_lowers_scipys_brier_score():
  rng = _rng(21)
  true_scales, true_slope, targets = np.array([1.5, 0.7]), 2.0, (5.0, 10.0, 15.0)
  population = _decision_population(rng, 4000, true_scales, true_slope)
  fitted = calibration.fit_decision_posthoc(*population, targets)
  assert set(fitted) == {"beta_scale", "crosstalk_slope"}
  np.testing.assert_allclose(fitted["crosstalk_slope"], true_slope, atol=0.35)
  np.testing.assert_allclose(fitted["beta_scale"], true_scales, rtol=0.2)
  # Held out, the fit scores as the truth does, and better than no widening.
  held_out = _decision_population(rng, 4000, true_scales, true_slope)
  score = functools.partial(_scipy_brier, *held_out, targets=targets)
  fitted_score = score(fitted["beta_scale"], fitted["crosstalk_slope"][0])
  assert fitted_score <= score(true_scales, true_slope) + 2e-4
  assert fitted_score < score(np.ones(2), 0.0) - 0.01
  # Its own objective is scipy's score, and the fit lowers it from where it starts.
  start = {"beta_scale": np.array([1.2, 1.2]), "crosstalk_slope": np.zeros(2)}
  refit = calibration.fit_decision_posthoc(*population, targets, start=start)
  in_sample = functools.partial(_scipy_brier, *population, targets=targets)
  assert in_sample(refit["beta_scale"], refit["crosstalk_slope"][0]) < in_sample(
    start["beta_scale"], 0.0
  )
  # The scales alone, the slope kept where it starts.
  scales_only = calibration.fit_decision_posthoc(*population, targets, start=start, fit_slope=False)
  np.testing.assert_array_equal(scales_only["crosstalk_slope"], 0.0)
  assert in_sample(scales_only["beta_scale"], 0.0) < in_sample(start["beta_scale"], 0.0)
  gaussian = calibration.fit_decision_posthoc(
    {"variance": population[0]["beta"] / 3}, *population[1:], targets
  )
  assert set(gaussian) == {"variance_scale", "crosstalk_slope"}


def test_decision_fit_stays_bounded_when_no_utterance_reaches_a_target():
  rng = _rng(22)
  params, signal, snr_min, rho, time = _decision_population(rng, 200, np.ones(2), 0.0)
  fitted = calibration.fit_decision_posthoc(params, signal, snr_min, rho, time, (60.0,))
  log_scales = np.log(fitted["beta_scale"])
  assert np.all(np.isfinite(log_scales)) and np.isfinite(fitted["crosstalk_slope"][0])
  assert np.all(np.abs(log_scales) <= calibration.DECISION_LOG_SCALE_LIMIT + 1e-9)
  assert abs(fitted["crosstalk_slope"][0]) <= calibration.DECISION_SLOPE_LIMIT + 1e-9


def test_save_and_load_posthoc(tmp_path):
  assert calibration.load_posthoc(tmp_path) is None
  scales = {"beta_scale": np.array([3.0, 0.5]), "alpha_excess_scale": np.array([1.0, 1.2])}
  path = calibration.save_posthoc(tmp_path, scales)
  assert path == tmp_path / calibration.POSTHOC_FILE
  loaded = calibration.load_posthoc(tmp_path)
  assert set(loaded) == set(scales)
  for name, value in scales.items():
    np.testing.assert_array_equal(loaded[name], value)
  with pytest.raises(ValueError):
    calibration.save_posthoc(tmp_path, {"beta": np.ones(2)})


def test_posthoc_file_records_the_regime(tmp_path):
  assert calibration.load_posthoc_regime(tmp_path) is None  # No file.
  regime = {"chunk_seconds": 4.0, "overlap_seconds": 0.5}
  calibration.save_posthoc(tmp_path, {"beta_scale": np.ones(2)}, regime=regime)
  assert calibration.load_posthoc_regime(tmp_path) == regime
  assert set(calibration.load_posthoc(tmp_path)) == {"beta_scale"}
  calibration.save_posthoc(tmp_path, {"beta_scale": np.ones(2)})  # Whole utterances.
  assert calibration.load_posthoc_regime(tmp_path) is None
  # Files from before regimes were recorded: whole utterances.
  (tmp_path / calibration.POSTHOC_FILE).write_text('{"beta_scale": [1.0, 2.0]}')
  assert calibration.load_posthoc_regime(tmp_path) is None
  np.testing.assert_array_equal(calibration.load_posthoc(tmp_path)["beta_scale"], [1, 2])


# ----------------------------------------------------------------------------------
# Guaranteed thresholds.


def _reference_exit(probabilities, threshold):
  """First exit with probability ≥ λ, else the last (0-based), by a scan of the exits."""
  taken = np.full(probabilities.shape[0], probabilities.shape[1] - 1)
  for row, values in enumerate(probabilities):
    for k, value in enumerate(values[:-1]):
      if value >= threshold:
        taken[row] = k
        break
  return taken


GAMMA, DELTA, EPSILON = 10.0, 0.1, 0.1
MEANS = np.array([8.0, 12.0, 20.0])  # Mean SNR at each exit (dB).


def _exit_population(rng, n):
  """Three exits; exit probabilities from a noisy estimate of each utterance's
  difficulty. The last exit fails 1.3% of the time, the first 67%."""
  difficulty = rng.standard_normal((n, 1))
  realised = MEANS - 4 * difficulty + 2 * rng.standard_normal((n, 3))
  guess = difficulty + 0.5 * rng.standard_normal((n, 1))
  probabilities = scipy.stats.norm.cdf((MEANS - 4 * guess - GAMMA) / 3)
  return probabilities, realised


def test_guaranteed_threshold_p_values_are_exact_binomial_tails():
  rng = _rng(11)
  probabilities, realised = _exit_population(rng, 200)
  candidates = np.linspace(0, 1, 21)
  result = calibration.guaranteed_threshold(
    probabilities, realised, GAMMA, DELTA, EPSILON, candidates
  )
  np.testing.assert_allclose(result["candidates"], candidates[::-1])
  for i, threshold in enumerate(result["candidates"]):
    taken = _reference_exit(probabilities, threshold)
    failures = int(np.sum(realised[np.arange(200), taken] < GAMMA))
    assert result["risk"][i] == pytest.approx(failures / 200)
    assert result["p_values"][i] == pytest.approx(
      scipy.stats.binomtest(failures, 200, DELTA, alternative="less").pvalue, rel=1e-9
    )
    assert result["mean_exit"][i] == pytest.approx(taken.mean() + 1)  # 1-based.
  # Fixed-sequence testing: certified up to the first p-value above ε.
  first_failure = np.argmax(result["p_values"] > EPSILON)
  assert first_failure > 0
  assert result["certified"][:first_failure].all() and not result["certified"][first_failure:].any()
  assert result["threshold"] == result["candidates"][first_failure - 1]


def test_guaranteed_threshold_holds_over_calibration_splits():
  rng = _rng(12)
  probabilities, realised = _exit_population(rng, 40_000)
  candidates = np.linspace(0, 1, 201)
  # Ground truth: the failure rate of each candidate over the whole population, from
  # which calibration sets are drawn with replacement (so it is their exact risk).
  population = np.array(
    [
      np.mean(realised[np.arange(len(realised)), _reference_exit(probabilities, t)] < GAMMA)
      for t in candidates
    ]
  )
  assert population.max() > 3 * DELTA and population.min() < DELTA / 3  # The risk crosses δ.
  splits, size = 300, 1000
  violations = naive_violations = 0
  thresholds = []
  for _ in range(splits):
    index = rng.integers(0, len(realised), size)
    result = calibration.guaranteed_threshold(
      probabilities[index], realised[index], GAMMA, DELTA, EPSILON, candidates
    )
    if result["threshold"] is not None:
      thresholds.append(result["threshold"])
      violations += population[np.searchsorted(candidates, result["threshold"])] > DELTA
    # Without the test: the last λ, scanning down, whose calibration risk is ≤ δ.
    naive = np.logical_and.accumulate(result["risk"] <= DELTA)
    naive_violations += population[::-1][naive][-1] > DELTA
  slack = 3 * math.sqrt(EPSILON * (1 - EPSILON) / splits)
  assert violations / splits <= EPSILON + slack
  assert naive_violations / splits > 0.3  # The check above could see a violation.
  # Not vacuous: (nearly) always certified, well below 1, near the δ-crossing.
  assert len(thresholds) >= 0.95 * splits
  assert np.median(thresholds) < 0.9
  risk = population[np.searchsorted(candidates, thresholds)]
  assert np.mean(risk) > DELTA / 2


def test_guaranteed_threshold_certifies_nothing_when_the_last_exit_fails():
  rng = _rng(13)
  probabilities, realised = _exit_population(rng, 500)
  result = calibration.guaranteed_threshold(probabilities, realised - 10, GAMMA, DELTA, EPSILON)
  assert result["threshold"] is None and not result["certified"].any()
  assert result["candidates"].size == 1001
  with pytest.raises(ValueError):
    calibration.guaranteed_threshold(probabilities[:, :1], realised[:, :1], GAMMA, DELTA, EPSILON)


# Chunks of one utterance are dependent: the certificate counts utterances, not chunks.


def _chunked_population(rng, n, chunks=3):
  """`_exit_population` with each utterance cut into `chunks` chunks that share its
  difficulty: `(probabilities, realised, groups)`, `[n · chunks, ...]`."""
  difficulty = np.repeat(rng.standard_normal((n, 1)), chunks, axis=0)
  realised = MEANS - 4 * difficulty + 2 * rng.standard_normal((n * chunks, 3))
  guess = difficulty + 0.5 * rng.standard_normal((n * chunks, 1))
  probabilities = scipy.stats.norm.cdf((MEANS - 4 * guess - GAMMA) / 3)
  return probabilities, realised, np.repeat(np.arange(n), chunks)


def test_grouped_threshold_uses_hoeffding_bentkus_on_utterance_shares():
  rng = _rng(14)
  probabilities, realised, groups = _chunked_population(rng, 300)
  candidates = np.linspace(0, 1, 21)
  result = calibration.guaranteed_threshold(
    probabilities, realised, GAMMA, DELTA, EPSILON, candidates, groups=groups
  )
  assert result["num_utterances"] == 300
  for i, threshold in enumerate(result["candidates"]):
    taken = _reference_exit(probabilities, threshold)
    failed = realised[np.arange(900), taken] < GAMMA
    risk = failed.reshape(300, 3).mean(-1).mean()
    assert result["risk"][i] == pytest.approx(risk)
    low = min(risk, DELTA)
    divergence = scipy.special.xlogy(low, low / DELTA) + scipy.special.xlogy(
      1 - low, (1 - low) / (1 - DELTA)
    )
    expected = min(
      math.exp(-300 * divergence),
      math.e * scipy.stats.binom.cdf(math.ceil(300 * risk - 1e-9), 300, DELTA),
    )
    assert result["p_values"][i] == pytest.approx(expected, rel=1e-9)
  # One chunk per utterance: the exact binomial test, as without groups.
  single = calibration.guaranteed_threshold(
    probabilities[::3], realised[::3], GAMMA, DELTA, EPSILON, candidates
  )
  grouped = calibration.guaranteed_threshold(
    probabilities[::3], realised[::3], GAMMA, DELTA, EPSILON, candidates, groups=groups[::3]
  )
  np.testing.assert_array_equal(single["p_values"], grouped["p_values"])


def test_grouped_threshold_holds_when_chunks_are_dependent():
  """Calibration sets of utterances, each cut into 3 dependent chunks: the certified
  risk (the expected share of a new utterance's chunks below γ) holds w.p. ≥ 1 − ε;
  treating the chunks as independent draws does not."""
  rng = _rng(15)
  probabilities, realised, groups = _chunked_population(rng, 20_000)
  candidates = np.linspace(0, 1, 101)
  # Equal chunks per utterance: the mean of utterance shares.
  population = np.array(
    [
      np.mean(realised[np.arange(len(realised)), _reference_exit(probabilities, t)] < GAMMA)
      for t in candidates
    ]
  )
  splits, size = 200, 300
  violations = naive_violations = 0
  for _ in range(splits):
    index = (3 * rng.integers(0, 20_000, size)[:, None] + np.arange(3)).ravel()
    for name, split_groups in (("grouped", np.repeat(np.arange(size), 3)), ("naive", None)):
      result = calibration.guaranteed_threshold(
        probabilities[index],
        realised[index],
        GAMMA,
        DELTA,
        EPSILON,
        candidates,
        groups=split_groups,
      )
      if result["threshold"] is not None:
        violated = population[np.searchsorted(candidates, result["threshold"])] > DELTA
        if name == "grouped":
          violations += violated
        else:
          naive_violations += violated
  slack = 3 * math.sqrt(EPSILON * (1 - EPSILON) / splits)
  assert violations / splits <= EPSILON + slack
  assert naive_violations / splits > EPSILON  # 13 %: chunks taken as independent draws.


def test_failure_rate_counts_utterances():
  failed = np.array([1, 0, 0, 1, 1, 1, 0, 0, 0], bool)
  plain = calibration.failure_rate(failed)
  met = calibration.target_satisfaction(np.ones(9, bool), ~failed, 0.5)
  assert plain["risk"] == pytest.approx(4 / 9) and plain["num_utterances"] == 9
  assert (plain["low"], plain["high"]) == pytest.approx((1 - met["high"], 1 - met["low"]))
  grouped = calibration.failure_rate(failed, groups=np.repeat(["a", "b", "c"], 3))
  assert grouped["risk"] == pytest.approx(np.mean([1 / 3, 1.0, 0.0]))
  assert grouped["num_utterances"] == 3
  half_width = math.sqrt(math.log(2 / 0.05) / 6)  # Hoeffding at 95 %, 3 utterances.
  assert (grouped["low"], grouped["high"]) == pytest.approx(
    (max(0, grouped["risk"] - half_width), min(1, grouped["risk"] + half_width))
  )
