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

The law of the error energy these parameters predict, whose CDF the exit probability
reads, is `core/energy_law.py`; its float32 special functions are `core/special.py`.
"""

from collections.abc import Callable
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import special
import numpy as np

from eesep_jax.core import energy_law

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
  nll = (
    (alpha + half) * jnp.log1p(energy / (2 * beta))
    + half * jnp.log(2 * math.pi * beta)
    + special.gammaln(alpha)
    - special.gammaln(alpha + half)
  )
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
  nll = 0.5 * (
    jnp.asarray(count, energy.dtype) * jnp.log(2 * math.pi * variance) + energy / variance
  )
  nll = jnp.where(count > 0, nll, 0.0)
  return jnp.sum(nll, axis=-1) / _valid_samples(target.shape[-1], lengths)


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
  if energy_law.likelihood(params) == "gaussian":
    return gaussian_nll(
      target, estimate, params["variance"], block_length=config.block_length, lengths=lengths
    )
  return student_t_nll(
    target,
    estimate,
    params["alpha"],
    params["beta"],
    block_length=config.block_length,
    lengths=lengths,
  )


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
      raise ValueError(
        f"unknown variance parameterisation {self.parameterisation!r}; "
        f"valid names: {sorted(PARAMETERISATIONS)}"
      )
    if not (self.alpha_min > 1 and self.fixed_alpha > 1):
      raise ValueError(
        f"alpha_min={self.alpha_min} and fixed_alpha={self.fixed_alpha} "
        "must exceed 1 for the mean of the variance to be finite"
      )
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
    raise ValueError(
      f"raw outputs end in {raw.shape[-2:]}, expected (blocks, num_raw) = "
      f"{(energy.shape[-1], form.num_raw)} for {config}"
    )
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


def snr_exceedance(signal_energy, params, target_snr_db, num_samples, *, exact=True):
  """`P(SNR ≥ γ)` of each source under its predicted error law (docs/method.md §4): the one
  implementation of the exit probability, which `exit_probability` combines over
  conditions and sources, and calibration compares with realised SNRs.

  `SNR ≥ γ ⇔ ‖e‖² ≤ c = S / (10^(γ/10) − 1)` once the cross term is dropped, and
  `P = 1` for `γ ≤ 0`. Student-t: `‖e‖²/(2β) ~ BetaPrime(T/2, α)`, `P = I_{c/(c+2β)}(T/2,
  α)` (`exact`), or its large-`T` limit `Q(α, βT/c)`. Gaussian: `P(χ²_T ≤ c/σ²)`. Both
  stay accurate in float32 up to `T = 10^6` (the exact Student form to 7e-5 for any `T`
  and `α` up to 10⁵, see `core/special.py`; the Gaussian one by Temme's expansion of the
  incomplete gamma function for `T ≥ 100`). With several blocks,
  `P(Σ_b E_b ≤ c)` for independent blocks has no closed form and is computed by
  numerical convolution of the blocks' laws (`energy_law.energy_cdf`; within 2e-3 of
  Monte Carlo).

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
  probability = energy_law.energy_cdf(c, params, num_samples, exact=exact)
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


def exit_probability(
  estimate,
  params,
  target_snr_db,
  *,
  conditions=("snr",),
  mixture=None,
  reference_power=None,
  config,
  exact=True,
  lengths=None,
):
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
  energy, gamma = (
    jnp.stack([jnp.broadcast_to(x, signal.shape) for x in column]) for column in zip(*targets)
  )
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
  if energy_law.likelihood(params) == "gaussian":
    mean_variance = params["variance"]
  else:
    mean_variance = params["beta"] / (params["alpha"] - 1)
  expected_error = jnp.sum(jnp.asarray(count, mean_variance.dtype) * mean_variance, axis=-1)
  return 10 * jnp.log10(_signal_energy(estimate, lengths=lengths) / expected_error)


# ----------------------------------------------------------------------------------
# Post-hoc calibration of the variance parameters (fitted by `analysis.calibration`).

# The post-hoc scales each likelihood has (see `apply_posthoc`), and the value of each
# that leaves the parameters as they are.
LIKELIHOOD_SCALES = {
  "student": ("beta_scale", "alpha_excess_scale", "crosstalk_slope"),
  "gaussian": ("variance_scale", "crosstalk_slope"),
}
POSTHOC_IDENTITY = {
  "beta_scale": 1.0,
  "alpha_excess_scale": 1.0,
  "variance_scale": 1.0,
  "crosstalk_slope": 0.0,
}
POSTHOC_SCALES = tuple(POSTHOC_IDENTITY)
# How they are fitted (`eesep calibrate --method`, `analysis.calibration`): by
# likelihood, by the mean error variance, or to the decision, with a cross-talk slope.
POSTHOC_METHODS = ("nll", "moments", "brier")


def crosstalk(estimate):
  """Cross-talk between an exit's estimates, observable without references:
  `ρ = max_{i≠j} |ŝᵢᵀŝⱼ| / (‖ŝᵢ‖ ‖ŝⱼ‖)`, `[..., sources, time] -> [...]` in [0, 1].

  A failed separation leaves each speaker in several estimates, which then correlate;
  leakage bounds an estimate's SNR by about `−20 log10 ρ`. 0 with one source, and for
  a pair with a silent estimate. Estimates must be zero beyond their valid samples.
  """
  estimate = jnp.asarray(estimate)
  gram = jnp.einsum("...it,...jt->...ij", estimate, estimate)
  norms = jnp.sqrt(jnp.diagonal(gram, axis1=-2, axis2=-1))
  products = norms[..., :, None] * norms[..., None, :]
  cosine = jnp.abs(gram) / jnp.where(products > 0, products, 1.0)
  others = ~jnp.eye(estimate.shape[-2], dtype=bool)
  return jnp.max(jnp.where(others, cosine, 0.0), axis=(-2, -1))


def _array_module(*values):
  """jax.numpy when any of `values` is a jax array (traced ones included), else numpy:
  numpy parameters stay numpy, in their precision."""
  return jnp if any(isinstance(value, jax.Array) for value in values) else np


def apply_posthoc(params, scales, exit_axis=-1, crosstalk=None):
  """Applies post-hoc scales: `β ← c_β e^{bρ} β`, `α ← 1 + c_α (α − 1)`,
  `σ² ← c e^{bρ} σ²`.

  `α` is scaled above 1, not from 0, so that it stays above 1 (a finite mean variance,
  docs/method.md §3) for any positive scale. The cross-talk slope `b` widens the
  variance of estimates that correlate (`crosstalk`), which separation failed on: the
  variance the network predicts there is that of speech it knows. Parameters and
  scales may be numpy or jax arrays (also traced, under jit), so the stopping loop can
  apply one exit's scales. The identity (`POSTHOC_IDENTITY`) gives back the
  parameters exactly: `1 + (α − 1)` rounds to `α`, and `e^0` is 1.

  Args:
    params: `{"alpha", "beta"}` or `{"variance"}`, arrays with an exit axis.
    scales: from `calibration.fit_posthoc` or `calibration.load_posthoc`: arrays
      `[exits]`, applied along `exit_axis`, or scalars (one exit's scales,
      `{name: s[k]}`), applied throughout.
    exit_axis: the exit axis of the parameter arrays.
    crosstalk: `ρ` of the estimates the parameters belong to (`crosstalk`),
      broadcastable against the parameters; needed with a `crosstalk_slope`.

  Returns:
    The rescaled parameters, a new dict with the same keys.
  """
  gaussian = energy_law.likelihood(params) == "gaussian"
  allowed = set(LIKELIHOOD_SCALES["gaussian" if gaussian else "student"])
  if not set(scales) <= allowed or not scales:
    raise ValueError(f"scales {sorted(scales)} do not fit parameters {sorted(params)}")
  if "crosstalk_slope" in scales and crosstalk is None:
    raise ValueError("a crosstalk_slope needs the estimates' crosstalk")

  def along_exits(name, value):
    scale = scales.get(name, POSTHOC_IDENTITY[name])
    if np.ndim(scale) == 1:
      shape = [1] * value.ndim
      shape[exit_axis] = scale.size
      scale = scale.reshape(shape)
    return scale

  def widened(name, value):
    scale = along_exits(name, value)
    if "crosstalk_slope" not in scales:
      return value * scale
    xp = _array_module(value, scale, scales["crosstalk_slope"], crosstalk)
    return value * scale * xp.exp(along_exits("crosstalk_slope", value) * crosstalk)

  if gaussian:
    return {"variance": widened("variance_scale", params["variance"])}
  alpha = params["alpha"]
  return {
    "alpha": 1 + along_exits("alpha_excess_scale", alpha) * (alpha - 1),
    "beta": widened("beta_scale", params["beta"]),
  }


def full_posthoc(scales, config):
  """Every post-hoc scale of a model's likelihood, `[exits]` each; missing ones are the
  identity (`POSTHOC_IDENTITY`).

  What the stopping loop takes: one set of arrays whatever was fitted, so that it
  compiles once (None, no calibration, gives the identity).

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
    raise ValueError(
      f"post-hoc scales {sorted(scales)} do not fit a {likelihood} variance head (scales: {names})"
    )
  full = {
    name: np.asarray(
      scales.get(name, np.full(config.num_exits, POSTHOC_IDENTITY[name])), np.float64
    )
    for name in names
  }
  for name, value in full.items():
    if value.shape != (config.num_exits,):
      raise ValueError(
        f"post-hoc {name} has shape {value.shape}, not one value for each "
        f"of the model's {config.num_exits} exits"
      )
  return full
