"""Likelihoods, parameterisations and exit probabilities against scipy and Monte Carlo."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from eesep_jax.core import probabilistic

NAMES = sorted(probabilistic.PARAMETERISATIONS)

# Everything is tested under jit (also what keeps the file fast: op-by-op dispatch of
# these functions compiles hundreds of small programs).


def _exceedance_of(
  estimate,
  params,
  target_snr_db,
  *,
  exact=True,
  reference_power=None,
  block_length=None,
  lengths=None,
):
  """`probabilistic.snr_exceedance` of an estimate `[..., time]`, zero beyond `lengths`:
  its energy `S` (or `P_ref · T`, floored at `POWER_FLOOR · T`) and its blocks' counts."""
  if block_length is None:
    params = {name: value[..., None] for name, value in params.items()}
  samples = estimate.shape[-1] if lengths is None else jnp.asarray(lengths, jnp.float32)
  energy = (
    jnp.sum(jnp.square(estimate), axis=-1) if reference_power is None else reference_power * samples
  )
  energy = jnp.maximum(energy, probabilistic.POWER_FLOOR * samples)
  count = probabilistic.valid_block_count(estimate.shape[-1], block_length, lengths)
  return probabilistic.snr_exceedance(energy, params, target_snr_db, count, exact=exact)


def student_probability(estimate, alpha, beta, target_snr_db, exact=True, **kwargs):
  return _exceedance_of(
    estimate, {"alpha": alpha, "beta": beta}, target_snr_db, exact=exact, **kwargs
  )


def gaussian_probability(estimate, variance, target_snr_db, **kwargs):
  return _exceedance_of(estimate, {"variance": variance}, target_snr_db, **kwargs)


student_exceedance = jax.jit(student_probability, static_argnames=("exact", "block_length"))
gaussian_exceedance = jax.jit(gaussian_probability, static_argnames="block_length")
exit_probability = jax.jit(
  probabilistic.exit_probability, static_argnames=("conditions", "config", "exact")
)
variance_parameters = jax.jit(probabilistic.variance_parameters, static_argnames="config")
exit_nll = jax.jit(probabilistic.exit_nll, static_argnames="config")
expected_snr_db = jax.jit(probabilistic.expected_snr_db, static_argnames="config")


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _rng(seed):
  return np.random.default_rng(seed)


def _constant_estimates(energies, time, dtype=np.float32):
  """`[n, time]` estimates with the given energies `‖ŝ‖²`."""
  return jnp.asarray(np.sqrt(np.asarray(energies) / time)[:, None] * np.ones((1, time)), dtype)


def _energy(estimate):
  return np.sum(np.square(np.asarray(estimate, np.float64)), axis=-1)


def _threshold(energy, gamma_db):
  return energy / (10 ** (gamma_db / 10) - 1)


def _blocks(signal, block_length):
  return [signal[..., i : i + block_length] for i in range(0, signal.shape[-1], block_length)]


# ----------------------------------------------------------------------------------
# Likelihoods.

NLL_CASES = [(7, None), (64, None), (250, 100), (300, 300), (300, 64)]


@pytest.mark.parametrize("time,block_length", NLL_CASES)
def test_student_t_nll_matches_scipy_multivariate_t(x64, time, block_length):
  rng = _rng(0)
  target, estimate = rng.standard_normal((2, 2, time))
  estimate = target + 0.3 * estimate
  blocks = len(_blocks(target, block_length or time))
  alpha, beta = rng.uniform(1.2, 8, (2, blocks)), rng.uniform(0.01, 0.5, (2, blocks))
  expected = np.zeros(2)
  for i in range(2):
    for b, (s, s_hat) in enumerate(
      zip(_blocks(target[i], block_length or time), _blocks(estimate[i], block_length or time))
    ):
      expected[i] -= scipy.stats.multivariate_t(
        loc=s_hat, shape=beta[i, b] / alpha[i, b] * np.eye(s.size), df=2 * alpha[i, b]
      ).logpdf(s)
  if block_length is None:
    alpha, beta = alpha[:, 0], beta[:, 0]
  nll = probabilistic.student_t_nll(target, estimate, alpha, beta, block_length=block_length)
  np.testing.assert_allclose(nll, expected / time, rtol=1e-5)


@pytest.mark.parametrize("time,block_length", NLL_CASES)
def test_gaussian_nll_matches_scipy_norm(x64, time, block_length):
  rng = _rng(1)
  target, estimate = rng.standard_normal((2, 2, time))
  blocks = len(_blocks(target, block_length or time))
  variance = rng.uniform(0.1, 3, (2, blocks))
  expected = np.zeros(2)
  for i in range(2):
    for b, (s, s_hat) in enumerate(
      zip(_blocks(target[i], block_length or time), _blocks(estimate[i], block_length or time))
    ):
      expected[i] -= scipy.stats.norm(s_hat, np.sqrt(variance[i, b])).logpdf(s).sum()
  if block_length is None:
    variance = variance[:, 0]
  nll = probabilistic.gaussian_nll(target, estimate, variance, block_length=block_length)
  np.testing.assert_allclose(nll, expected / time, rtol=1e-5)


def test_nlls_are_accurate_in_float32_at_a_million_samples():
  time = 10**6
  rng = _rng(2)
  target = rng.standard_normal((2, time)).astype(np.float32)
  estimate = (target + 0.1 * rng.standard_normal((2, time))).astype(np.float32)
  alpha, beta = np.array([3.0, 50.0]), np.array([0.02, 0.5])
  variance = np.array([0.01, 0.02])
  nll = probabilistic.student_t_nll(
    target, estimate, alpha.astype(np.float32), beta.astype(np.float32)
  )
  gaussian = probabilistic.gaussian_nll(target, estimate, variance.astype(np.float32))
  assert nll.dtype == gaussian.dtype == jnp.float32
  # float64 references: ‖e‖²/(2β) ~ BetaPrime(T/2, α) and e is isotropic, so the
  # density of e is that of ‖e‖² over the area of the sphere through e.
  energy = np.sum(np.square(target.astype(np.float64) - estimate), axis=-1)
  expected = (
    -scipy.stats.betaprime.logpdf(energy, time / 2, alpha, scale=2 * beta)
    + time / 2 * np.log(np.pi)
    + (time / 2 - 1) * np.log(energy)
    - scipy.special.gammaln(time / 2)
  ) / time
  expected_gaussian = (
    -scipy.stats.norm(estimate.astype(np.float64), np.sqrt(variance)[:, None])
    .logpdf(target)
    .sum(-1)
    / time
  )
  np.testing.assert_allclose(nll, expected, rtol=1e-5)
  np.testing.assert_allclose(gaussian, expected_gaussian, rtol=1e-5)


# ----------------------------------------------------------------------------------
# Exceedance probabilities, one variance per utterance.

ALPHAS = np.array([1.01, 3.0, 30.0, 300.0, 3000.0])
LEVELS = np.array([0.01, 0.5, 0.99])
GAMMA = 10.0


def _student_case(time, exact, dtype):
  """Estimates whose exceedance probabilities are near `LEVELS` for every `ALPHAS`."""
  alpha, level = (g.ravel() for g in np.meshgrid(ALPHAS, LEVELS, indexing="ij"))
  beta = np.full_like(alpha, 0.01)
  if exact:
    x = scipy.special.betaincinv(time / 2, alpha, level)
    c = 2 * beta * x / (1 - x)
  else:
    c = beta * time / scipy.special.gammainccinv(alpha, level)
  estimate = _constant_estimates(c * (10 ** (GAMMA / 10) - 1), time, dtype)
  c = _threshold(_energy(estimate), GAMMA)
  if exact:
    expected = scipy.special.betainc(time / 2, alpha, c / (c + 2 * beta))
  else:
    expected = scipy.special.gammaincc(alpha, beta * time / c)
  return estimate, jnp.asarray(alpha, dtype), jnp.asarray(beta, dtype), expected


def _assert_non_positive_targets_are_met(probability_at):
  """`S + ‖e‖² ≥ 10^(γ/10) ‖e‖²` for every error when `γ ≤ 0` (the cross term dropped).

  Below 0 dB the formula's `c` would be negative: the case needs its own branch."""
  for gamma in (0.0, -3.0, -40.0):
    np.testing.assert_array_equal(probability_at(gamma), 1.0)


@pytest.mark.parametrize(
  "time,exact,atol",
  [
    (50, True, 1e-9),
    (150, True, 5e-4),
    (4000, True, 2e-5),
    (10**6, True, 1e-6),
    (10**6, False, 3e-6),
  ],
)
def test_exceedance_matches_scipy_in_float64(x64, time, exact, atol):
  estimate, alpha, beta, expected = _student_case(time, exact, np.float64)
  probability = student_exceedance(estimate, alpha, beta, GAMMA, exact=exact)
  np.testing.assert_allclose(probability, expected, atol=atol)


@pytest.mark.parametrize(
  "time,exact,atol",
  [(150, True, 5e-4), (4000, True, 3e-5), (10**6, True, 3e-5), (4000, False, 2e-5)],
)
def test_exceedance_is_accurate_in_float32(time, exact, atol):
  estimate, alpha, beta, expected = _student_case(time, exact, np.float32)
  probability = student_exceedance(estimate, alpha, beta, GAMMA, exact=exact)
  np.testing.assert_allclose(probability, expected, atol=atol)
  _assert_non_positive_targets_are_met(
    functools.partial(student_exceedance, estimate, alpha, beta, exact=exact)
  )


@pytest.mark.parametrize("time", [2, 9, 50, 99])
def test_short_signals_are_accurate_for_any_alpha(time):
  """T < 100 up to α = 10⁵, where jax.scipy's betainc alone is off by 1e-2."""
  alpha, level = (
    g.ravel()
    for g in np.meshgrid(
      [1.01, 3.0, 30.0, 300.0, 1e3, 1e4, 1e5], [0.01, 0.1, 0.5, 0.9, 0.99], indexing="ij"
    )
  )
  beta = np.full_like(alpha, 0.01)
  x = scipy.special.betaincinv(time / 2, alpha, level)
  estimate = _constant_estimates(2 * beta * x / (1 - x) * (10 ** (GAMMA / 10) - 1), time)
  c = _threshold(_energy(estimate), GAMMA)
  expected = scipy.stats.betaprime.cdf(c / (2 * beta), time / 2, alpha)
  probability = student_exceedance(
    estimate, jnp.asarray(alpha, jnp.float32), jnp.asarray(beta, jnp.float32), GAMMA
  )
  np.testing.assert_allclose(probability, expected, atol=5e-5)


def test_short_signal_alpha_gradient_matches_scipy():
  """Where jax's betainc is used (T < 100, α < 100) its derivative in α is ours."""
  time, beta = 40, 0.01
  alpha = np.array([1.5, 5.0, 20.0, 60.0])
  x = scipy.special.betaincinv(time / 2, alpha, 0.3)
  estimate = _constant_estimates(2 * beta * x / (1 - x) * (10 ** (GAMMA / 10) - 1), time)
  z = _threshold(_energy(estimate), GAMMA) / (2 * beta)
  step = 1e-5 * alpha
  expected = (
    scipy.stats.betaprime.cdf(z, time / 2, alpha + step)
    - scipy.stats.betaprime.cdf(z, time / 2, alpha - step)
  ) / (2 * step)
  gradient = jax.grad(
    lambda a: jnp.sum(student_exceedance(estimate, a, jnp.full(4, beta, jnp.float32), GAMMA))
  )(jnp.asarray(alpha, jnp.float32))
  np.testing.assert_allclose(gradient, expected, rtol=2e-3)


def test_method_note_check_values():
  """docs/method.md §4: T = 4000, α = 3, β = 0.02, γ = 15 dB gives 0.5548 and 0.5547 (with
  `P(ŝ) ≈ 0.2492`, which the note leaves out)."""
  # Shaped as in the float32 test above, which has compiled both forms already.
  estimate = _constant_estimates(np.full(15, 0.249206 * 4000), 4000)
  alpha, beta = jnp.full(15, 3.0, jnp.float32), jnp.full(15, 0.02, jnp.float32)
  exact, asymptotic = (
    student_exceedance(estimate, alpha, beta, 15.0, exact=exact)[0] for exact in (True, False)
  )
  assert (round(float(exact), 4), round(float(asymptotic), 4)) == (0.5548, 0.5547)


@pytest.mark.parametrize("time,exact", [(1000, True), (16000, True), (16000, False)])
def test_exceedance_matches_monte_carlo_of_the_generative_model(time, exact):
  """σ² ~ InvGamma(α, β), e ~ N(0, σ² I), and the true SNR of s = ŝ + e, cross term
  included; the error along ŝ is drawn apart from the rest, so no T-long vectors."""
  rng = _rng(3)
  alpha, gamma, offset = (
    g.ravel() for g in np.meshgrid([2.0, 5.0, 20.0], [5.0, 15.0], [-2.0, 2.0], indexing="ij")
  )
  beta = (alpha - 1) * 10 ** (-(gamma + offset) / 10)  # Mean SNR γ ± 2 dB at ‖ŝ‖² = T.
  estimate = _constant_estimates(np.full(alpha.shape, float(time)), time)
  samples = 40000
  variance = beta[:, None] / rng.gamma(alpha[:, None], size=(alpha.size, samples))
  along = np.sqrt(variance) * rng.standard_normal(variance.shape)
  error = np.square(along) + variance * rng.chisquare(time - 1, variance.shape)
  signal = time + 2 * np.sqrt(time) * along + error
  simulated = np.mean(signal >= 10 ** (gamma[:, None] / 10) * error, axis=1)
  probability = student_exceedance(
    estimate,
    jnp.asarray(alpha, jnp.float32),
    jnp.asarray(beta, jnp.float32),
    jnp.asarray(gamma, jnp.float32),
    exact,
  )
  np.testing.assert_allclose(probability, simulated, atol=0.02)
  assert np.ptp(simulated) > 0.5  # The grid spans the range that matters.


@pytest.mark.parametrize(
  "time,dtype,atol",
  [
    (50, np.float64, 1e-9),
    (4000, np.float64, 1e-6),
    (10**6, np.float64, 1e-6),
    (50, np.float32, 1e-5),
    (4000, np.float32, 2e-5),
    (10**6, np.float32, 2e-5),
  ],
)
def test_gaussian_exceedance_matches_chi2(time, dtype, atol):
  with jax.enable_x64(dtype == np.float64):
    variance = np.array([0.01, 0.3, 2.0])
    level, variance = (g.ravel() for g in np.meshgrid(LEVELS, variance, indexing="ij"))
    c = scipy.stats.chi2.ppf(level, time) * variance
    estimate = _constant_estimates(c * (10 ** (GAMMA / 10) - 1), time, dtype)
    expected = scipy.stats.chi2.cdf(_threshold(_energy(estimate), GAMMA) / variance, time)
    probability = gaussian_exceedance(estimate, jnp.asarray(variance, dtype), GAMMA)
    np.testing.assert_allclose(probability, expected, atol=atol)
    _assert_non_positive_targets_are_met(
      functools.partial(gaussian_exceedance, estimate, jnp.asarray(variance, dtype))
    )


# ----------------------------------------------------------------------------------
# Exceedance with variance blocks: P(Σ_b E_b ≤ c) in the tail, against Monte Carlo.

BLOCK_LENGTH, BLOCK_TIME = 1000, 3500  # Blocks of 1000, 1000, 1000 and 500 samples.
# The exit decision is made in the upper tail; the body is checked too.
BLOCK_LEVELS = (0.05, 0.5, 0.9, 0.95, 0.99)
BLOCK_DRAWS = 200_000


def _block_error_energy(rng, count, alpha, scale, exact=True):
  """`[draws]` draws of the blocks' total error energy under the generative model (the
  cross term dropped, as the exit condition does): `σ_b² ~ InvGamma(α_b, β_b)` (or
  `σ_b² = scale` with `alpha` None), then `E_b = σ_b² χ²_{T_b}` (or `T_b σ_b²`, the
  large-`T` form, when not `exact`)."""
  if alpha is None:
    variance = np.broadcast_to(scale, (BLOCK_DRAWS, count.size))
  else:
    variance = scale / rng.gamma(alpha, size=(BLOCK_DRAWS, count.size))
  chi_square = rng.chisquare(count, variance.shape) if exact else count
  return np.sum(variance * chi_square, axis=1)


def _check_block_tail(probability_at, error, time):
  """`c` at the Monte Carlo quantiles `BLOCK_LEVELS`: `probability_at(estimate, γ)` must
  be the share of draws at or below `c` to within 0.01."""
  c = np.quantile(error, BLOCK_LEVELS)
  estimate = _constant_estimates(c * (10 ** (GAMMA / 10) - 1), time)
  simulated = np.mean(error <= _threshold(_energy(estimate), GAMMA)[:, None], axis=1)
  probability = probability_at(estimate, GAMMA)
  assert np.all(np.isfinite(probability))
  np.testing.assert_allclose(probability, simulated, atol=0.01)
  _assert_non_positive_targets_are_met(functools.partial(probability_at, estimate))


BLOCK_CASES = {  # name: (blocks, samples per block, α, β)
  "8x4000 alpha=3": (8, 4000, 3.0, 0.02),
  "10x400 alpha=200": (10, 400, 200.0, 0.5),
  "2x16000 alpha=1.01": (2, 16000, 1.01, 0.003),
  "40x400 alpha=1e3": (40, 400, 1e3, 10.0),
  "40x400 alpha 1.01..1e3, beta 1e-3..1": (
    40,
    400,
    np.geomspace(1.01, 1e3, 40),
    np.geomspace(1e-3, 1.0, 40),
  ),
}


@pytest.mark.parametrize("name", BLOCK_CASES)
def test_block_exceedance_matches_monte_carlo_in_the_tail(name):
  blocks, length, alpha, beta = BLOCK_CASES[name]
  count = np.full(blocks, length)
  alpha, beta = np.broadcast_to(alpha, (blocks,)), np.broadcast_to(beta, (blocks,))
  error = _block_error_energy(_rng(5), count, alpha, beta)
  _check_block_tail(
    lambda estimate, gamma: student_exceedance(
      estimate,
      jnp.asarray(np.broadcast_to(alpha, (5, blocks)), jnp.float32),
      jnp.asarray(np.broadcast_to(beta, (5, blocks)), jnp.float32),
      gamma,
      block_length=length,
    ),
    error,
    blocks * length,
  )


@pytest.mark.parametrize(
  "alpha,beta,exact",
  [
    ([3.0, 4.0, 5.0, 6.0], [0.02, 0.03, 0.04, 0.05], True),  # similar blocks
    ([1.3, 8.0, 30.0, 3.0], [0.003, 0.2, 0.5, 0.02], True),  # one with infinite variance
    ([1e3, 1e3, 1e3, 3.0], [1.0, 1.1, 0.9, 3e-3], True),  # three narrow and loud
    ([3.0, 3.0, 3.0, 3.0], [0.001, 0.01, 0.1, 0.01], False),  # loudness varies 100-fold
  ],
)
def test_uneven_blocks_match_monte_carlo_in_the_tail(alpha, beta, exact):
  """A shorter last block, blocks unlike each other, and the large-`T` form."""
  alpha, beta = np.array(alpha), np.array(beta)
  count = probabilistic.block_count(BLOCK_TIME, BLOCK_LENGTH)
  error = _block_error_energy(_rng(6), count, alpha, beta, exact)
  _check_block_tail(
    lambda estimate, gamma: student_exceedance(
      estimate,
      jnp.asarray(alpha, jnp.float32),
      jnp.asarray(beta, jnp.float32),
      gamma,
      exact,
      block_length=BLOCK_LENGTH,
    ),
    error,
    BLOCK_TIME,
  )


@pytest.mark.parametrize(
  "blocks,length,variance",
  [
    (4, None, [0.01, 0.002, 0.05, 0.02]),  # BLOCK_TIME in blocks of BLOCK_LENGTH
    (8, 4000, np.geomspace(1e-3, 0.05, 8)),
    (40, 400, np.geomspace(1e-3, 1.0, 40)),
  ],
)
def test_gaussian_block_exceedance_matches_monte_carlo_in_the_tail(blocks, length, variance):
  variance = np.asarray(variance)
  if length is None:
    time, length = BLOCK_TIME, BLOCK_LENGTH
  else:
    time = blocks * length
  count = probabilistic.block_count(time, length)
  error = _block_error_energy(_rng(7), count, None, variance)
  _check_block_tail(
    lambda estimate, gamma: gaussian_exceedance(
      estimate,
      jnp.asarray(np.broadcast_to(variance, (5, blocks)), jnp.float32),
      gamma,
      block_length=length,
    ),
    error,
    time,
  )


def test_block_exceedance_gradients_are_finite():
  """Nothing trains through the exit probability today, but a gradient must not be
  NaN: the block forms differentiate through the grids and the FFTs."""
  # Equal blocks: one block CDF to compile (the gradients' programs are large).
  estimate = jnp.asarray(_rng(8).standard_normal(4 * BLOCK_LENGTH), jnp.float32) * 0.3

  def probabilities(alpha, beta, variance, gamma):
    return student_probability(
      estimate, alpha, beta, gamma, block_length=BLOCK_LENGTH
    ) + gaussian_probability(estimate, variance, gamma, block_length=BLOCK_LENGTH)

  grad = jax.jit(jax.grad(probabilities, argnums=(0, 1, 2)))
  for gamma in (0.0, 10.0, 40.0):
    for alpha in (1.01, 30.0, 1e3):
      for beta in (1e-6, 0.02, 1e3):
        alphas = jnp.array([alpha, 3.0, alpha, 1e3], jnp.float32)
        betas = jnp.array([beta, 0.02, beta, 0.02], jnp.float32)
        gradients = grad(alphas, betas, betas / alphas, gamma)
        assert all(np.all(np.isfinite(g)) for g in gradients), (gamma, alpha, beta)


# ----------------------------------------------------------------------------------
# Exit conditions and their combination.


def _exit_setup(likelihood, seed=7):
  rng = _rng(seed)
  batch, sources, time = 3, 2, 2000
  estimate = rng.standard_normal((batch, sources, time))
  estimate *= rng.uniform(0.1, 1, (batch, sources, 1))
  mixture = estimate.sum(1) + 0.3 * rng.standard_normal((batch, time))
  if likelihood == "student":
    params = {
      "alpha": rng.uniform(1.5, 20, (batch, sources, 1)),
      "beta": rng.uniform(0.001, 0.05, (batch, sources, 1)),
    }
  else:  # The chi-square CDF is nearly a step: put the SNR condition on its slope.
    c = _threshold(_energy(estimate.astype(np.float32)), 8.0)
    z = rng.uniform(-1.5, 1.5, (batch, sources))
    params = {"variance": (c / (time + z * np.sqrt(2 * time)))[..., None]}
  return estimate.astype(np.float32), mixture.astype(np.float32), params


def _scipy_probability(likelihood, params, energy, gamma_db):
  """Per-source reference: 1 for γ ≤ 0, else the incomplete beta / chi-square CDF."""
  time = 2000
  gamma_db = np.broadcast_to(gamma_db, energy.shape)
  c = energy / np.where(gamma_db > 0, 10 ** (gamma_db / 10) - 1, 1.0)
  if likelihood == "student":
    alpha, beta = params["alpha"][..., 0], params["beta"][..., 0]
    p = scipy.special.betainc(time / 2, alpha, c / (c + 2 * beta))
  else:
    p = scipy.stats.chi2.cdf(c / params["variance"][..., 0], time)
  return np.where(gamma_db > 0, p, 1.0)


@pytest.mark.parametrize(
  "likelihood,conditions",
  [
    # Wiring is shared: one each.
    ("student", ("snri",)),
    ("gaussian", ("snr_ref",)),
    ("student", ("snr", "snri", "snr_ref")),
    ("gaussian", ("snr", "snri", "snr_ref")),
  ],
)
def test_exit_probability_combines_conditions(likelihood, conditions):
  estimate, mixture, params = _exit_setup(likelihood)
  gamma, reference_power = 8.0, np.array([0.05, 0.5, 2.0])
  energy = _energy(estimate)
  input_snr = 10 * np.log10(energy / _energy(mixture[:, None].astype(np.float64) - estimate))
  per_condition = {
    "snr": _scipy_probability(likelihood, params, energy, gamma),
    "snri": _scipy_probability(likelihood, params, energy, gamma + input_snr),
    "snr_ref": _scipy_probability(
      likelihood, params, np.broadcast_to(reference_power[:, None] * 2000, energy.shape), gamma
    ),
  }
  expected = np.max([per_condition[name] for name in conditions], axis=0).min(axis=-1)
  config = probabilistic.VarianceConfig(
    parameterisation="student-logvar" if likelihood == "student" else "gaussian-logvar"
  )
  probability = exit_probability(
    estimate,
    jax.tree.map(jnp.float32, params),
    gamma,
    conditions=conditions,
    mixture=mixture,
    reference_power=reference_power,
    config=config,
  )
  assert probability.shape == (3,)
  np.testing.assert_allclose(probability, expected, atol=3e-5)
  spread = np.ptp(np.stack([per_condition[name] for name in per_condition]), axis=0)
  assert spread.max() > 0.1  # The conditions disagree, so the combination is tested.


def test_input_snr_matches_a_direct_computation():
  estimate, mixture, _ = _exit_setup("student")
  est64, mix64 = estimate.astype(np.float64), mixture.astype(np.float64)
  expected = 10 * np.log10(np.sum(est64**2, -1) / np.sum((mix64[:, None] - est64) ** 2, -1))
  np.testing.assert_allclose(probabilistic.input_snr_db(mixture, estimate), expected, atol=1e-4)


def test_exit_probability_rejects_missing_inputs_and_unknown_conditions():
  estimate, _, params = _exit_setup("student")
  config = probabilistic.VarianceConfig(parameterisation="student-logvar")
  with pytest.raises(ValueError, match="mixture"):
    exit_probability(estimate, params, 5.0, conditions=("snri",), config=config)
  with pytest.raises(ValueError, match="reference_power"):
    exit_probability(estimate, params, 5.0, conditions=("snr_ref",), config=config)
  with pytest.raises(ValueError, match="snr_ref"):
    exit_probability(estimate, params, 5.0, conditions=("sdr",), config=config)


@pytest.mark.parametrize("block_length", [None, 700])
def test_expected_snr_matches_invgamma_mean(block_length):
  rng = _rng(8)
  estimate = rng.standard_normal((2, 2000)).astype(np.float32)
  count = probabilistic.block_count(2000, block_length)
  alpha, beta = rng.uniform(1.5, 9, (2, count.size)), rng.uniform(0.01, 1, (2, count.size))
  mean = scipy.stats.invgamma(alpha, scale=beta).mean()
  signal = _energy(estimate)
  config = probabilistic.VarianceConfig(
    parameterisation="student-logvar", block_length=block_length
  )
  params = jax.tree.map(jnp.float32, {"alpha": alpha, "beta": beta})
  np.testing.assert_allclose(
    expected_snr_db(estimate, params, config),
    10 * np.log10(signal / np.sum(count * mean, -1)),
    atol=1e-4,
  )
  np.testing.assert_allclose(
    expected_snr_db(estimate, {"variance": jnp.float32(mean)}, config),
    10 * np.log10(signal / np.sum(count * mean, -1)),
    atol=1e-4,
  )


@pytest.mark.parametrize("name", ["student-snr", "gaussian-snr"])
def test_snr_forms_put_the_expected_snr_at_the_predicted_snr(name):
  rng = _rng(9)
  config = probabilistic.VarianceConfig(parameterisation=name)
  estimate = rng.standard_normal((4, 2, 500)).astype(np.float32) * 0.2
  raw = rng.normal(0, 5, (4, 2, 1, probabilistic.num_raw_outputs(config)))
  raw[..., 0] = rng.uniform(-10, 40, (4, 2, 1))
  state = probabilistic.init_variance_state((4, 2), 1, config)
  params, _ = variance_parameters(raw, estimate, state, config)
  np.testing.assert_allclose(expected_snr_db(estimate, params, config), raw[..., 0, 0], atol=1e-3)


# ----------------------------------------------------------------------------------
# Parameterisations.


def _head_outputs(config, seed, exits, scale=3.0, batch=(2, 3), time=250):
  """Random raw outputs and estimates (one source silent) for a sequence of exits."""
  rng = _rng(seed)
  blocks = probabilistic.num_variance_blocks(time, config)
  raw = rng.normal(0, scale, (exits, *batch, blocks, probabilistic.num_raw_outputs(config)))
  estimates = rng.standard_normal((exits, *batch, time))
  estimates *= rng.uniform(0.01, 3, (exits, *batch, 1))
  estimates[:, 0, 0] = 0.0
  return jnp.asarray(raw, jnp.float32), jnp.asarray(estimates, jnp.float32)


def _run_exits(config, raw, estimates):
  state = probabilistic.init_variance_state(estimates.shape[1:-1], raw.shape[-2], config)
  outputs = []
  for k in range(raw.shape[0]):
    params, state = variance_parameters(raw[k], estimates[k], state, config)
    outputs.append(params)
  return jax.tree.map(lambda *p: np.stack(p), *outputs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("monotone,block_length", [(False, None), (True, 100)])
def test_every_parameterisation_gives_floored_finite_parameters(name, monotone, block_length):
  config = probabilistic.VarianceConfig(
    parameterisation=name, monotone=monotone, block_length=block_length
  )
  raw, estimates = _head_outputs(config, seed=10, exits=3)
  raw = raw.at[1].set(1e4).at[2].set(-1e4)
  params = _run_exits(config, raw, estimates)
  form = probabilistic.PARAMETERISATIONS[name]
  expected_keys = {"variance"} if form.likelihood == "gaussian" else {"alpha", "beta"}
  assert set(params) == expected_keys
  for value in params.values():
    assert value.shape == raw.shape[:-1] and value.dtype == np.float32
    assert np.all(np.isfinite(value)) and np.all(value > 0)
  if "alpha" in params:
    assert np.all(params["alpha"] >= config.alpha_min)
  # The NLL and exit probability are finite on these parameters (they only depend on
  # the likelihood and the blocks: one config per pair keeps the compilations few).
  likelihood_config = probabilistic.VarianceConfig(
    parameterisation=f"{form.likelihood}-logvar", block_length=block_length
  )
  for k in range(3):
    exit_params = jax.tree.map(lambda p: p[k], params)
    nll = exit_nll(estimates[k] + 0.1, estimates[k], exit_params, likelihood_config)
    probability = exit_probability(estimates[k], exit_params, 10.0, config=likelihood_config)
    assert np.all(np.isfinite(nll))
    assert probability.shape == (2,) and np.all((probability >= 0) & (probability <= 1))


@pytest.mark.parametrize("name", ["student-snr", "gaussian-snr"])
@pytest.mark.parametrize("monotone", [False, True])
def test_snr_forms_are_scale_equivariant(name, monotone):
  config = probabilistic.VarianceConfig(parameterisation=name, monotone=monotone, block_length=100)
  raw, estimates = _head_outputs(config, seed=11, exits=4, scale=1.0)
  estimates = estimates.at[:, 0, 0].add(0.1)  # No silent source: above the power floor.
  scale = 7.0
  params = _run_exits(config, raw, estimates)
  scaled = _run_exits(config, raw, scale * estimates)
  key = "variance" if name.startswith("gaussian") else "beta"
  np.testing.assert_allclose(scaled[key], scale**2 * params[key], rtol=1e-5)
  if "alpha" in params:
    np.testing.assert_allclose(scaled["alpha"], params["alpha"], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_monotone_exits_never_predict_a_worse_variance(name):
  config = probabilistic.VarianceConfig(parameterisation=name, monotone=True, block_length=100)
  raw, estimates = _head_outputs(config, seed=12, exits=6)
  params = _run_exits(config, raw, estimates)
  scale = params["variance"] if "variance" in params else params["beta"]
  assert np.all(np.diff(scale, axis=0) <= 0)
  if "alpha" in params:
    assert np.all(np.diff(params["alpha"], axis=0) >= 0)
  # The plain form is not monotone on the same outputs, so the test can fail.
  plain = _run_exits(dataclasses.replace(config, monotone=False), raw, estimates)
  plain_scale = plain["variance"] if "variance" in plain else plain["beta"]
  assert np.any(np.diff(plain_scale, axis=0) > 0)
  # And its first exit is the plain form's.
  np.testing.assert_allclose(scale[0], plain_scale[0], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_state_passes_through_unless_monotone(name):
  config = probabilistic.VarianceConfig(parameterisation=name)
  raw, estimates = _head_outputs(config, seed=13, exits=1)
  state = probabilistic.init_variance_state((2, 3), raw.shape[-2], config)
  _, new_state = variance_parameters(raw[0], estimates[0], state, config)
  jax.tree.map(np.testing.assert_array_equal, new_state, state)
  _, new_state = variance_parameters(
    raw[0], estimates[0], state, dataclasses.replace(config, monotone=True)
  )
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert all(np.all(np.asarray(leaf) > 0) for leaf in jax.tree.leaves(new_state))


def test_config_validation_lists_the_valid_names():
  with pytest.raises(ValueError, match="student-fixed-dof") as error:
    probabilistic.VarianceConfig(parameterisation="student")
  assert all(name in str(error.value) for name in NAMES)
  with pytest.raises(ValueError, match="alpha_min"):
    probabilistic.VarianceConfig(alpha_min=1.0)


def test_raw_output_counts_blocks_and_block_energy():
  assert [
    probabilistic.num_raw_outputs(probabilistic.VarianceConfig(parameterisation=name))
    for name in NAMES
  ] == [1, 1, 1, 2, 2]  # sorted: gaussian-*, student-fixed-dof, ...
  config = probabilistic.VarianceConfig(block_length=100)
  assert probabilistic.num_variance_blocks(250, config) == 3
  assert probabilistic.num_variance_blocks(250, probabilistic.VarianceConfig()) == 1
  signal = _rng(14).standard_normal((2, 250)).astype(np.float32)
  energy, count = probabilistic.block_energy(signal, 100)
  np.testing.assert_array_equal(count, [100, 100, 50])
  expected = [np.sum(b.astype(np.float64) ** 2, -1) for b in _blocks(signal, 100)]
  np.testing.assert_allclose(energy, np.stack(expected, -1), rtol=1e-6)


# ----------------------------------------------------------------------------------
# Valid lengths: a zero-padded example gives what the example gives on its own.

PAD_TIME = 1000
PAD_LENGTHS = np.array([1000, 700, 350, 1])  # The last one's later blocks are all padding.


def _padded_batch(seed, block_length, likelihood="student"):
  """`(target, estimate, params)` of `PAD_LENGTHS` examples zero-padded to `PAD_TIME`:
  `[4, time]` signals and `[4, blocks]` parameters."""
  rng = _rng(seed)
  valid = np.arange(PAD_TIME) < PAD_LENGTHS[:, None]
  target = rng.standard_normal((4, PAD_TIME)) * valid
  estimate = (target + 0.3 * rng.standard_normal((4, PAD_TIME))) * valid
  blocks = probabilistic.block_count(PAD_TIME, block_length).size
  if likelihood == "student":
    params = {
      "alpha": rng.uniform(1.2, 8, (4, blocks)),
      "beta": rng.uniform(0.01, 0.5, (4, blocks)),
    }
  else:
    params = {"variance": rng.uniform(0.01, 0.5, (4, blocks))}
  return (
    jnp.asarray(target, jnp.float32),
    jnp.asarray(estimate, jnp.float32),
    jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params),
  )


def _unpadded(i, block_length, signals, params):
  """Example `i` on its own: its valid samples and its blocks' parameters."""
  length = PAD_LENGTHS[i]
  blocks = probabilistic.block_count(length, block_length).size
  return (
    [x[i : i + 1, :length] for x in signals],
    {name: p[i : i + 1, :blocks] for name, p in params.items()},
  )


def _one_by_one(function, block_length, signals, params):
  """`function(signals, params)` on every example alone, `[4, ...]`."""
  return np.concatenate(
    [function(*_unpadded(i, block_length, signals, params)) for i in range(PAD_LENGTHS.size)]
  )


@pytest.mark.parametrize("likelihood", ["student", "gaussian"])
@pytest.mark.parametrize("block_length", [None, 300])
def test_nll_of_a_padded_example_is_its_own(likelihood, block_length):
  target, estimate, params = _padded_batch(20, block_length, likelihood)
  config = probabilistic.VarianceConfig(
    parameterisation=f"{likelihood}-logvar", block_length=block_length
  )
  blocked = params if block_length else jax.tree.map(lambda p: p[..., :1], params)

  def nll(signals, params, lengths=None):
    return exit_nll(*signals, params, config, lengths=lengths)

  padded = nll((target, estimate), blocked, jnp.asarray(PAD_LENGTHS))
  expected = _one_by_one(nll, block_length, (target, estimate), blocked)
  np.testing.assert_allclose(padded, expected, rtol=1e-5)
  # Padding counted as error-free samples would divide by `time` instead.
  assert not np.allclose(nll((target, estimate), blocked), expected, rtol=1e-2)

  # Blocks with no valid sample add exactly nothing, and no gradient, NaN or other.
  gradients = jax.grad(lambda p: jnp.sum(nll((target, estimate), p, PAD_LENGTHS)))(blocked)
  count = probabilistic.valid_block_count(PAD_TIME, block_length, PAD_LENGTHS)
  for gradient in gradients.values():
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(np.asarray(gradient)[np.asarray(count) == 0], 0.0)


def test_nll_optimal_scale_is_not_shrunk_by_padding():
  """The Student-t NLL in β is minimised at `β* = α E/T` (Gaussian: `σ² = E/T`), `T`
  the valid samples: a 2 s utterance padded to 4 s keeps its `β*`."""
  target, estimate, _ = _padded_batch(21, None)
  energy = _energy(np.asarray(target) - np.asarray(estimate))
  alpha = jnp.full(4, 3.0, jnp.float32)
  optimum = 3.0 * energy / PAD_LENGTHS
  slope = jax.grad(
    lambda beta: jnp.sum(
      probabilistic.student_t_nll(target, estimate, alpha, beta, lengths=PAD_LENGTHS)
    )
  )(jnp.asarray(optimum, jnp.float32))
  gaussian_slope = jax.grad(
    lambda variance: jnp.sum(
      probabilistic.gaussian_nll(target, estimate, variance, lengths=PAD_LENGTHS)
    )
  )(jnp.asarray(energy / PAD_LENGTHS, jnp.float32))
  # Relative to the curvature's scale T/β²·β = T/β: a zero slope at the optimum.
  np.testing.assert_allclose(slope * optimum, 0.0, atol=1e-4)
  np.testing.assert_allclose(gaussian_slope * energy / PAD_LENGTHS, 0.0, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("block_length", [None, 300])
def test_variance_parameters_of_a_padded_example_are_its_own(name, block_length):
  """`P(ŝ)` is each block's power over its valid samples (floored where it has none)."""
  config = probabilistic.VarianceConfig(parameterisation=name, block_length=block_length)
  _, estimate, _ = _padded_batch(22, block_length)
  blocks = probabilistic.num_variance_blocks(PAD_TIME, config)
  raw = jnp.asarray(
    _rng(23).normal(0, 2, (4, blocks, probabilistic.num_raw_outputs(config))), jnp.float32
  )
  state = probabilistic.init_variance_state((4,), blocks, config)
  padded = variance_parameters(raw, estimate, state, config, lengths=PAD_LENGTHS)[0]
  for i, length in enumerate(PAD_LENGTHS):
    own_blocks = probabilistic.num_variance_blocks(length, config)
    own, _ = variance_parameters(
      raw[i : i + 1, :own_blocks],
      estimate[i : i + 1, :length],
      jax.tree.map(lambda x: x[:1, :own_blocks], state),
      config,
    )
    for key in own:
      np.testing.assert_allclose(padded[key][i, :own_blocks], own[key][0], rtol=1e-5)
  for value in padded.values():
    assert np.all(np.isfinite(value)) and np.all(value > 0)


@pytest.mark.parametrize("likelihood", ["student", "gaussian"])
@pytest.mark.parametrize("block_length", [None, 300])
def test_exit_probability_of_a_padded_example_is_its_own(likelihood, block_length):
  """Every condition, and the expected SNR, from the valid samples only."""
  _, estimate, params = _padded_batch(24, block_length, likelihood)
  sources = jnp.stack([estimate, 0.5 * estimate], axis=1)  # [batch, sources, time]
  params = jax.tree.map(lambda p: jnp.stack([p, 2 * p], axis=1), params)
  if block_length is None:
    params = jax.tree.map(lambda p: p[..., :1], params)
  mixture = jnp.sum(sources, axis=1) + 0.1 * estimate
  config = probabilistic.VarianceConfig(
    parameterisation=f"{likelihood}-logvar", block_length=block_length
  )
  reference_power = jnp.full(4, 0.2, jnp.float32)

  def evaluate(sources, mixture, params, reference_power, lengths=None):
    return np.stack(
      [
        exit_probability(
          sources,
          params,
          gamma,
          conditions=probabilistic.CONDITIONS,
          mixture=mixture,
          reference_power=reference_power,
          config=config,
          lengths=lengths,
        )
        for gamma in (-1.0, 3.0, 8.0)
      ]
      + [
        expected_snr_db(
          sources,
          params,
          config,
          # Its `[...]` is [batch, sources].
          lengths=None if lengths is None else lengths[:, None],
        ).min(-1)
      ],
      axis=-1,
    )

  padded = evaluate(sources, mixture, params, reference_power, PAD_LENGTHS)
  for i, length in enumerate(PAD_LENGTHS):
    blocks = probabilistic.block_count(length, block_length).size
    own = evaluate(
      sources[i : i + 1, :, :length],
      mixture[i : i + 1, :length],
      {k: p[i : i + 1, :, :blocks] for k, p in params.items()},
      reference_power[i : i + 1],
    )
    np.testing.assert_allclose(padded[i], own[0], rtol=1e-4, atol=1e-5)
  assert np.all(np.isfinite(padded))


# ----------------------------------------------------------------------------------
# Dispatch, jit and gradients.


@pytest.mark.parametrize("name", ["student-logvar", "gaussian-logvar"])
@pytest.mark.parametrize("block_length", [None, 100])
def test_exit_nll_dispatches_to_the_likelihood(name, block_length):
  config = probabilistic.VarianceConfig(parameterisation=name, block_length=block_length)
  raw, estimates = _head_outputs(config, seed=15, exits=1)
  state = probabilistic.init_variance_state((2, 3), raw.shape[-2], config)
  params, _ = variance_parameters(raw[0], estimates[0], state, config)
  target = estimates[0] + 0.2
  squeeze = (lambda p: p[..., 0]) if block_length is None else (lambda p: p)
  if name.startswith("gaussian"):
    expected = probabilistic.gaussian_nll(
      target, estimates[0], squeeze(params["variance"]), block_length=block_length
    )
  else:
    expected = probabilistic.student_t_nll(
      target,
      estimates[0],
      squeeze(params["alpha"]),
      squeeze(params["beta"]),
      block_length=block_length,
    )
  np.testing.assert_allclose(exit_nll(target, estimates[0], params, config), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["student-snr", "gaussian-snr"])
def test_one_exit_runs_under_a_single_jit(name):
  """What a model's exit does in one jitted step (the parts are checked one by one,
  also jitted, above)."""
  config = probabilistic.VarianceConfig(parameterisation=name, monotone=True)
  raw, estimates = _head_outputs(config, seed=16, exits=2)
  mixture = jnp.sum(estimates[0], axis=1)
  state = probabilistic.init_variance_state((2, 3), raw.shape[-2], config)

  @jax.jit
  def one_exit(raw, estimate, state):
    params, state = probabilistic.variance_parameters(raw, estimate, state, config)
    return (
      params,
      state,
      (
        probabilistic.exit_nll(estimate + 0.1, estimate, params, config),
        probabilistic.exit_probability(
          estimate,
          params,
          5.0,
          conditions=probabilistic.CONDITIONS,
          mixture=mixture,
          reference_power=0.5,
          config=config,
        ),
        probabilistic.expected_snr_db(estimate, params, config),
      ),
    )

  first, state, results = one_exit(raw[0], estimates[0], state)
  second, _, _ = one_exit(raw[1], estimates[1], state)
  assert [r.shape for r in results] == [(2, 3), (2,), (2, 3)]
  assert all(np.all(np.isfinite(r)) for r in results)
  key = "beta" if "beta" in first else "variance"
  assert np.all(second[key] <= first[key])


def test_exceedance_gradients_are_finite_across_branches():
  """Each regime switch (γ ≤ 0, jax.scipy / Temme, BGRAT / Paulson) computes both
  sides; the unused side's NaNs must not reach the gradient."""
  for time in (50, 4000):  # jax.scipy's betainc and the mirrored BGRAT below T = 100.
    estimate = jnp.asarray(_rng(17).standard_normal(time), jnp.float32) * 0.5

    def probabilities(scale, alpha, beta, variance, gamma, estimate=estimate):
      signal = scale * estimate
      return (
        student_probability(signal, alpha, beta, gamma, True)
        + student_probability(signal, alpha, beta, gamma, False)
        + gaussian_probability(signal, variance, gamma)
      )

    grad = jax.jit(jax.grad(probabilities, argnums=(0, 1, 2, 3)))
    for gamma in (-3.0, 0.0, 10.0, 60.0):
      for alpha in (1.5, 100.0, 1e4):
        for beta in (1e-30, 1e-6, 0.02, 1e3, 1e30):  # 10^±30: the clamps' edges.
          gradients = grad(1.0, alpha, beta, beta / alpha, gamma)
          assert all(np.isfinite(g) for g in gradients), (time, gamma, alpha, beta, gradients)
