"""Probabilistic exits: error-variance likelihoods, parameterisations, exit probabilities.

Implements docs/method.md §2–4. Per utterance (or per block of `L` samples) and source, the
error `e = s − ŝ` is `N(0, σ² I)` with `σ² ~ InvGamma(α, β)` (Student-t likelihoods), or
with `σ²` given (Gaussian likelihoods). Everything here is a pure `jax.numpy` function
over `[..., time]` signals (batch dims leading, time last) and is jit-able; a
`VarianceConfig` is frozen, so it can be a static argument.

Two conventions for the variance parameters:

- the low-level functions (`student_t_nll`, `gaussian_nll`, `*_exceedance_probability`)
  take per-utterance parameters `[...]`, or `[..., blocks]` when given a `block_length`;
- the config-level functions (`variance_parameters`, `exit_nll`, `exit_probability`,
  `expected_snr_db`) use parameter dicts whose arrays always end in a block axis
  `[..., blocks]` (one block when `config.block_length` is None), as the model emits.

Valid lengths: every function that counts samples takes an optional `lengths`, the
valid samples of each example (broadcastable to the batch dims; None: all `time`).
Signals must be zero beyond them (callers zero-pad), so energies need no mask and only
the sample counts change: block `b` holds `clip(lengths − b·L, 0, L)` valid samples, and
a block with none contributes nothing (see `valid_block_count`).
"""

from collections.abc import Callable
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import special
import numpy as np

# Floor on an estimate's power per sample (−100 dB re full scale): a silent estimate
# still gives a finite, positive variance under the `*-snr` forms.
POWER_FLOOR = 1e-10
# Raw log-variances and SNRs are clipped to these ranges, so that no raw output can
# make a variance 0 or inf (in float32, exp(±30) and 10^(±10) are far from both).
LOG_LIMIT = 30.0
SNR_LIMIT_DB = 100.0
CONDITIONS = ("snr", "snri", "snr_ref")


# ----------------------------------------------------------------------------------
# Blocks.


def block_count(time, block_length=None):
  """Samples in each block of a `time`-sample signal: numpy ints `[ceil(time / L)]`.

  Blocks hold `block_length` samples except the last, which may be shorter; None
  gives one block of `time` samples.
  """
  if block_length is None or block_length >= time:
    return np.array([time])
  count = np.full((-(-time // block_length),), block_length)
  count[-1] = time - (count.size - 1) * block_length
  return count


def valid_block_count(time, block_length=None, lengths=None):
  """Valid samples in each block: `block_count(time, block_length)` when `lengths` is
  None, else `clip(lengths − start_b, 0, T_b)` per example.

  Args:
    time: samples of the (padded) signal.
    block_length: samples per block; None for one block.
    lengths: None, or the valid samples of each example, `[...]` (ints or floats).

  Returns:
    numpy ints `[blocks]`, or a float array `[..., blocks]` (at least float32).
  """
  count = block_count(time, block_length)
  if lengths is None:
    return count
  lengths = jnp.asarray(lengths)
  lengths = lengths.astype(jnp.promote_types(lengths.dtype, jnp.float32))
  start = np.cumsum(count) - count
  return jnp.clip(lengths[..., None] - start, 0, count).astype(lengths.dtype)


def _valid_samples(time, lengths):
  """`T`, the samples that count: `time`, or `lengths` (at least float32) when given."""
  if lengths is None:
    return time
  lengths = jnp.asarray(lengths)
  return lengths.astype(jnp.promote_types(lengths.dtype, jnp.float32))


def block_energy(signal, block_length=None):
  """Energy of `signal` in consecutive blocks of `block_length` samples.

  Args:
    signal: `[..., time]`.
    block_length: samples per block (the last block may be shorter); None for one block.

  Returns:
    `(energy, count)`: `energy` `[..., blocks]` (at least float32), the sum of squares
    in each block; `count` a numpy int array `[blocks]`, the samples in each block.
  """
  signal = jnp.asarray(signal)
  signal = signal.astype(jnp.promote_types(signal.dtype, jnp.float32))
  count = block_count(signal.shape[-1], block_length)
  length = count[0]
  pad = [(0, 0)] * (signal.ndim - 1) + [(0, count.size * length - count.sum())]
  squared = jnp.pad(jnp.square(signal), pad)
  energy = jnp.sum(squared.reshape(signal.shape[:-1] + (count.size, length)), axis=-1)
  return energy, count


def _with_block_axis(block_length, *params):
  """Low-level functions' per-utterance parameters `[...]` get a one-block axis."""
  if block_length is not None:
    return params
  return tuple(jnp.asarray(p)[..., None] for p in params)


# ----------------------------------------------------------------------------------
# Likelihoods (docs/method.md §2), reported per sample.


def student_t_nll(target, estimate, alpha, beta, *, block_length=None, lengths=None):
  """Student-t negative log-likelihood per sample, `σ² ~ InvGamma(α, β)` per block.

  Per block of `T_b` samples and error energy `E_b = ‖s_b − ŝ_b‖²`,
  `(α + T_b/2) log(1 + E_b/(2β)) + (T_b/2) log(2πβ) + log Γ(α) − log Γ(α + T_b/2)`,
  i.e. `−log` of a multivariate t with `2α` degrees of freedom and scale `(β/α) I`.
  Blocks are independent: their NLLs add; the total is divided by the valid samples
  `T`. A block with no valid sample adds exactly 0 (and no gradient).

  Args:
    target: `s`, `[..., time]`, zero beyond `lengths`.
    estimate: `ŝ`, `[..., time]`, zero beyond `lengths`.
    alpha, beta: `[...]`, or `[..., blocks]` with `block_length`.
    block_length: samples per variance block; None for one per signal.
    lengths: valid samples of each example, broadcastable to `[...]`; None: `time`.

  Returns:
    `[...]` NLL per sample.
  """
  alpha, beta = _with_block_axis(block_length, alpha, beta)
  energy, _ = block_energy(target - estimate, block_length)
  count = valid_block_count(target.shape[-1], block_length, lengths)
  half = jnp.asarray(count / 2, energy.dtype)
  nll = ((alpha + half) * jnp.log1p(energy / (2 * beta))
         + half * jnp.log(2 * math.pi * beta)
         + special.gammaln(alpha) - special.gammaln(alpha + half))
  nll = jnp.where(count > 0, nll, 0.0)
  return jnp.sum(nll, axis=-1) / _valid_samples(target.shape[-1], lengths)


def gaussian_nll(target, estimate, variance, *, block_length=None, lengths=None):
  """Gaussian negative log-likelihood per sample, variance `σ²` per block.

  `Σ_b (T_b/2) log(2πσ_b²) + E_b/(2σ_b²)`, divided by the valid samples `T`; a block
  with no valid sample adds exactly 0.

  Args:
    target, estimate: `[..., time]`, zero beyond `lengths`.
    variance: `[...]`, or `[..., blocks]` with `block_length`.
    block_length: samples per variance block; None for one per signal.
    lengths: valid samples of each example, broadcastable to `[...]`; None: `time`.

  Returns:
    `[...]` NLL per sample.
  """
  (variance,) = _with_block_axis(block_length, variance)
  energy, _ = block_energy(target - estimate, block_length)
  count = valid_block_count(target.shape[-1], block_length, lengths)
  nll = 0.5 * (jnp.asarray(count, energy.dtype) * jnp.log(2 * math.pi * variance)
               + energy / variance)
  nll = jnp.where(count > 0, nll, 0.0)
  return jnp.sum(nll, axis=-1) / _valid_samples(target.shape[-1], lengths)


def _likelihood(params):
  """"gaussian" or "student", from a parameter dict's keys."""
  if set(params) == {"variance"}:
    return "gaussian"
  if set(params) == {"alpha", "beta"}:
    return "student"
  raise ValueError(f"variance parameters must have keys {{'alpha', 'beta'}} or "
                   f"{{'variance'}}, got {sorted(params)}")


def exit_nll(target, estimate, params, config, *, lengths=None):
  """Per-sample NLL of one exit under its variance parameters.

  Args:
    target, estimate: `[..., time]`, zero beyond `lengths`.
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[..., blocks]` (from
      `variance_parameters`).
    config: the `VarianceConfig` the parameters came from.
    lengths: valid samples of each example, broadcastable to `[...]`; None: `time`.

  Returns:
    `[...]` NLL per sample.
  """
  if config.block_length is None:  # The low-level NLLs take per-utterance parameters.
    params = {name: value[..., 0] for name, value in params.items()}
  if _likelihood(params) == "gaussian":
    return gaussian_nll(target, estimate, params["variance"],
                        block_length=config.block_length, lengths=lengths)
  return student_t_nll(target, estimate, params["alpha"], params["beta"],
                       block_length=config.block_length, lengths=lengths)


# ----------------------------------------------------------------------------------
# Variance parameterisations (docs/method.md §3).


def _log_precision(raw, power, mean_factor):
  """`1/σ²` (or `1/β`) from a predicted `log σ²` (or `log β`)."""
  del power, mean_factor  # Absolute units: the level of the input is not used.
  return jnp.exp(-jnp.clip(raw, -LOG_LIMIT, LOG_LIMIT))


def _snr_precision(raw, power, mean_factor):
  """`1/σ²` (or `1/β`) from a predicted SNR `q` dB: `σ² = P(ŝ) 10^(−q/10)` (Gaussian)
  or `β = (α − 1) P(ŝ) 10^(−q/10)` (Student-t, `mean_factor = α − 1`)."""
  snr = jnp.power(10.0, jnp.clip(raw, -SNR_LIMIT_DB, SNR_LIMIT_DB) / 10)
  return snr / (mean_factor * power)


class Parameterisation(NamedTuple):
  """How a variance head's raw outputs `[..., blocks, num_raw]` map to parameters.

  `raw[..., 0]` sets the scale through `precision(raw[..., 0], power, mean_factor)`,
  which returns `1/σ²` (Gaussian) or `1/β` (Student-t) given the estimate's block power
  `P(ŝ)` and `mean_factor` (`α − 1` for Student-t, 1 for Gaussian); for Student-t with
  `num_raw == 2`, `α = α_min + softplus(raw[..., 1])`, else `α` is `fixed_alpha`.
  """
  likelihood: str  # "gaussian" or "student"
  num_raw: int
  precision: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

  @property
  def learns_alpha(self):
    return self.likelihood == "student" and self.num_raw == 2


PARAMETERISATIONS = {
    "gaussian-logvar": Parameterisation("gaussian", 1, _log_precision),
    "gaussian-snr": Parameterisation("gaussian", 1, _snr_precision),
    "student-logvar": Parameterisation("student", 2, _log_precision),
    "student-snr": Parameterisation("student", 2, _snr_precision),
    "student-fixed-dof": Parameterisation("student", 1, _log_precision),
}


@dataclasses.dataclass(frozen=True)
class VarianceConfig:
  """How an exit's variance head is read (frozen: hashable, a valid static argument).

  Attributes:
    parameterisation: one of `PARAMETERISATIONS` (docs/method.md §3).
    monotone: later exits can only predict a smaller error variance: `α` and `1/β`
      (`1/σ²` for Gaussian forms) are running sums over exits (see
      `variance_parameters`).
    block_length: samples per `σ²` block; None for one `σ²` per utterance.
    alpha_min: lower bound on `α`; above 1 so the mean of `σ²` is finite.
    fixed_alpha: `α` of "student-fixed-dof".
  """
  parameterisation: str = "student-snr"
  monotone: bool = False
  block_length: int | None = None
  alpha_min: float = 1.01
  fixed_alpha: float = 3.0

  def __post_init__(self):
    if self.parameterisation not in PARAMETERISATIONS:
      raise ValueError(f"unknown variance parameterisation {self.parameterisation!r}; "
                       f"valid names: {sorted(PARAMETERISATIONS)}")
    if not (self.alpha_min > 1 and self.fixed_alpha > 1):
      raise ValueError(f"alpha_min={self.alpha_min} and fixed_alpha={self.fixed_alpha} "
                       "must exceed 1 for the mean of the variance to be finite")
    if self.block_length is not None and self.block_length < 1:
      raise ValueError(f"block_length={self.block_length} must be positive or None")


def num_raw_outputs(config):
  """Raw numbers the variance head emits per source and block."""
  return PARAMETERISATIONS[config.parameterisation].num_raw


def num_variance_blocks(time, config):
  """Number of `σ²` blocks for a `time`-sample signal under `config`."""
  return block_count(time, config.block_length).size


def init_variance_state(batch_shape, num_blocks, config, dtype=jnp.float32):
  """Zero running sums for `variance_parameters`, each `[*batch_shape, num_blocks]`.

  `{"precision"}` (sum of `1/β` or `1/σ²` increments) plus, when `α` is learned,
  `{"alpha"}` (sum of `α − α_min` increments). Used only when `config.monotone`.
  """
  zeros = jnp.zeros(tuple(batch_shape) + (num_blocks,), dtype)
  state = {"precision": zeros}
  if PARAMETERISATIONS[config.parameterisation].learns_alpha:
    state["alpha"] = zeros
  return state


def variance_parameters(raw, estimate, state, config, *, lengths=None):
  """Maps one exit's raw variance-head outputs to its variance parameters.

  The plain (non-monotone) forms are those of docs/method.md §3, with floors: `log σ²`,
  `log β` and `q` are clipped (`LOG_LIMIT`, `SNR_LIMIT_DB`), `α = α_min + softplus(·)`,
  and `P(ŝ) = ‖ŝ_b‖²/T_b`, the estimate's power over each block's valid samples, is at
  least `POWER_FLOOR` (which is also what a block with no valid sample gets).

  With `config.monotone`, each exit adds non-negative increments to running sums
  carried in `state` from the previous exit: `α_k = α_min + Σ_{j≤k} softplus(a_j)`
  and `1/β_k = Σ_{j≤k} π_j` (`1/σ²_k` likewise), where the increment `π_j` is the
  precision the plain form predicts at exit `j` (with `α_j`): so `α` never decreases,
  `β` (or `σ²`) never increases, and the first exit equals the plain form. For the
  `*-snr` forms `π_j = 10^(q_j/10) / ((α_j − 1) P_j(ŝ))` is normalised by exit `j`'s own
  block power, so scaling the input by `s` scales every increment, the running sum
  and `β` by `1/s²`, `1/s²` and `s²`: scale equivariance holds exit by exit.

  Args:
    raw: `[..., blocks, num_raw_outputs(config)]` head outputs (see `Parameterisation`).
    estimate: `[..., time]`, the exit's estimate (the caller decides on stop-gradient).
    state: `init_variance_state(...)` or the previous exit's returned state.
    config: a `VarianceConfig`.
    lengths: valid samples of each example, broadcastable to `[...]`; None: `time`.

  Returns:
    `(params, state)`: `{"alpha", "beta"}` (Student-t) or `{"variance"}` (Gaussian),
    each `[..., blocks]` float32 or wider; and the updated state (`state` itself when
    not monotone).
  """
  form = PARAMETERISATIONS[config.parameterisation]
  raw = jnp.asarray(raw)
  raw = raw.astype(jnp.promote_types(raw.dtype, jnp.float32))
  energy, _ = block_energy(estimate, config.block_length)
  if raw.shape[-2:] != (energy.shape[-1], form.num_raw):
    raise ValueError(f"raw outputs end in {raw.shape[-2:]}, expected (blocks, num_raw) = "
                     f"{(energy.shape[-1], form.num_raw)} for {config}")
  count = valid_block_count(estimate.shape[-1], config.block_length, lengths)
  # A block with no valid sample has no energy either: 0/1, then the floor.
  count = jnp.maximum(jnp.asarray(count, energy.dtype), 1)
  power = jnp.maximum(energy / count, POWER_FLOOR)
  new_state = dict(state)

  def accumulate(name, increment):
    if not config.monotone:
      return increment
    new_state[name] = state[name] + increment
    return new_state[name]

  if form.likelihood == "gaussian":
    precision = accumulate("precision", form.precision(raw[..., 0], power, 1.0))
    params = {"variance": 1 / precision}
  else:
    if form.learns_alpha:
      alpha = config.alpha_min + accumulate("alpha", jax.nn.softplus(raw[..., 1]))
    else:
      alpha = jnp.full(raw.shape[:-1], config.fixed_alpha, raw.dtype)
    precision = accumulate("precision", form.precision(raw[..., 0], power, alpha - 1))
    params = {"alpha": alpha, "beta": 1 / precision}
  return params, (new_state if config.monotone else state)


# ----------------------------------------------------------------------------------
# Regularised incomplete gamma and beta functions that stay accurate in float32 for
# shapes up to ~10^6. jax.scipy's gammainc/betainc lose ~1e-3 at shape 10^4 and ~0.1
# at 5·10^5: they subtract log Γ of the shapes, whose rounding errors then get
# exponentiated (and betainc's x = c/(c + 2β) rounds to 1 in float32 for large T).

# Shapes from which `_gammaincc` uses Temme's expansion; below, jax.scipy's.
_TEMME_MIN_SHAPE = 50.0
# Coefficients of the Taylor series of Temme's c_0(η) = 1/μ − 1/η at η = 0.
_TEMME_C0 = (-1 / 3, 1 / 12, -2 / 135, 1 / 864, 1 / 2835, -139 / 777600, 1 / 25515)
# Beta shapes from which `_beta_prime_cdf` uses Paulson's form where BGRAT does not
# hold; below, jax.scipy's betainc (accurate there: both shapes are then below 100).
_LARGE_BETA_SHAPE = 50.0
# Terms of the BGRAT series after the leading one (truncation error < 1e-7).
_BGRAT_TERMS = 6
# BGRAT holds (error < 1e-5 in float32) where the smaller shape is at most this share of
# the larger and at most √(50 · larger), the larger being at least `_BGRAT_MIN_SHAPE`
# (measured against scipy; at a ratio of 2/3 the error grows to 1e-2 at shape 300).
_BGRAT_RATIO = 0.5
_BGRAT_MIN_SHAPE = 10.0
# Relative step in `b` of the central differences that give betainc's derivative there
# (error ~1e-3 relative: float32 rounding of the values against the step).
_BETAINC_STEP = 3e-3
# Clamp on beta-prime / gamma arguments: far beyond where the probabilities saturate,
# far inside float32's range.
_ARG_MIN, _ARG_MAX = 1e-30, 1e30
_LOG_ARG_MIN, _LOG_ARG_MAX = math.log(_ARG_MIN), math.log(_ARG_MAX)
# Bounds on `μ = x/a − 1` in Temme/Stirling forms, which hold for `a ≥ 10`: beyond them
# `Q(a, x)` is 1 or 0 and `x^a e^(−x)/Γ(a) = 0` in float32, `log(1 + μ)` stays finite,
# and `μ²` cannot overflow (which, compiled, made the gradient NaN at `x = 10^30`).
_MU_MIN, _MU_MAX = -1 + 1e-6, 1e6


def _log1pmx_over_square(mu):
  """`(μ − log(1 + μ)) / μ²`, accurate near `μ = 0` (smooth: no branch cut there)."""
  small = jnp.abs(mu) < 0.1
  mu_small = jnp.where(small, mu, 0.0)
  series = sum((-mu_small) ** k / (k + 2) for k in range(9))
  mu_big = jnp.where(small, 1.0, mu)
  return jnp.where(small, series, (mu_big - jnp.log1p(mu_big)) / mu_big / mu_big)


def _gammaincc_temme(a, x):
  """`Q(a, x)` by Temme's uniform expansion, leading term (DLMF 8.12.3–8.12.9).

  Error below 1e-5 for `a ≥ 50` (the next term is `c_1/(a √(2πa))`, `|c_1| ≲ 1/540`).
  """
  mu = jnp.clip(x / a - 1, _MU_MIN, _MU_MAX)
  eta = mu * jnp.sqrt(2 * _log1pmx_over_square(mu))
  small = jnp.abs(eta) < 0.3
  eta_small = jnp.where(small, eta, 0.0)
  series = sum(c * eta_small ** k for k, c in enumerate(_TEMME_C0))
  mu_big, eta_big = jnp.where(small, 1.0, mu), jnp.where(small, 1.0, eta)
  c0 = jnp.where(small, series, 1 / mu_big - 1 / eta_big)
  remainder = jnp.exp(-0.5 * a * jnp.square(eta)) / jnp.sqrt(2 * math.pi * a) * c0
  return 0.5 * special.erfc(eta * jnp.sqrt(a / 2)) + remainder


def _gammaincc(a, x):
  """Upper regularised incomplete gamma `Q(a, x)` for any shape `a > 0`, `x ≥ 0`."""
  x = jnp.clip(x, 0.0, _ARG_MAX)
  if isinstance(a, (int, float)):  # A static shape picks its branch when tracing.
    return _gammaincc_temme(a, x) if a >= _TEMME_MIN_SHAPE else special.gammaincc(a, x)
  large = a >= _TEMME_MIN_SHAPE
  # Each branch gets inputs valid for it, so the other's NaNs reach no gradient.
  small_value = special.gammaincc(jnp.where(large, 1.0, a), x)
  large_value = _gammaincc_temme(jnp.where(large, a, _TEMME_MIN_SHAPE), x)
  return jnp.where(large, large_value, small_value)


def _stirling_remainder(z):
  """`log Γ(z) − [(z − ½) log z − z + ½ log 2π]` for `z ≥ 10` (error < 1e-10)."""
  return 1 / (12 * z) - 1 / (360 * z ** 3) + 1 / (1260 * z ** 5)


def _log_gamma_kernel(shape, x):
  """`log(x^shape e^(−x) / Γ(shape))`; from Stirling for `shape ≥ 10`, as
  `−shape (μ − log(1 + μ)) + ½ log(shape/2π) − remainder`, `μ = x/shape − 1`, whose
  terms do not cancel the way `shape log x − x − log Γ(shape)` does."""
  large = shape >= 10
  shape_large = jnp.where(large, shape, 10.0)
  x = jnp.maximum(x, _ARG_MIN)
  mu = jnp.clip(x / shape_large - 1, _MU_MIN, _MU_MAX)
  stirling = (-shape_large * mu * (mu * _log1pmx_over_square(mu))
              + 0.5 * jnp.log(shape_large / (2 * math.pi)) - _stirling_remainder(shape_large))
  shape_small = jnp.where(large, 1.0, shape)
  direct = shape_small * jnp.log(x) - x - special.gammaln(shape_small)
  return jnp.where(large, stirling, direct)


def _betainc_bgrat(a, b, log_x):
  """`I_x(a, b)` for large `a` and `b ≤ min(a/5, √(50a))`.

  DiDonato & Morris (1992) BGRAT, as in Boost's `beta_small_b_large_a_series`:
  `I_x(a, b) = Γ(a+b)/(Γ(a) t^b) Σ_n p_n J_n(b, u)` with `t = a + (b−1)/2`,
  `u = −t log x`; the leading term is Temme's `Q(b, u)`. The ratio of gammas is formed
  from Stirling differences, never from `log Γ(a)` itself:
  `log Γ(a+b) − log Γ(a) − b log t = (a − ½) log(1 + r) − b + b log((a+b)/t) + …`,
  `r = b/a`, whose first two terms cancel to `−a (r − log(1 + r)) − ½ log(1 + r)`.
  """
  t = a + (b - 1) / 2
  u = -t * log_x
  r = b / a
  ratio = jnp.exp(-b * r * _log1pmx_over_square(r) - 0.5 * jnp.log1p(r)
                  + b * jnp.log1p((b + 1) / (2 * t))
                  + _stirling_remainder(a + b) - _stirling_remainder(a))
  prefix = ratio * jnp.exp(_log_gamma_kernel(b, u))
  term = ratio * _gammaincc(b, u)
  total = term
  p = [1.0]
  half_log_x_squared = jnp.square(log_x / 2)
  power = 1.0
  for n in range(1, _BGRAT_TERMS + 1):
    # Python ints this large would overflow int32 once inside jax: divide by floats.
    p.append(sum((m * b - n) * p[n - m] / float(math.factorial(2 * m + 1))
                 for m in range(1, n)) / n
             + (b - 1) / float(math.factorial(2 * n + 1)))
    b2n = b + 2 * (n - 1)
    term = (b2n * (b2n + 1) * term + (u + b2n + 1) * power * prefix) / (4 * t * t)
    power = power * half_log_x_squared
    total = total + p[n] * term
  return total


def _beta_prime_cdf_paulson(a, b, z):
  """`P(W ≤ z)`, `W ~ BetaPrime(a, b)`, by Paulson's cube-root normal approximation of
  `F = W b/a ~ F(2a, 2b)`. Where `_beta_prime_cdf` uses it (both shapes ≥ 25) its
  error is below 7e-5, and falls as the shapes grow (2e-5 from `a = 200`)."""
  cube_root = jnp.cbrt(z * b / a)
  u1, u2 = 1 / (9 * a), 1 / (9 * b)
  score = ((1 - u2) * cube_root - (1 - u1)) / jnp.sqrt(u2 * jnp.square(cube_root) + u1)
  return special.ndtr(score)


@jax.custom_jvp
def _betainc(a, b, x):
  """jax.scipy's `I_x(a, b)`, with a derivative in `b`, which jax does not provide.

  Used only for shapes below 100, where it is accurate. The derivative in `b` is a
  central difference (relative step `_BETAINC_STEP`: within 2e-3 of scipy's); `a` is
  half a sample count and gets none.
  """
  return special.betainc(a, b, x)


@_betainc.defjvp
def _betainc_jvp(primals, tangents):
  a, b, x = primals
  _, b_dot, x_dot = tangents
  value, x_term = jax.jvp(lambda x: special.betainc(a, b, x), (x,), (x_dot,))
  step = _BETAINC_STEP * b
  slope = (special.betainc(a, b + step, x) - special.betainc(a, b - step, x)) / (2 * step)
  return value, x_term + slope * b_dot


def _beta_prime_cdf(z, a, b):
  """`P(W ≤ z) = I_{z/(1+z)}(a, b)` for `W ~ BetaPrime(a, b)`.

  `a` (= T/2) is a Python number, which picks the branches when tracing, or an array
  (valid lengths); `b` an array. By region, with the float32 error measured against
  scipy in float64:

  - BGRAT (`_betainc_bgrat`) where the smaller shape is at most `_BGRAT_RATIO` of the
    larger and at most `√(50 · larger)`, the larger ≥ 10: on `I_x(a, b)` when `b` is
    the smaller, on `1 − I_{1−x}(b, a)` when `a` is (large `α`, short signals): ≤ 6e-6;
  - elsewhere, for `a ≥ _LARGE_BETA_SHAPE`, Paulson's approximation (both shapes are
    then ≥ 25): ≤ 7e-5 (at `a ≈ b ≈ 50`), 2e-5 from `a = 200`;
  - elsewhere (both shapes below 100), jax.scipy's betainc: ≤ 4e-5.

  Over `a` from 0.5 to 5·10⁵ and `b` from 1.01 to 10⁵ the error is at most 7e-5.

  BGRAT takes `log x` (`_log_ratio_to_sum`) or `log(1 − x) = −log1p(z)`, so `x` near 1
  loses no precision. Every branch gets inputs valid for it, so the others' NaNs reach no
  gradient. `z` is clamped to `[_ARG_MIN, _ARG_MAX]` (see `_clamped_ratio`).
  """
  z = jnp.clip(z, _ARG_MIN, _ARG_MAX)
  static = isinstance(a, (int, float))

  def bgrat_holds(large, small):
    return (large >= _BGRAT_MIN_SHAPE) & (
        small <= jnp.minimum(_BGRAT_RATIO * large, jnp.sqrt(50 * large)))

  small_b, small_a = bgrat_holds(a, b), bgrat_holds(b, a)
  # One BGRAT for both orientations (half the compiled program): `I_x(a, b)`, or
  # `I_{1−x}(b, a)` whose complement it is.
  bgrat = small_b | small_a
  large = jnp.where(small_b, a, jnp.where(small_a, b, _BGRAT_MIN_SHAPE))
  small = jnp.where(small_b, b, jnp.where(small_a, a, 1.0))
  series = _betainc_bgrat(large, small, jnp.where(small_b, _log_ratio_to_sum(z),
                                                  -jnp.log1p(z)))
  value = jnp.where(small_b, series, jnp.where(small_a, 1 - series, 0.0))
  rest = ~bgrat
  if not static or a >= _LARGE_BETA_SHAPE:
    paulson = rest & (a >= _LARGE_BETA_SHAPE)
    value = value + jnp.where(paulson, _beta_prime_cdf_paulson(
        jnp.where(paulson, a, 1.0), jnp.where(paulson, b, 1.0), z), 0.0)
  if not static or a < _LARGE_BETA_SHAPE:
    moderate = rest & (a < _LARGE_BETA_SHAPE)
    value = value + jnp.where(moderate, _betainc(
        jnp.where(moderate, a, 1.0), jnp.where(moderate, b, 1.0),
        jnp.where(moderate, z / (1 + z), 0.5)), 0.0)
  return value


def _log_ratio_to_sum(z):
  """`log(z/(1 + z)) = −log1p(1/z)`, accurate for `z` large, `log z − log1p(z)` for `z`
  small, whose gradient, unlike `1/z`'s, stays finite down to `z = _ARG_MIN`."""
  large = z > 1
  z_large, z_small = jnp.where(large, z, 1.0), jnp.where(large, 1.0, z)
  return jnp.where(large, -jnp.log1p(1 / z_large), jnp.log(z_small) - jnp.log1p(z_small))


def _clamped_ratio(numerator, denominator):
  """`numerator / denominator` (positive) clamped to `[_ARG_MIN, _ARG_MAX]`, with the
  gradient of `exp(clip(log numerator − log denominator))`.

  The quotient's own gradient, `−numerator/denominator²`, overflows at `β = 10^±30`
  and meets the clamp's zero as `0 · inf = NaN`; the logs' never does. The value is the
  quotient's (the log form rounds `log` to 1e-6, an error of 3e-4 in `χ²_{10⁶}`'s CDF).
  """
  log_ratio = jnp.clip(jnp.log(numerator) - jnp.log(denominator), _LOG_ARG_MIN,
                       _LOG_ARG_MAX)
  smooth = jnp.exp(log_ratio)
  quotient = jnp.clip(numerator / denominator, _ARG_MIN, _ARG_MAX)
  return smooth + jax.lax.stop_gradient(quotient - smooth)


# ----------------------------------------------------------------------------------
# The distribution of the total error energy over variance blocks.

# Normal score of the per-block lower bounds of `_grid`: less than ~1e-8 of
# a block's mass lies below its bound (by the union of its two factors' tails).
_TAIL_SCORE = 5.6
# Cells of the finer of `_block_sum_cdf`'s two grids: a power of two (the FFTs'
# lengths), at least `_CELLS_PER_BLOCK` per block, as the error grows with the blocks.
_MIN_CELLS = 512
_CELLS_PER_BLOCK = 12


def _wilson_hilferty(shape, score):
  """Wilson–Hilferty's quantile of `Gamma(shape, 1)` at normal score `score`, floored
  at 0: a location (`score` 0) or a bound (far in a tail) of the law, not a quantile to
  rely on (its tails are off by a factor or so, on the safe side for the bounds here)."""
  root = 1 - 1 / (9 * shape) + score / (3 * jnp.sqrt(shape))
  return shape * jnp.maximum(root, 0.0) ** 3


def _convolve_truncated(mass):
  """`[..., terms, cells] -> [..., cells]`: the law of the terms' sum, on the cells'
  lattice, below the last cell. Pairwise by FFT, truncating after each round, so no
  round's sum wraps around (FFT length ≥ 2 · cells)."""
  cells = mass.shape[-1]
  length = 1 << (2 * cells - 1).bit_length()
  while mass.shape[-2] > 1:
    if mass.shape[-2] % 2:  # A term that is 0 (all its mass in cell 0) evens the count.
      zero = jnp.zeros(mass.shape[:-2] + (1, cells), mass.dtype).at[..., 0].set(1.0)
      mass = jnp.concatenate([mass, zero], axis=-2)
    spectrum = jnp.fft.rfft(mass, length, axis=-1)
    mass = jnp.fft.irfft(spectrum[..., 0::2, :] * spectrum[..., 1::2, :], length,
                         axis=-1)[..., :cells]
  return mass[..., 0, :]


def _grid(c, lower, location, present, cells):
  """`(edges, offset, step)` of a grid of `cells` cells per block; see `_block_sum_cdf`.

  Each `E_b` lies above its bound `l_b` (but for ~1e-8), so `Σ E_b ≤ c` only involves
  each block's law on `[l_b, c − Σ_{j≠b} l_j]`: a range of width `R = c − Σ l_b`, cut
  into cells of `h = R / (cells − blocks)` (the blocks' offsets below take up to one
  more cell each). Block `b`'s cell `k` is `[o_b + k h, o_b + (k+1) h)`: `edges`
  `[..., blocks, cells]` are their upper ends. The offset `o_b ∈ (l_b − h, l_b]` puts
  the block's location (about its median) at a cell's midpoint, so that a block much
  narrower than a cell is placed where it is rather than rounded by up to `h/2` (many
  quiet blocks' roundings would add up).
  """
  num_blocks = lower.shape[-1]
  span = c - jnp.sum(lower, axis=-1)
  # Where c is below every bound the result is 0 (`_block_sum_cdf`): any finite grid.
  span = jnp.where(span > 0, span, c)
  step = span / (cells - num_blocks)
  step_b = step[..., None]
  rounds = jnp.ceil((location - lower) / step_b - 0.5) + 0.5
  offset = jnp.where(present, location - rounds * step_b, 0.0)
  edges = offset[..., None] + step_b[..., None] * jnp.arange(1, cells + 1, dtype=c.dtype)
  return jnp.maximum(edges, _ARG_MIN), offset, step


def _grid_probability(c, cdf, offset, step, present):
  """`P(Σ_b E_b ≤ c)` from the blocks' CDFs at a `_grid`'s edges, `[..., blocks, cells]`.

  Cell `k` of block `b` holds `F_b(edge_k) − F_b(edge_{k−1})` (cell 0 also the mass
  below `o_b`), taken at its midpoint. Convolving the blocks' cells gives the sum's,
  whose CDF at `c` is read by linear interpolation.
  """
  cells = cdf.shape[-1]
  mass = jnp.diff(cdf, axis=-1, prepend=jnp.zeros_like(cdf[..., :1]))
  # A block with no valid sample is 0: all its mass in cell 0, with no midpoint offset.
  mass = jnp.where(present[..., None], mass, jnp.arange(cells) == 0)
  total = _convolve_truncated(mass)
  # Sum cell j covers Σ E_b ∈ Σ o_b + (j + n/2 + [−½, ½]) h, n blocks present.
  top = ((c - jnp.sum(offset, axis=-1)) / step
         - 0.5 * jnp.sum(present, axis=-1, dtype=c.dtype) + 0.5)
  weight = jnp.clip(top[..., None] - jnp.arange(cells, dtype=c.dtype), 0.0, 1.0)
  return jnp.sum(total * weight, axis=-1)


def _block_sum_cdf(c, block_cdf, lower, location, present):
  """`P(Σ_b E_b ≤ c)` for independent `E_b ≥ 0`, given each block's CDF.

  Why this method: the total error energy of several variance blocks has no closed
  law, and the usual numerical routes fail here. The beta prime's characteristic
  function has no closed form (Gil-Pelaez inversion would need a numerical integral
  per frequency and block); a saddle-point approximation needs a moment generating
  function, which the inverse gamma's polynomial tail does not have; numerical Laplace
  inversion cannot resolve the near-step CDF of long blocks with large `α`. But
  `P(Σ E_b ≤ c)` depends only on each block's law below `c`, which its exact CDF
  gives: so the blocks' laws are discretised on a grid of the range that matters and
  convolved (`_grid`, `_grid_probability`), tails included, in fixed shapes (jit-able, and
  differentiable wherever the block CDFs are).

  Rounding each block to its cell's midpoint adds about `(n + 1) h²/12` to the sum's
  variance, an error of order `h²`; so two grids, of `M` and `M/2` cells, are combined
  by Richardson extrapolation. Against a grid of 8192 cells the result is within 1e-4
  (40 blocks with `α = 10³`, the sharpest case; a single grid of 512 cells errs by
  3e-3); against Monte Carlo of the generative model, within 0.002 at levels 0.5–0.99
  for 2–40 blocks and `α` from 1.01 to 10³ (`tests/test_probabilistic.py`). Cost:
  about `1.5 M` CDF evaluations per block (`M = 512` for up to 42 blocks).

  Args:
    c: `[...]` thresholds.
    block_cdf: `edges [..., blocks, k] -> [..., blocks, k]`, each block's CDF.
    lower: `[..., blocks]`, bounds with less than ~1e-8 of each block's mass below.
    location: `[..., blocks]`, about each block's median (only places cells).
    present: `[..., blocks]` booleans; a block that is not present is 0.

  Returns:
    `[...]` probabilities.
  """
  num_blocks = lower.shape[-1]
  cells = max(_MIN_CELLS, 1 << (_CELLS_PER_BLOCK * num_blocks - 1).bit_length())
  lower = jnp.where(present, lower, 0.0)
  grids = [_grid(c, lower, location, present, size) for size in (cells, cells // 2)]
  # One evaluation of the CDFs for both grids: it is most of the compiled program.
  cdf = jnp.split(block_cdf(jnp.concatenate([edges for edges, _, _ in grids], axis=-1)),
                  [cells], axis=-1)
  fine, coarse = (_grid_probability(c, part, offset, step, present)
                  for part, (_, offset, step) in zip(cdf, grids))
  ratio = ((cells - num_blocks) / (cells // 2 - num_blocks)) ** 2  # (h_coarse/h_fine)².
  probability = (ratio * fine - coarse) / (ratio - 1)
  # Below every block's bound, P ≈ 0 (< 1e-8 per block).
  return jnp.where(c > jnp.sum(lower, axis=-1), jnp.clip(probability, 0.0, 1.0), 0.0)


# ----------------------------------------------------------------------------------
# Exit conditions (docs/method.md §4).


def _signal_energy(estimate, reference_power=None, lengths=None):
  """`S = ‖ŝ‖²`, or `P_ref · T` for SNR_ref; `[..., time] -> [...]`, at least
  `POWER_FLOOR · T`, `T` the valid samples (`lengths`, broadcastable to `[...]`)."""
  time = _valid_samples(estimate.shape[-1], lengths)
  if reference_power is None:
    energy = jnp.sum(block_energy(estimate)[0], axis=-1)
  else:
    energy = jnp.broadcast_to(jnp.asarray(reference_power) * time, estimate.shape[:-1])
    energy = energy.astype(jnp.promote_types(energy.dtype, jnp.float32))
  return jnp.maximum(energy, POWER_FLOOR * time)


def _energy_threshold(signal_energy, target_snr_db):
  """`(c, certain)`: the error energy at which SNR = γ once the cross term is dropped.

  `SNR ≥ γ ⇔ ‖e‖² ≤ c = S / (10^(γ/10) − 1)` for `γ > 0`. For `γ ≤ 0`,
  `S + ‖e‖² ≥ 10^(γ/10) ‖e‖²` always holds: the condition is `certain` (and `c` a
  harmless 1).
  """
  gamma = jnp.asarray(target_snr_db, signal_energy.dtype)
  certain = gamma <= 0
  excess = jnp.expm1(jnp.where(certain, 1.0, gamma) * (math.log(10) / 10))
  c = jnp.where(certain, 1.0, signal_energy / excess)
  return c, jnp.broadcast_to(certain, c.shape)


def _by_block_count(count, function, *arrays):
  """`function(half_count, *arrays)` over `[..., blocks, k]` arrays, `half_count` being
  the blocks' `T_b/2`: for static counts a Python number per run of equal counts (all
  blocks but maybe a shorter last one), so that each run picks its special-function
  branches when tracing; for valid lengths an array `[..., blocks, 1]`."""
  if not isinstance(count, np.ndarray):
    return function(count[..., None] / 2, *arrays)
  runs = [slice(0, count.size)]
  if count[-1] != count[0]:
    runs = [slice(0, count.size - 1), slice(count.size - 1, None)]
  return jnp.concatenate([function(float(count[run][0]) / 2, *(x[..., run, :] for x in arrays))
                          for run in runs], axis=-2)


def _blocks_present(count, shape):
  """`(present, count)`: which blocks hold valid samples, `[..., blocks]` broadcast to
  `shape`, and the counts with 1 where none, so no empty block's law is evaluated (its
  NaNs would reach the gradient through the `where` that discards it)."""
  if isinstance(count, np.ndarray):
    return jnp.ones(shape, bool), count
  count = jnp.broadcast_to(count, shape)
  return count > 0, jnp.maximum(count, 1)


def _half_count(count):
  """`T/2` of a one-block count: a Python number (static) or `[...]`."""
  if isinstance(count, np.ndarray):
    return float(count[0]) / 2
  return count[..., 0] / 2


def _student_energy_cdf(c, alpha, beta, count, exact):
  """`P(‖e‖² ≤ c)` under the Student-t error model: `E_b/(2β_b) ~ BetaPrime(T_b/2, α_b)`
  (`exact`) or `E_b/T_b ~ InvGamma(α_b, β_b)`, independent over blocks.

  Args:
    c: `[...]`.
    alpha, beta: `[..., blocks]`.
    count: the blocks' valid samples (`valid_block_count`): numpy `[blocks]` or
      `[..., blocks]`.
    exact: the beta prime form, else the large-`T` inverse gamma one.
  """
  shape = jnp.broadcast_shapes(c.shape + (1,), alpha.shape, beta.shape, jnp.shape(count))
  present, count = _blocks_present(count, shape)
  alpha, beta = jnp.broadcast_to(alpha, shape), jnp.broadcast_to(beta, shape)
  if shape[-1] == 1:  # One block: the closed form.
    half = _half_count(count)
    alpha, beta = alpha[..., 0], beta[..., 0]
    if exact:
      probability = _beta_prime_cdf(_clamped_ratio(c, 2 * beta), half, alpha)
    else:
      probability = _gammaincc(alpha, _clamped_ratio(2 * half * beta, c))
    return jnp.where(present[..., 0], probability, 1.0)
  samples = jnp.asarray(count, alpha.dtype)
  if exact:
    def block_cdf(edges):
      return _by_block_count(count, lambda half, edges, alpha, beta: _beta_prime_cdf(
          _clamped_ratio(edges, 2 * beta), half, alpha),
          edges, alpha[..., None], beta[..., None])
    # E_b = 2β Y/G, Y ~ Gamma(T_b/2), G ~ Gamma(α_b): bounded below by Y's lower and
    # G's upper tail.
    half = samples / 2
    lower = 2 * beta * _wilson_hilferty(half, -_TAIL_SCORE) / _wilson_hilferty(
        alpha, _TAIL_SCORE)
    location = 2 * beta * _wilson_hilferty(half, 0.0) / _wilson_hilferty(alpha, 0.0)
  else:
    def block_cdf(edges):
      return _gammaincc(alpha[..., None], _clamped_ratio((samples * beta)[..., None], edges))
    lower = samples * beta / _wilson_hilferty(alpha, _TAIL_SCORE)
    location = samples * beta / _wilson_hilferty(alpha, 0.0)
  return _block_sum_cdf(jnp.broadcast_to(c, shape[:-1]), block_cdf, lower, location,
                        present)


def _gaussian_energy_cdf(c, variance, count):
  """`P(‖e‖² ≤ c)` under Gaussian errors, `E_b/σ_b² ~ χ²_{T_b}` independent over blocks;
  `c` `[...]`, `variance` `[..., blocks]`, `count` as in `_student_energy_cdf`."""
  shape = jnp.broadcast_shapes(c.shape + (1,), variance.shape, jnp.shape(count))
  present, count = _blocks_present(count, shape)
  variance = jnp.broadcast_to(variance, shape)
  if shape[-1] == 1:
    half = _half_count(count)
    probability = 1 - _gammaincc(half, _clamped_ratio(c, 2 * variance[..., 0]))
    return jnp.where(present[..., 0], probability, 1.0)

  def block_cdf(edges):
    return _by_block_count(count, lambda half, edges, variance: 1 - _gammaincc(
        half, _clamped_ratio(edges, 2 * variance)), edges, variance[..., None])

  half = jnp.asarray(count, variance.dtype) / 2
  lower = 2 * variance * _wilson_hilferty(half, -_TAIL_SCORE)
  location = 2 * variance * _wilson_hilferty(half, 0.0)
  return _block_sum_cdf(jnp.broadcast_to(c, shape[:-1]), block_cdf, lower, location,
                        present)


def snr_exceedance(signal_energy, params, target_snr_db, num_samples, *, exact=True):
  """`P(SNR ≥ γ)` of each source under its predicted error law (docs/method.md §4): the one
  implementation of the exit probability, which `exit_probability` combines over
  conditions and sources, and calibration compares with realised SNRs.

  `SNR ≥ γ ⇔ ‖e‖² ≤ c = S / (10^(γ/10) − 1)` once the cross term is dropped, and
  `P = 1` for `γ ≤ 0`. Student-t: `‖e‖²/(2β) ~ BetaPrime(T/2, α)`, `P = I_{c/(c+2β)}(T/2,
  α)` (`exact`), or its large-`T` limit `Q(α, βT/c)`. Gaussian: `P(χ²_T ≤ c/σ²)`. Both
  stay accurate in float32 up to `T = 10^6` (the exact Student form to 7e-5 for any `T`
  and `α` up to 10⁵, see `_beta_prime_cdf`; the Gaussian one by Temme's expansion of
  the incomplete gamma function for `T ≥ 100`). With several blocks,
  `P(Σ_b E_b ≤ c)` for independent blocks has no closed form and is computed by
  numerical convolution of the blocks' laws (`_block_sum_cdf`; within 2e-3 of Monte
  Carlo).

  Args:
    signal_energy: `S = ‖ŝ‖²` `[...]`, or `P_ref · T` for the SNR_ref condition.
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[..., blocks]`.
    target_snr_db: `γ`, scalar or broadcastable to `[...]`.
    num_samples: the valid samples of each block, `[blocks]` or `[..., blocks]`
      (`valid_block_count`).
    exact: Student-t only: the incomplete beta form, else the upper incomplete gamma one.

  Returns:
    `[...]` probabilities.
  """
  c, certain = _energy_threshold(jnp.asarray(signal_energy), target_snr_db)
  if isinstance(num_samples, np.ndarray) and num_samples.ndim > 1:
    # Static counts are those shared by every example, `[blocks]`; others are arrays.
    num_samples = jnp.asarray(num_samples)
  if _likelihood(params) == "gaussian":
    probability = _gaussian_energy_cdf(c, params["variance"], num_samples)
  else:
    probability = _student_energy_cdf(c, params["alpha"], params["beta"], num_samples, exact)
  return jnp.where(certain, 1.0, probability)


def input_snr_db(mixture, estimate, *, lengths=None):
  """`SNR_in = 10 log10(‖ŝ‖² / ‖x − ŝ‖²)`, the input SNR as judged by the estimate.

  Args:
    mixture: `x`, `[..., time]`.
    estimate: `ŝ`, `[..., sources, time]`.
    lengths: valid samples of each example, broadcastable to `[...]`; None: `time`.

  Returns:
    `[..., sources]` in dB (energies floored at `POWER_FLOOR · T`).
  """
  lengths = None if lengths is None else jnp.asarray(lengths)[..., None]  # Over sources.
  residual = _signal_energy(mixture[..., None, :] - estimate, lengths=lengths)
  return 10 * jnp.log10(_signal_energy(estimate, lengths=lengths) / residual)


def exit_probability(estimate, params, target_snr_db, *, conditions=("snr",), mixture=None,
                     reference_power=None, config, exact=True, lengths=None):
  """Probability that an exit's output meets the target, for every example.

  Conditions (docs/method.md §4), each a probability per source:
  - "snr": `P(SNR ≥ γ)`;
  - "snri": `P(SNR ≥ γ + SNR_in)`, `SNR_in` from `input_snr_db(mixture, estimate)`;
  - "snr_ref": `P(SNR_ref ≥ γ)`, with `‖ŝ‖²` replaced by `reference_power · T`.
  Per source the maximum over `conditions` is taken, across sources the minimum.

  Args:
    estimate: `[batch..., sources, time]`, zero beyond `lengths`.
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[batch..., sources, blocks]`.
    target_snr_db: `γ`, scalar or `[batch...]`.
    conditions: names from `CONDITIONS`.
    mixture: `x`, `[batch..., time]`; needed by "snri".
    reference_power: `P_ref`, power per sample, scalar or `[batch...]`; needed by
      "snr_ref".
    config: the `VarianceConfig` the parameters came from.
    exact: Student-t only: incomplete beta form, else the large-`T` gamma form.
    lengths: valid samples of each example, broadcastable to `[batch...]`; None: `time`.

  Returns:
    `[batch...]` probabilities.
  """
  unknown = [name for name in conditions if name not in CONDITIONS]
  if unknown or not conditions:
    raise ValueError(f"conditions={conditions!r}: need one or more of {CONDITIONS}")
  if "snri" in conditions and mixture is None:
    raise ValueError('the "snri" condition needs the mixture')
  if "snr_ref" in conditions and reference_power is None:
    raise ValueError('the "snr_ref" condition needs reference_power')
  per_source = None if lengths is None else jnp.asarray(lengths)[..., None]
  signal = _signal_energy(estimate, lengths=per_source)
  gamma = jnp.asarray(target_snr_db, signal.dtype)[..., None]  # Over sources.
  targets = []  # (S, γ) of each condition.
  for name in conditions:
    if name == "snri":
      targets.append((signal, gamma + input_snr_db(mixture, estimate, lengths=lengths)))
    elif name == "snr_ref":
      reference = jnp.asarray(reference_power)[..., None]  # Over sources.
      targets.append((_signal_energy(estimate, reference, per_source), gamma))
    else:
      targets.append((signal, gamma))
  # All conditions in one evaluation, `[conditions, batch..., sources]`.
  energy, gamma = (jnp.stack([jnp.broadcast_to(x, signal.shape) for x in column])
                   for column in zip(*targets))
  count = valid_block_count(estimate.shape[-1], config.block_length, per_source)
  probability = snr_exceedance(energy, params, gamma, count, exact=exact)
  return jnp.min(jnp.max(probability, axis=0), axis=-1)


def expected_snr_db(estimate, params, config, *, lengths=None):
  """`10 log10(P(ŝ) / E[σ²])`, the SNR at the mean predicted variance.

  `E[σ²] = β/(α − 1)` (Student-t) or `σ²`; with blocks,
  `10 log10(‖ŝ‖² / Σ_b T_b E[σ_b²])`, `T_b` the blocks' valid samples.

  Args:
    estimate: `[..., time]`, zero beyond `lengths`.
    params: `{"alpha", "beta"}` or `{"variance"}`, each `[..., blocks]`.
    config: the `VarianceConfig` the parameters came from.
    lengths: valid samples of each example, broadcastable to `[...]`; None: `time`.

  Returns:
    `[...]` in dB.
  """
  count = valid_block_count(estimate.shape[-1], config.block_length, lengths)
  if _likelihood(params) == "gaussian":
    mean_variance = params["variance"]
  else:
    mean_variance = params["beta"] / (params["alpha"] - 1)
  expected_error = jnp.sum(jnp.asarray(count, mean_variance.dtype) * mean_variance, axis=-1)
  return 10 * jnp.log10(_signal_energy(estimate, lengths=lengths) / expected_error)


# ----------------------------------------------------------------------------------
# Post-hoc calibration of the variance parameters (fitted by `analysis.calibration`).

# The post-hoc scales each likelihood has (see `apply_posthoc`).
LIKELIHOOD_SCALES = {"student": ("beta_scale", "alpha_excess_scale"),
                     "gaussian": ("variance_scale",)}
POSTHOC_SCALES = LIKELIHOOD_SCALES["student"] + LIKELIHOOD_SCALES["gaussian"]


def apply_posthoc(params, scales, exit_axis=-1):
  """Applies post-hoc scales: `β ← c_β β`, `α ← 1 + c_α (α − 1)`, `σ² ← c σ²`.

  `α` is scaled above 1, not from 0, so that it stays above 1 (a finite mean variance,
  docs/method.md §3) for any positive scale. Parameters and scales may be numpy or jax
  arrays (also traced, under jit), so the stopping loop can apply one exit's scales.
  Scales of 1 give back the parameters exactly: `1 + (α − 1)` rounds to `α`.

  Args:
    params: `{"alpha", "beta"}` or `{"variance"}`, arrays with an exit axis.
    scales: from `calibration.fit_posthoc` or `calibration.load_posthoc`: arrays `[exits]`, applied along
      `exit_axis`, or scalars (one exit's scales, `{name: s[k]}`), applied throughout.
    exit_axis: the exit axis of the parameter arrays.

  Returns:
    The rescaled parameters, a new dict with the same keys.
  """
  gaussian = _likelihood(params) == "gaussian"
  allowed = set(LIKELIHOOD_SCALES["gaussian" if gaussian else "student"])
  if not set(scales) <= allowed or not scales:
    raise ValueError(f"scales {sorted(scales)} do not fit parameters {sorted(params)}")

  def along_exits(name, value):
    scale = scales.get(name, 1.0)
    if np.ndim(scale) == 1:
      shape = [1] * value.ndim
      shape[exit_axis] = scale.size
      scale = scale.reshape(shape)
    return scale

  if gaussian:
    return {"variance": params["variance"] * along_exits("variance_scale", params["variance"])}
  alpha, beta = params["alpha"], params["beta"]
  return {"alpha": 1 + along_exits("alpha_excess_scale", alpha) * (alpha - 1),
          "beta": beta * along_exits("beta_scale", beta)}


def full_posthoc(scales, config):
  """Every post-hoc scale of a model's likelihood, `[exits]` each; missing ones are 1.

  What the stopping loop takes: one set of arrays whatever was fitted, so that it
  compiles once (None, no calibration, gives all ones: the identity).

  Args:
    scales: `{name: [exits]}` (`calibration.fit_posthoc`, `calibration.load_posthoc`),
      or None.
    config: the model's `models.PressNetConfig` (its `variance` and `num_exits`).

  Returns:
    `{name: [exits]}` float64, the names of `LIKELIHOOD_SCALES[likelihood]`.

  Raises:
    ValueError: when a scale is not one of the likelihood's, or not one per exit.
  """
  likelihood = PARAMETERISATIONS[config.variance.parameterisation].likelihood
  names = LIKELIHOOD_SCALES[likelihood]
  scales = scales or {}
  if not set(scales) <= set(names):
    raise ValueError(f"post-hoc scales {sorted(scales)} do not fit a {likelihood} "
                     f"variance head (scales: {names})")
  full = {name: np.asarray(scales.get(name, np.ones(config.num_exits)), np.float64)
          for name in names}
  for name, value in full.items():
    if value.shape != (config.num_exits,):
      raise ValueError(f"post-hoc {name} has shape {value.shape}, not one value for each "
                       f"of the model's {config.num_exits} exits")
  return full
