"""Special functions that stay accurate in float32: the regularised incomplete gamma
and beta functions for shapes up to ~10^6, and Wilson–Hilferty's gamma quantiles.

jax.scipy's gammainc/betainc lose ~1e-3 at shape 10^4 and ~0.1 at 5·10^5: they subtract
log Γ of the shapes, whose rounding errors then get exponentiated (and betainc's
x = c/(c + 2β) rounds to 1 in float32 for large T). The energy law
(`core/energy_law.py`) is built on these.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy import special

# Shapes from which `gammaincc` uses Temme's expansion; below, jax.scipy's.
_TEMME_MIN_SHAPE = 50.0
# Coefficients of the Taylor series of Temme's c_0(η) = 1/μ − 1/η at η = 0.
_TEMME_C0 = (-1 / 3, 1 / 12, -2 / 135, 1 / 864, 1 / 2835, -139 / 777600, 1 / 25515)
# Beta shapes from which `beta_prime_cdf` uses Paulson's form where BGRAT does not
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
ARG_MIN, ARG_MAX = 1e-30, 1e30
_LOG_ARG_MIN, _LOG_ARG_MAX = math.log(ARG_MIN), math.log(ARG_MAX)
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
  series = sum(c * eta_small**k for k, c in enumerate(_TEMME_C0))
  mu_big, eta_big = jnp.where(small, 1.0, mu), jnp.where(small, 1.0, eta)
  c0 = jnp.where(small, series, 1 / mu_big - 1 / eta_big)
  remainder = jnp.exp(-0.5 * a * jnp.square(eta)) / jnp.sqrt(2 * math.pi * a) * c0
  return 0.5 * special.erfc(eta * jnp.sqrt(a / 2)) + remainder


def gammaincc(a, x):
  """Upper regularised incomplete gamma `Q(a, x)` for any shape `a > 0`, `x ≥ 0`."""
  x = jnp.clip(x, 0.0, ARG_MAX)
  if isinstance(a, (int, float)):  # A static shape picks its branch when tracing.
    return _gammaincc_temme(a, x) if a >= _TEMME_MIN_SHAPE else special.gammaincc(a, x)
  large = a >= _TEMME_MIN_SHAPE
  # Each branch gets inputs valid for it, so the other's NaNs reach no gradient.
  small_value = special.gammaincc(jnp.where(large, 1.0, a), x)
  large_value = _gammaincc_temme(jnp.where(large, a, _TEMME_MIN_SHAPE), x)
  return jnp.where(large, large_value, small_value)


def _stirling_remainder(z):
  """`log Γ(z) − [(z − ½) log z − z + ½ log 2π]` for `z ≥ 10` (error < 1e-10)."""
  return 1 / (12 * z) - 1 / (360 * z**3) + 1 / (1260 * z**5)


def _log_gamma_kernel(shape, x):
  """`log(x^shape e^(−x) / Γ(shape))`; from Stirling for `shape ≥ 10`, as
  `−shape (μ − log(1 + μ)) + ½ log(shape/2π) − remainder`, `μ = x/shape − 1`, whose
  terms do not cancel the way `shape log x − x − log Γ(shape)` does."""
  large = shape >= 10
  shape_large = jnp.where(large, shape, 10.0)
  x = jnp.maximum(x, ARG_MIN)
  mu = jnp.clip(x / shape_large - 1, _MU_MIN, _MU_MAX)
  stirling = (
    -shape_large * mu * (mu * _log1pmx_over_square(mu))
    + 0.5 * jnp.log(shape_large / (2 * math.pi))
    - _stirling_remainder(shape_large)
  )
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
  ratio = jnp.exp(
    -b * r * _log1pmx_over_square(r)
    - 0.5 * jnp.log1p(r)
    + b * jnp.log1p((b + 1) / (2 * t))
    + _stirling_remainder(a + b)
    - _stirling_remainder(a)
  )
  prefix = ratio * jnp.exp(_log_gamma_kernel(b, u))
  term = ratio * gammaincc(b, u)
  total = term
  p = [1.0]
  half_log_x_squared = jnp.square(log_x / 2)
  power = 1.0
  for n in range(1, _BGRAT_TERMS + 1):
    # Python ints this large would overflow int32 once inside jax: divide by floats.
    p.append(
      sum((m * b - n) * p[n - m] / float(math.factorial(2 * m + 1)) for m in range(1, n)) / n
      + (b - 1) / float(math.factorial(2 * n + 1))
    )
    b2n = b + 2 * (n - 1)
    term = (b2n * (b2n + 1) * term + (u + b2n + 1) * power * prefix) / (4 * t * t)
    power = power * half_log_x_squared
    total = total + p[n] * term
  return total


def _beta_prime_cdf_paulson(a, b, z):
  """`P(W ≤ z)`, `W ~ BetaPrime(a, b)`, by Paulson's cube-root normal approximation of
  `F = W b/a ~ F(2a, 2b)`. Where `beta_prime_cdf` uses it (both shapes ≥ 25) its
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


def beta_prime_cdf(z, a, b):
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
  gradient. `z` is clamped to `[ARG_MIN, ARG_MAX]` (see `clamped_ratio`).
  """
  z = jnp.clip(z, ARG_MIN, ARG_MAX)
  static = isinstance(a, (int, float))

  def bgrat_holds(large, small):
    return (large >= _BGRAT_MIN_SHAPE) & (
      small <= jnp.minimum(_BGRAT_RATIO * large, jnp.sqrt(50 * large))
    )

  small_b, small_a = bgrat_holds(a, b), bgrat_holds(b, a)
  # One BGRAT for both orientations (half the compiled program): `I_x(a, b)`, or
  # `I_{1−x}(b, a)` whose complement it is.
  bgrat = small_b | small_a
  large = jnp.where(small_b, a, jnp.where(small_a, b, _BGRAT_MIN_SHAPE))
  small = jnp.where(small_b, b, jnp.where(small_a, a, 1.0))
  series = _betainc_bgrat(large, small, jnp.where(small_b, _log_ratio_to_sum(z), -jnp.log1p(z)))
  value = jnp.where(small_b, series, jnp.where(small_a, 1 - series, 0.0))
  rest = ~bgrat
  if not static or a >= _LARGE_BETA_SHAPE:
    paulson = rest & (a >= _LARGE_BETA_SHAPE)
    value = value + jnp.where(
      paulson,
      _beta_prime_cdf_paulson(jnp.where(paulson, a, 1.0), jnp.where(paulson, b, 1.0), z),
      0.0,
    )
  if not static or a < _LARGE_BETA_SHAPE:
    moderate = rest & (a < _LARGE_BETA_SHAPE)
    value = value + jnp.where(
      moderate,
      _betainc(
        jnp.where(moderate, a, 1.0),
        jnp.where(moderate, b, 1.0),
        jnp.where(moderate, z / (1 + z), 0.5),
      ),
      0.0,
    )
  return value


def _log_ratio_to_sum(z):
  """`log(z/(1 + z)) = −log1p(1/z)`, accurate for `z` large, `log z − log1p(z)` for `z`
  small, whose gradient, unlike `1/z`'s, stays finite down to `z = ARG_MIN`."""
  large = z > 1
  z_large, z_small = jnp.where(large, z, 1.0), jnp.where(large, 1.0, z)
  return jnp.where(large, -jnp.log1p(1 / z_large), jnp.log(z_small) - jnp.log1p(z_small))


def clamped_ratio(numerator, denominator):
  """`numerator / denominator` (positive) clamped to `[ARG_MIN, ARG_MAX]`, with the
  gradient of `exp(clip(log numerator − log denominator))`.

  The quotient's own gradient, `−numerator/denominator²`, overflows at `β = 10^±30`
  and meets the clamp's zero as `0 · inf = NaN`; the logs' never does. The value is the
  quotient's (the log form rounds `log` to 1e-6, an error of 3e-4 in `χ²_{10⁶}`'s CDF).
  """
  log_ratio = jnp.clip(jnp.log(numerator) - jnp.log(denominator), _LOG_ARG_MIN, _LOG_ARG_MAX)
  smooth = jnp.exp(log_ratio)
  quotient = jnp.clip(numerator / denominator, ARG_MIN, ARG_MAX)
  return smooth + jax.lax.stop_gradient(quotient - smooth)


def wilson_hilferty(shape, score):
  """Wilson–Hilferty's quantile of `Gamma(shape, 1)` at normal score `score`, floored
  at 0: a location (`score` 0) or a bound (far in a tail) of the law, not a quantile to
  rely on (its tails are off by a factor or so, on the safe side for the energy law's bounds)."""
  root = 1 - 1 / (9 * shape) + score / (3 * jnp.sqrt(shape))
  return shape * jnp.maximum(root, 0.0) ** 3
