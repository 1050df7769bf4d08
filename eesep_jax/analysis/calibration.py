"""Calibration of probabilistic exits: reliability, PIT, CRPS, post-hoc scales, guarantees.

Implements the measures and post-hoc calibrations of docs/method.md §5 as pure functions
(numpy/scipy in float64, but for the PIT) over arrays of per-utterance predictions and
outcomes, gathered offline from an evaluation run. The only I/O is `save_posthoc`/`load_posthoc`.

Conventions, as in `probabilistic`: per utterance (and source), the error energy is
`E = ‖s − ŝ‖²` over `T` samples, `S = ‖ŝ‖²` is the estimate's energy, and the variance
parameters are a dict `{"alpha", "beta"}` (`σ² ~ InvGamma(α, β)`, shape and scale) or
`{"variance"}` (`σ²`), here one value per utterance: arrays `[...]` without the model's
block axis (a one-block model's `[..., 1]` is squeezed by the caller). Given `σ²`,
`E/σ² ~ χ²_T`, so the predicted distribution of `E` is

- Student-t: `E/(2β) ~ BetaPrime(T/2, α)`, or in the large-`T` limit `E/T ~ InvGamma(α, β)`;
- Gaussian: `E/σ² ~ χ²_T`.

Its CDF, which the PIT reads, is `energy_law.energy_cdf`, the one the exit probabilities
read (float32); CRPS and NLL need its quantiles and density, which scipy gives.

The predicted SNR is that of docs/method.md §4 with the zero-mean cross term dropped,
`SNR = 10 log10((S + E)/E) = 10 log10(1 + S/E)`, so `P(SNR ≥ γ) = P(E ≤ S/(10^(γ/10) − 1))`
is `probabilistic.snr_exceedance`; realised SNRs are measured as they are
(with the cross term).
"""

import functools
import json
import math

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats

from eesep_jax import errors
from eesep_jax import files
from eesep_jax.core import energy_law
from eesep_jax.core import probabilistic
from eesep_jax.core import stopping

# Saved next to the checkpoints in a training workdir; `separate`/`evaluate` pick it up.
POSTHOC_FILE = "posthoc_calibration.json"
# Its entry for the regime the scales were fitted in (see `save_posthoc`).
REGIME_KEY = "regime"
# dB per neper of energy: 10 log10(x) = _DB · log(x).
_DB = 10 / math.log(10)
# `_energy_cdf` pads its inputs to a power of two of at least this many values, so that
# the jitted law compiles once per size class rather than once per shape.
_MIN_PADDED_SIZE = 1024


def _float(x):
  return np.asarray(x, np.float64)


def _is_gaussian(params):
  """Whether `params` are Gaussian (`{"variance"}`) rather than Student-t; checks keys."""
  return energy_law.likelihood(params) == "gaussian"


# ----------------------------------------------------------------------------------
# Reliability of exit probabilities.


def reliability(probabilities, outcomes, num_bins=10):
  """Reliability diagram and expected calibration error of `P(SNR ≥ γ)`.

  Predictions are binned into `num_bins` equal-width bins of `[0, 1]` (a probability
  of exactly 1 goes in the last bin). ECE is `Σ_b (n_b/N) |frequency_b − confidence_b|`
  over non-empty bins.

  Args:
    probabilities: predicted `P(SNR ≥ γ)`, any shape (flattened).
    outcomes: realised `SNR ≥ γ`, booleans of the same shape.
    num_bins: number of bins.

  Returns:
    Dict of numpy arrays: `edges` `[num_bins + 1]`; per bin `[num_bins]`, `count`
    (ints), `confidence` (mean predicted probability) and `frequency` (share of
    outcomes that are true), both NaN in empty bins; and `ece`, a float.
  """
  probabilities = _float(probabilities).ravel()
  outcomes = np.asarray(outcomes, bool).ravel()
  if probabilities.shape != outcomes.shape:
    raise ValueError(f"{probabilities.size} probabilities but {outcomes.size} outcomes")
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  index = np.clip(np.floor(probabilities * num_bins).astype(np.int64), 0, num_bins - 1)
  count = np.bincount(index, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    confidence = np.bincount(index, probabilities, num_bins) / count
    frequency = np.bincount(index, outcomes, num_bins) / count
  gap = np.where(count > 0, np.abs(frequency - confidence), 0.0)
  return {
    "edges": edges,
    "count": count,
    "confidence": confidence,
    "frequency": frequency,
    "ece": float(np.sum(count * gap) / max(count.sum(), 1)),
  }


def resampled_ece(probabilities, outcomes, weights, num_bins=10):
  """`reliability`'s ECE of resamples that draw whole items (utterances) with weights.

  In a resample that draws item `i` `w_i` times, ECE is `Σ_b |Σ_i w_i r_ib| / Σ_i w_i n_i`,
  with `r_ib` the sum of `outcome − probability` over item `i`'s predictions in bin `b`
  and `n_i` its number of predictions, so that every resample costs one matrix product.

  Args:
    probabilities: predicted `P(SNR ≥ γ)` `[items, ...]`.
    outcomes: realised `SNR ≥ γ`, booleans of the same shape.
    weights: `[resamples, items]`, how often each item is drawn in each resample.
    num_bins: number of bins.

  Returns:
    `[resamples]` ECE.
  """
  probabilities = _float(probabilities)
  items = probabilities.shape[0]
  probabilities = probabilities.reshape(items, -1)
  outcomes = np.asarray(outcomes, bool).reshape(items, -1)
  index = np.clip(np.floor(probabilities * num_bins).astype(np.int64), 0, num_bins - 1)
  residual = np.zeros((items, num_bins))
  np.add.at(residual, (np.arange(items)[:, None], index), outcomes - probabilities)
  weights = np.asarray(weights, np.float64)
  return np.abs(weights @ residual).sum(axis=-1) / (weights.sum(axis=-1) * probabilities.shape[1])


# ----------------------------------------------------------------------------------
# Predicted distribution of the error energy; probability integral transform.


@functools.partial(jax.jit, static_argnames="exact")
def _jitted_energy_cdf(energy, params, num_samples, exact):
  return energy_law.energy_cdf(energy, params, num_samples, exact=exact)


def _energy_cdf(energy, params, num_samples, exact=True):
  """`P(E' ≤ E)`, `E'` the predicted error energy of `num_samples` samples, float64 `[...]`.

  `energy_law.energy_cdf`, the law the exit probabilities read, of one-block parameters:
  `params` as in the module docstring, arrays broadcastable with `energy` and
  `num_samples`. Student-t: the exact beta prime form, else its large-`T` inverse gamma
  limit.
  """
  names = sorted(params)
  arrays = np.broadcast_arrays(
    _float(energy), _float(num_samples), *(_float(params[name]) for name in names)
  )
  shape, size = arrays[0].shape, arrays[0].size
  padded_size = max(_MIN_PADDED_SIZE, 1 << (size - 1).bit_length())
  # The padding is a harmless law: `E = T = 1` under `α = 2`, `β = σ² = 1`.
  fill = [1.0, 1.0, *(2.0 if name == "alpha" else 1.0 for name in names)]
  energy, time, *values = (
    jnp.asarray(np.pad(array.ravel(), (0, padded_size - size), constant_values=value), jnp.float32)
    for array, value in zip(arrays, fill)
  )
  blocks = {name: value[:, None] for name, value in zip(names, values)}  # One block.
  cdf = _jitted_energy_cdf(energy, blocks, time[:, None], exact)
  return np.asarray(cdf, np.float64)[:size].reshape(shape)


def _energy_distribution(params, num_samples):
  """scipy frozen distribution of the predicted error energy `E` of `num_samples` samples.

  `params` as in the module docstring (arrays broadcastable with `num_samples`);
  Student-t: the exact beta prime form.
  """
  # scipy in float64 for CRPS and NLL: they need the law's quantiles and log density
  # (whose terms of order `T` cancel), which the float32 `energy_law` does not give.
  half = _float(num_samples) / 2
  if _is_gaussian(params):
    return stats.gamma(half, scale=2 * _float(params["variance"]))
  return stats.betaprime(half, _float(params["alpha"]), scale=2 * _float(params["beta"]))


def pit_values(error_energy_per_sample, alpha, beta, num_samples=None):
  """Probability integral transform of realised error energies (Student-t forms).

  With `num_samples` None, docs/method.md §5's `u = F_IG(E/T; α, β)`: the realised error
  variance `E/T` under the predicted `InvGamma(α, β)`, exact in the large-`T` limit
  (`E/T → σ²`). With `num_samples = T`, the exact predictive `u = P(E' ≤ E)`,
  `E'/(2β) ~ BetaPrime(T/2, α)`, which also holds for short signals. Either way `u` is
  Uniform(0, 1) when the predicted variance distribution is calibrated.

  Args:
    error_energy_per_sample: `E/T = ‖s − ŝ‖²/T`, `[...]`.
    alpha, beta: `[...]` (broadcastable).
    num_samples: None, or `T` broadcastable to `[...]`.

  Returns:
    `[...]` PIT values in `[0, 1]`.
  """
  energy = _float(error_energy_per_sample)
  params = {"alpha": alpha, "beta": beta}
  if num_samples is None:  # The large-`T` form in `E/T`: one sample's energy.
    return _energy_cdf(energy, params, 1.0, exact=False)
  return _energy_cdf(energy * _float(num_samples), params, num_samples)


def pit_values_gaussian(error_energy, variance, num_samples):
  """Probability integral transform under the Gaussian forms: `u = F_χ²_T(E/σ²)`.

  Args:
    error_energy: `E = ‖s − ŝ‖²`, `[...]`.
    variance: predicted `σ²`, `[...]` (broadcastable).
    num_samples: `T`, broadcastable to `[...]`.

  Returns:
    `[...]` PIT values in `[0, 1]`, uniform when the Gaussian model is calibrated.
  """
  return _energy_cdf(error_energy, {"variance": variance}, num_samples)


def log_energy_nll(error_energy, params, num_samples):
  """Negative log-likelihood of the realised `log E` under the predicted distribution.

  In nats, free of the signals' units (the density of `log E`, not of `E`); it differs
  from the per-sample likelihoods of `probabilistic` (and from what `fit_posthoc`
  minimises) only by terms free of the predictions, so it ranks predictions alike.

  Args:
    error_energy: realised `E = ‖s − ŝ‖²`, `[...]`, positive.
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[...]`.
    num_samples: `T`, broadcastable to `[...]`.

  Returns:
    `[...]` NLL in nats (lower is better).
  """
  energy = _float(error_energy)
  return -(_energy_distribution(params, num_samples).logpdf(energy) + np.log(energy))


def ks_distance(u):
  """Kolmogorov–Smirnov distance `sup_x |F_n(x) − x|` of samples `u` from Uniform(0, 1).

  Args:
    u: PIT values, any shape (flattened).

  Returns:
    A float in `[0, 1]` (the statistic of `scipy.stats.kstest(u, "uniform")`).
  """
  u = np.sort(_float(u).ravel())
  rank = np.arange(1, u.size + 1) / u.size
  return float(max(np.max(rank - u), np.max(u - (rank - 1 / u.size))))


# ----------------------------------------------------------------------------------
# CRPS and sharpness of the predicted SNR.


def snr_crps(estimate_energy, params, realised_snr_db, num_samples, *, num_nodes=32):
  """Continuous ranked probability score of the predicted SNR against the realised SNR.

  The predicted SNR is `10 log10(1 + S/E)` with `E` drawn from its predicted
  distribution (exact beta prime for Student-t, `σ² χ²_T` for Gaussian): the
  distribution whose upper tail is `probabilistic`'s `P(SNR ≥ γ)`. Its quantile
  function is `q(τ) = 10 log10(1 + S/E_{1−τ})` (`SNR` falls as `E` grows) with
  `E_{1−τ}` scipy's quantile of `E`, and

      CRPS = 2 ∫₀¹ (1{y < q(τ)} − τ)(q(τ) − y) dτ,

  whose integrand is smooth except for a kink at `τ* = P(SNR ≤ y)`. So the integral is
  split there and each piece computed by `num_nodes`-point Gauss–Legendre quadrature
  (the upper piece in `1 − τ`, so that no level rounds to 1). Against adaptive
  quadrature of `∫ (F(x) − 1{x ≥ y})² dx`, 32 nodes err by under 1e-4 relative (mostly
  under 1e-6) for `α` down to 1.01 and `T` up to 10^6. A realised SNR at or below 0 dB
  (below the predicted support) scores the whole integral on one piece.

  Args:
    estimate_energy: `S = ‖ŝ‖²`, `[...]`.
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[...]`.
    realised_snr_db: the measured SNR `y` in dB, `[...]`.
    num_samples: `T`, broadcastable to `[...]`.
    num_nodes: quadrature nodes per piece: `2 · num_nodes` quantile evaluations
      per utterance, the cost of this function.

  Returns:
    `[...]` CRPS in dB (lower is better; 0 only for a certain, exact prediction).
  """
  names = sorted(params)
  arrays = np.broadcast_arrays(
    _float(estimate_energy),
    _float(realised_snr_db),
    _float(num_samples),
    *(_float(params[n]) for n in names),
  )
  shape = arrays[0].shape
  signal, realised, time, *values = (a.reshape(-1, 1) for a in arrays)
  energy = _energy_distribution(dict(zip(names, values)), time)

  with np.errstate(divide="ignore"):  # A silent estimate, S = 0, has SNR 0 dB.
    log_signal = np.log(signal)

  def snr_db(error_energy):
    # `10 log10(1 + S/E)` in logs. Levels of weight 0 or nearly 0 give `E = 0` or `∞` (or
    # underflow): clipped to the finite floats, their SNR and weighted terms stay finite.
    finite = np.finfo(np.float64)
    log_error = np.log(np.clip(error_energy, finite.tiny, finite.max))
    return _DB * (np.logaddexp(log_signal, log_error) - log_error)

  positive = realised > 0
  # The error energy at which SNR = y; P(SNR ≤ y) = P(E ≥ it) is 0 for y ≤ 0.
  threshold = signal / np.expm1(np.where(positive, realised, 1.0) / _DB)
  below = np.where(positive, energy.sf(threshold), 0.0)  # τ* = P(SNR ≤ y).
  above = np.where(positive, energy.cdf(threshold), 1.0)  # 1 − τ*.
  nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
  level = below * (1 + nodes) / 2  # τ in (0, τ*): q(τ) ≤ y.
  upper = above * (1 - nodes) / 2  # 1 − τ for τ in (τ*, 1): q(τ) ≥ y.
  lower_part = np.sum(weights * level * (realised - snr_db(energy.isf(level))), axis=-1)
  upper_part = np.sum(weights * upper * (snr_db(energy.ppf(upper)) - realised), axis=-1)
  # 2 ∫ over each piece = its width times the weighted sum (Legendre weights sum to 2).
  crps = below[:, 0] * lower_part + above[:, 0] * upper_part
  return crps.reshape(shape)


def sharpness(params, num_samples=None, axis=None):
  """Predicted spread: the standard deviation of `10 log10 E` in dB, averaged.

  `log E` is a sum of log-gamma variables, so its variance is a sum of trigamma
  functions: `ψ'(α) + ψ'(T/2)` (Student-t, `E/(2β) ~ BetaPrime(T/2, α)`), `ψ'(α)` in
  the large-`T` limit (`num_samples` None), `ψ'(T/2)` (Gaussian). It is free of the
  predicted level (`β`, `σ²`, `S`), and equals the predicted SNR's standard deviation
  where the SNR is well above 0 dB (there `SNR ≈ 10 log10 S − 10 log10 E`). Smaller is
  sharper; compare it across exits only alongside a calibration measure.

  Args:
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[...]`.
    num_samples: `T` broadcastable to `[...]`; required for Gaussian parameters.
    axis: axes of `[...]` to average over; None for all.

  Returns:
    The mean standard deviation in dB: a float, or an array over the kept axes.
  """
  gaussian = _is_gaussian(params)
  if num_samples is None and gaussian:
    raise ValueError("Gaussian parameters need num_samples")
  chi_square = 0.0 if num_samples is None else special.polygamma(1, _float(num_samples) / 2)
  if gaussian:
    variance = np.broadcast_arrays(chi_square, _float(params["variance"]))[0]
  else:
    variance = special.polygamma(1, _float(params["alpha"])) + chi_square
  return np.mean(_DB * np.sqrt(variance), axis=axis)


# ----------------------------------------------------------------------------------
# Target satisfaction.


def clopper_pearson(successes, count, confidence_level=0.95):
  """Clopper–Pearson's exact binomial interval of the share `k / n`, for arrays.

  The `(1 − level)/2` and `(1 + level)/2` quantiles of `Beta(k, n − k + 1)` and
  `Beta(k + 1, n − k)`, with bounds 0 and 1 at `k = 0` and `k = n`.

  Args:
    successes, count: `[...]` integers `k ≤ n` (broadcastable).
    confidence_level: coverage of the interval.

  Returns:
    `(low, high)`, `[...]` float64 each; `(0, 1)` where `n = 0`.
  """
  successes, count = np.broadcast_arrays(
    np.asarray(successes, np.float64), np.asarray(count, np.float64)
  )
  tail = (1 - confidence_level) / 2
  with np.errstate(invalid="ignore"):  # Beta(0, ·) where the bound is 0 or 1 anyway.
    low = np.where(successes > 0, stats.beta.ppf(tail, successes, count - successes + 1), 0.0)
    high = np.where(
      successes < count, stats.beta.ppf(1 - tail, successes + 1, count - successes), 1.0
    )
  return low, high


def target_satisfaction(exited, realised_snr_db, target_snr_db, confidence_level=0.95):
  """Share of exited utterances whose realised SNR meets the target, with an exact CI.

  The interval is Clopper–Pearson's (`clopper_pearson`). Calibrated exits under
  `(γ, p)` give a share of at least `p`.

  Args:
    exited: booleans `[...]`, whether each utterance exited under the policy.
    realised_snr_db: `[...]`, the SNR in dB of the output each utterance exited with.
    target_snr_db: `γ`, scalar or broadcastable to `[...]`.
    confidence_level: coverage of the interval.

  Returns:
    `{"count", "share", "low", "high"}`: the number exited (int), the share meeting
    `γ` and the interval (floats; share NaN and interval [0, 1] when none exited).
  """
  exited = np.asarray(exited, bool)
  met = np.broadcast_to(_float(realised_snr_db) >= _float(target_snr_db), exited.shape)
  count, successes = int(exited.sum()), int(met[exited].sum())
  if count == 0:
    return {"count": 0, "share": math.nan, "low": 0.0, "high": 1.0}
  low, high = clopper_pearson(successes, count, confidence_level)
  return {"count": count, "share": successes / count, "low": float(low), "high": float(high)}


# ----------------------------------------------------------------------------------
# Post-hoc calibration (per-exit scales fitted on validation data).


def _student_nll_scales(energy, num_samples, alpha, beta, fit_alpha):
  """`(c_β, c_α)` (`c_α` 1 unless `fit_alpha`) maximising the likelihood of `E`, `[n]` each.

  Per utterance, with `a = T/2`, `b = 1 + c_α (α − 1)` and `r = 2 c_β β / E`, the
  negative log density of `E/(2 c_β β) ~ BetaPrime(a, b)` is, up to terms free of the
  scales, `−b log r + (a + b) log1p(r) + log B(a, b)`: written in `r` (about `2α/T`)
  rather than `E/(2β)` (about `T/(2α)`), its terms stay of order `α log T` instead of
  `T`, so the mean over utterances is minimised to full precision. The `c_β` direction
  is convex.
  """
  half = num_samples / 2
  base = np.log(2 * beta / energy)

  def objective(log_scales):
    log_ratio = log_scales[0] + base
    ratio = np.exp(log_ratio)
    excess = np.exp(log_scales[1]) * (alpha - 1) if fit_alpha else alpha - 1
    shape = 1 + excess
    nll = -shape * log_ratio + (half + shape) * np.log1p(ratio) + special.betaln(half, shape)
    gradient = [np.mean((half + shape) * ratio / (1 + ratio) - shape)]
    if fit_alpha:
      gradient.append(
        np.mean(
          excess * (np.log1p(1 / ratio) + special.digamma(shape) - special.digamma(half + shape))
        )
      )
    return np.mean(nll), np.array(gradient)

  result = optimize.minimize(objective, np.zeros(2 if fit_alpha else 1), jac=True, method="BFGS")
  # BFGS reports a precision loss when it stops at the optimum to rounding; only a
  # gradient that is not small means it did not converge.
  if not result.success and np.max(np.abs(result.jac)) > 1e-4:
    raise RuntimeError(f"post-hoc NLL fit did not converge: {result.message}")
  scales = np.exp(result.x)
  return scales[0], (scales[1] if fit_alpha else 1.0)


def fit_posthoc(params, error_energy, num_samples, method="nll", fit_alpha=False):
  """Per-exit scales on the variance parameters, fitted on validation data.

  The scales (see `probabilistic.apply_posthoc`) are `c_β` on `β` and optionally `c_α` on `α − 1`
  (Student-t), or `c` on `σ²` (Gaussian):

  - `method="nll"` maximises, per exit, the likelihood of the realised error energies
    under the rescaled predictive: `E/(2 c_β β) ~ BetaPrime(T/2, 1 + c_α (α − 1))`
    (the marginal of `σ² ~ InvGamma` and `E | σ² ~ σ² χ²_T`; equivalently the Student-t
    NLL of docs/method.md §2) by BFGS over `log c`; for Gaussian `E/(c σ²) ~ χ²_T`, whose
    maximum-likelihood scale is `c = Σ E/σ² / Σ T`.
  - `method="moments"` matches the mean: `c` is the mean over utterances of the
    realised `E/T` over its predicted mean (`β/(α − 1)` or `σ²`), so that the rescaled
    prediction is unbiased for `E/T`. Ratios rather than totals keep loud utterances
    from dominating. It fits `β` (or `σ²`) only.

  Args:
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[..., exits]` (leading axes
      pooled: utterances, sources).
    error_energy: realised `E = ‖s − ŝ‖²`, `[..., exits]`, positive.
    num_samples: `T`, broadcastable to `[..., exits]` (a per-utterance array `[n]`
      needs a trailing axis, `[n, 1]`).
    method: "nll" or "moments".
    fit_alpha: also fit `c_α` (Student-t, "nll" only).

  Returns:
    Scales, each `[exits]`: `{"beta_scale"}` plus `{"alpha_excess_scale"}` with
    `fit_alpha` (Student-t), or `{"variance_scale"}` (Gaussian).
  """
  gaussian = _is_gaussian(params)
  if method not in ("nll", "moments"):
    raise ValueError(f'method={method!r}: must be "nll" or "moments"')
  if fit_alpha and (gaussian or method != "nll"):
    raise ValueError('fit_alpha needs Student-t parameters and method="nll"')
  names = sorted(params)
  arrays = np.broadcast_arrays(
    _float(error_energy), _float(num_samples), *(_float(params[n]) for n in names)
  )
  num_exits = arrays[0].shape[-1]
  energy, time, *values = (a.reshape(-1, num_exits) for a in arrays)
  values = dict(zip(names, values))
  if gaussian:
    ratio = energy / values["variance"]  # c · χ²_T.
    scale = ratio.sum(0) / time.sum(0) if method == "nll" else np.mean(ratio / time, axis=0)
    return {"variance_scale": scale}
  alpha, beta = values["alpha"], values["beta"]
  if method == "moments":
    return {"beta_scale": np.mean(energy / time * (alpha - 1) / beta, axis=0)}
  fits = np.array(
    [
      _student_nll_scales(energy[:, k], time[:, k], alpha[:, k], beta[:, k], fit_alpha)
      for k in range(num_exits)
    ]
  )
  scales = {"beta_scale": fits[:, 0]}
  if fit_alpha:
    scales["alpha_excess_scale"] = fits[:, 1]
  return scales


def brier_score(probabilities, outcomes):
  """Mean squared difference between probabilities and 0/1 outcomes (same shapes)."""
  return float(np.mean((_float(probabilities) - np.asarray(outcomes, np.float64)) ** 2))


# Bounds on `fit_decision_posthoc`'s `log c_k` and slope `b`: where no fit utterance
# reaches a target (or every one does), the Brier score falls for ever as the variance
# grows (or shrinks), and the fit would run to infinite scales.
DECISION_LOG_SCALE_LIMIT = math.log(1e3)
DECISION_SLOPE_LIMIT = 10.0


def fit_decision_posthoc(
  params, estimate_energy, snr_min, crosstalk, num_samples, targets, start=None, fit_slope=True
):
  """Per-exit scales on `β` (or `σ²`) and one cross-talk slope, fitted to the decision.

  The stopping rule reads `P(worst source's SNR ≥ γ)`; these scales minimise its Brier
  score against reaching `γ` (`snr_min ≥ γ`), averaged over `targets`, utterances and
  exits. The variance becomes `c_k e^{bρ}` times the network's at exit `k`
  (`probabilistic.apply_posthoc`, `ρ` the cross-talk): one slope `b` for every exit,
  stored once per exit. A likelihood fit weighs every error energy alike, and leaves
  the utterances with middling cross-talk as over-confident at the decision as speech
  the network never heard; the Brier score weighs the decision alone.

  Minimised by Nelder-Mead over `(log c_k, b)` (or `log c_k` alone), from `start` (the likelihood's scales,
  say: `fit_posthoc`), within `|log c_k| ≤ DECISION_LOG_SCALE_LIMIT` and
  `|b| ≤ DECISION_SLOPE_LIMIT`; the score is a proper one, so the true probability
  minimises it in expectation.

  Args:
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[utterances, exits, sources]`.
    estimate_energy: `S = ‖ŝ‖²`, `[utterances, exits, sources]`.
    snr_min: `[utterances, exits]` dB, the worst source's realised SNR.
    crosstalk: `[utterances, exits]`, `ρ` (`probabilistic.crosstalk`).
    num_samples: `[utterances]`, `T`.
    targets: target SNRs `γ` in dB.
    start: `{"beta_scale" or "variance_scale": [exits], "crosstalk_slope": [exits]}`
      to start from, any of them missing (or None) the identity.
    fit_slope: also fit the slope; False keeps `start`'s, and fits the scales alone.

  Returns:
    `{"beta_scale" or "variance_scale": [exits], "crosstalk_slope": [exits]}`.
  """
  name = "variance_scale" if _is_gaussian(params) else "beta_scale"
  widened_name = "variance" if name == "variance_scale" else "beta"
  num_exits = snr_min.shape[1]
  time = _float(num_samples)[:, None, None]
  start = start or {}
  slope = float(np.mean(start.get("crosstalk_slope", 0.0)))
  x0 = np.r_[np.log(start.get(name, np.ones(num_exits))), [slope] if fit_slope else []]
  targets = jnp.asarray(targets, jnp.float32)
  reached = jnp.asarray(snr_min[None] >= np.asarray(targets)[:, None, None], jnp.float32)
  arrays = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  signal = jnp.asarray(estimate_energy, jnp.float32)
  rho = jnp.asarray(crosstalk, jnp.float32)[..., None]

  @jax.jit
  def objective(x):
    fitted_slope = x[num_exits] if fit_slope else slope
    log_scale = x[:num_exits][:, None] + fitted_slope * rho  # [utterances, exits, 1].
    scaled = {**arrays, widened_name: arrays[widened_name] * jnp.exp(log_scale)}
    blocks = {key: value[..., None] for key, value in scaled.items()}  # The one block.
    probability = jax.vmap(
      lambda target: jnp.min(
        probabilistic.snr_exceedance(signal, blocks, target, time[..., None]), axis=-1
      )
    )(targets)
    return jnp.mean((probability - reached) ** 2)

  bounds = [(-DECISION_LOG_SCALE_LIMIT, DECISION_LOG_SCALE_LIMIT)] * num_exits + [
    (-DECISION_SLOPE_LIMIT, DECISION_SLOPE_LIMIT)
  ] * fit_slope
  x0 = np.clip(x0, *np.transpose(bounds))
  simplex = np.clip(np.vstack([x0, x0 + 0.5 * np.eye(x0.size)]), *np.transpose(bounds))
  result = optimize.minimize(
    lambda x: float(objective(jnp.asarray(x, jnp.float32))),
    x0,
    method="Nelder-Mead",
    bounds=bounds,
    options={
      "initial_simplex": simplex,
      "maxiter": 400 * x0.size,
      "xatol": 1e-3,
      "fatol": 1e-7,
    },
  )
  return {
    name: np.exp(result.x[:num_exits]),
    "crosstalk_slope": np.full(num_exits, result.x[num_exits] if fit_slope else slope),
  }


def save_posthoc(workdir, scales, regime=None):
  """Writes post-hoc scales to `workdir/POSTHOC_FILE` (JSON); returns the path.

  The file is written under a temporary name and renamed, so that a run killed while
  writing it leaves the previous file (or none), never half of one.

  Args:
    workdir: a training workdir.
    scales: `{name: [exits]}`.
    regime: what the scales were fitted (and the threshold certified) on:
      `{"chunk_seconds", "overlap_seconds"}`, `separate_long`'s chunks, or None for
      whole utterances. `separate` warns when it runs in another.
  """
  unknown = set(scales) - set(probabilistic.POSTHOC_SCALES)
  if unknown:
    raise ValueError(
      f"unknown post-hoc scales {sorted(unknown)}; valid: {probabilistic.POSTHOC_SCALES}"
    )
  path = epath.Path(workdir) / POSTHOC_FILE
  contents = {name: _float(value).tolist() for name, value in scales.items()}
  files.write_text(path, json.dumps({**contents, REGIME_KEY: regime}, indent=2))
  return path


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _posthoc_problem(contents):
  """What is wrong with the contents of a post-hoc file, or None."""
  if not isinstance(contents, dict):
    return "not a JSON object"
  unknown = set(contents) - {*probabilistic.POSTHOC_SCALES, REGIME_KEY}
  if unknown:
    return f"unknown keys {sorted(unknown)}"
  names = [name for name in contents if name != REGIME_KEY]
  if not names:
    return "holds no scales"
  for name in names:
    value = contents[name]
    if not (isinstance(value, list) and value and all(map(_is_number, value))):
      return f"{name} is not a list of numbers, one per exit"
    if not all(math.isfinite(v) for v in value):
      return f"{name} holds {value}: every value must be finite"
    if name != "crosstalk_slope" and not all(v > 0 for v in value):
      return f"{name} holds {value}: every scale must be positive"
  if len({len(contents[name]) for name in names}) > 1:
    return "its scales differ in their number of exits"
  regime = contents.get(REGIME_KEY)
  if regime is not None:
    keys = ("chunk_seconds", "overlap_seconds")
    if not (
      isinstance(regime, dict)
      and set(regime) == set(keys)
      and all(
        _is_number(regime[key]) and math.isfinite(regime[key]) and regime[key] > 0 for key in keys
      )
    ):
      return f'its {REGIME_KEY} is not {{"chunk_seconds": s, "overlap_seconds": s}}'
  return None


def _read_posthoc(workdir):
  """`(path, contents)` of the post-hoc file in `workdir`, checked; contents None when
  there is none.

  Raises:
    errors.DataError: naming the file, when it is damaged (not JSON, unknown or
      missing keys, a scale that is no finite positive number, a malformed regime).
  """
  path = epath.Path(workdir) / POSTHOC_FILE
  if not path.exists():
    return path, None
  try:
    contents = json.loads(path.read_text())
    problem = _posthoc_problem(contents)
  except ValueError as error:  # JSONDecodeError, and bytes that are no text.
    problem = f"not JSON ({error})"
  if problem:
    raise errors.DataError(
      f"{path}: damaged post-hoc calibration, {problem}: run `eesep "
      "calibrate` again, or pass --no-posthoc"
    )
  return path, contents


def load_posthoc(workdir):
  """Post-hoc scales saved by `save_posthoc` in `workdir`, arrays `[exits]`; None if none.

  Raises:
    errors.DataError: naming the file, when it is damaged (`_read_posthoc`).
  """
  _, contents = _read_posthoc(workdir)
  if contents is None:
    return None
  return {name: _float(value) for name, value in contents.items() if name != REGIME_KEY}


def load_posthoc_regime(workdir):
  """The regime `save_posthoc` recorded in `workdir`: `{"chunk_seconds",
  "overlap_seconds"}`, or None for whole utterances, for files written before regimes
  were recorded (`eesep calibrate` then fitted on whole utterances), and when there is
  no file."""
  _, contents = _read_posthoc(workdir)
  return None if contents is None else contents.get(REGIME_KEY)


# ----------------------------------------------------------------------------------
# Thresholds with a finite-sample guarantee (learn then test).


def _group_shares(losses, groups):
  """`(shares [..., groups], singletons)`: the mean of `losses` `[..., rows]` within each
  group (labels `[rows]`, None: every row its own), and whether every group is one row."""
  if groups is None:
    return losses, True
  _, index, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
  losses = np.asarray(losses, np.float64)
  totals = np.stack(
    [np.bincount(index, row, sizes.size) for row in losses.reshape(-1, losses.shape[-1])]
  )
  return (totals / sizes).reshape(losses.shape[:-1] + sizes.shape), bool(np.all(sizes == 1))


def _hoeffding_bentkus_p_value(risk, n, delta):
  """Hoeffding–Bentkus p-value of `H: R > δ` from the mean `risk` of `n` i.i.d. losses
  in `[0, 1]` (Bates et al., 2021): `min(exp(−n h(min(R̂, δ), δ)), e P(Bin(n, δ) ≤
  ⌈n R̂⌉))`, `h(a, b) = a log(a/b) + (1 − a) log((1 − a)/(1 − b))`."""
  low = np.minimum(risk, delta)
  with np.errstate(divide="ignore", invalid="ignore"):
    divergence = special.xlogy(low, low / delta) + special.xlogy(1 - low, (1 - low) / (1 - delta))
  bentkus = math.e * stats.binom.cdf(np.ceil(n * np.asarray(risk) - 1e-9), n, delta)
  return np.minimum(np.exp(-n * divergence), bentkus)


def failure_rate(failed, groups=None, confidence_level=0.95):
  """Share of failures with a confidence interval, rows grouped by utterance.

  Args:
    failed: booleans `[rows]`.
    groups: `[rows]` labels: the rows of one label (the chunks of one utterance) are
      dependent, so the rate is the mean over groups of each one's failing share, with
      Hoeffding's interval (valid for means of i.i.d. bounded losses); None, or every
      group one row: the plain share with Clopper–Pearson's exact interval.
    confidence_level: coverage of the interval.

  Returns:
    `{"risk", "low", "high", "num_utterances"}` (the number of groups).
  """
  shares, singletons = _group_shares(np.asarray(failed, np.float64), groups)
  count = shares.size
  if singletons:  # Clopper–Pearson on the rows that did not fail.
    met = target_satisfaction(np.ones(count, bool), 1 - shares, 1.0, confidence_level)
    return {
      "risk": 1 - met["share"],
      "low": 1 - met["high"],
      "high": 1 - met["low"],
      "num_utterances": count,
    }
  risk = float(np.mean(shares))
  half_width = math.sqrt(math.log(2 / (1 - confidence_level)) / (2 * count))
  return {
    "risk": risk,
    "low": max(0.0, risk - half_width),
    "high": min(1.0, risk + half_width),
    "num_utterances": count,
  }


def guaranteed_threshold(
  probabilities,
  realised_snr_db,
  target_snr_db,
  delta,
  epsilon,
  candidate_thresholds=None,
  groups=None,
):
  """The smallest exit threshold whose failure rate is certified `≤ δ` w.p. `≥ 1 − ε`.

  Learn then test (Angelopoulos et al., 2021) over the exit rule "stop at the first
  exit whose probability is ≥ λ, else at the last exit". An utterance that never
  reaches `λ` exits at the last exit and counts as exited there, so every utterance
  exits and "the share of exited utterances whose SNR is below γ" is the failure rate

      R(λ) = P(SNR at the exit taken under λ < γ),

  a mean of per-utterance binary losses (no ratio of random counts). For each
  candidate the null `H_λ: R(λ) > δ` is tested with the exact binomial p-value
  `P(Bin(n, δ) ≤ x_λ)`, `x_λ` the calibration failures among `n` utterances: valid,
  since under `H_λ` `x_λ ~ Bin(n, R(λ))` is stochastically larger than `Bin(n, δ)`
  (binary losses make this the tightest valid tail bound; Hoeffding–Bentkus is for
  general bounded ones). Candidates are tested from strict (large `λ`) to permissive
  in a fixed sequence that stops at the first p-value above `ε`; fixed-sequence
  testing controls the family-wise error at `ε` with no multiplicity correction, so
  for the returned `λ̂` (the last rejection):

      P_calibration( R(λ̂) ≤ δ ) ≥ 1 − ε,

  where `R` is the failure rate of a new utterance from the same distribution. This
  assumes the calibration and test utterances are i.i.d. draws from one distribution
  and that the probabilities do not depend on the calibration set (fit post-hoc
  scales on other data). `R` is a population rate: on a finite test set the observed
  share fluctuates around it. Since the last exit's own failures count at every `λ`,
  nothing is certified when the full network alone fails more than `δ` of the time.

  With `groups`, the rows are the chunks `separate` cuts utterances into, and the
  chunks of one utterance (one label) are not independent: the loss of an utterance is
  then the share of its chunks that fail, `R(λ)` its expectation (the expected share of
  a new utterance's chunks below `γ`), and the p-value Hoeffding–Bentkus's for i.i.d.
  losses in `[0, 1]` (valid, and less tight than the binomial one, which is used when
  every utterance is one chunk).

  Args:
    probabilities: `[utterances, exits]`, exit probabilities for target `γ`.
    realised_snr_db: `[utterances, exits]`, each exit's realised SNR in dB (several
      sources: the aggregate the exit condition uses, e.g. the worst source).
    target_snr_db: `γ`, scalar or broadcastable to `[utterances, exits]`.
    delta: tolerated failure rate `δ` in (0, 1).
    epsilon: tolerated probability `ε` in (0, 1) that the guarantee fails.
    candidate_thresholds: the `λ` to scan, fixed before seeing the calibration data;
      default 0, 0.001, ..., 1. Scanned in decreasing order.
    groups: None, or `[utterances]` labels grouping the rows by utterance (see above).

  Returns:
    Dict: `threshold`, the smallest certified `λ` (a float; None if none is); and per
    candidate `[candidates]`, in scan order: `candidates`, `p_values`, `certified`
    (booleans, a prefix), `risk` (calibration failure share, per utterance with
    `groups`) and `mean_exit` (mean 1-based exit taken over the rows, a compute
    proxy); and `num_utterances` (groups).
  """
  probabilities = _float(probabilities)
  if probabilities.ndim != 2 or probabilities.shape[1] < 2:
    raise ValueError(
      f"probabilities {probabilities.shape}: need [utterances, exits] with "
      "two or more exits (pass a single early exit with the full network)"
    )
  if not (0 < delta < 1 and 0 < epsilon < 1):
    raise ValueError(f"delta={delta} and epsilon={epsilon} must lie in (0, 1)")
  if candidate_thresholds is None:
    candidate_thresholds = np.linspace(0.0, 1.0, 1001)
  candidates = np.unique(_float(candidate_thresholds))[::-1]
  failed = np.broadcast_to(_float(realised_snr_db) < _float(target_snr_db), probabilities.shape)
  # The probabilistic policy at confidence λ, for every candidate λ: [candidates, rows].
  accept = stopping.accepts(
    stopping.Policy(confidence=candidates[:, None, None]),
    np.arange(1, probabilities.shape[1] + 1),
    probability=probabilities,
  )
  taken = np.asarray(stopping.first_accepting_exit(accept))
  losses = failed[np.arange(probabilities.shape[0]), taken - 1]
  shares, singletons = _group_shares(losses, groups)
  num_utterances = shares.shape[-1]
  risk = shares.mean(axis=-1)
  if singletons:
    p_values = stats.binom.cdf(np.sum(losses, axis=-1), num_utterances, delta)
  else:
    p_values = _hoeffding_bentkus_p_value(risk, num_utterances, delta)
  certified = np.logical_and.accumulate(p_values <= epsilon)
  threshold = float(candidates[certified][-1]) if certified.any() else None
  return {
    "threshold": threshold,
    "candidates": candidates,
    "p_values": p_values,
    "certified": certified,
    "risk": risk,
    "mean_exit": taken.mean(axis=-1),
    "num_utterances": num_utterances,
  }
