"""Signal-level separation metrics in JAX: SNR, SI-SNR and their improvements.

All functions take `[..., time]` arrays and return `[...]` values in dB. Definitions
follow the field's references (Asteroid, fast_bss_eval): SI-SNR removes the mean of
both signals before projecting the estimate onto the reference.
"""

import jax.numpy as jnp

# Added inside logarithms and divisions so silent references and perfect estimates
# give finite values and finite gradients.
EPS = 1e-8


def _db_ratio(numerator, denominator):
  return 10.0 * (jnp.log10(numerator + EPS) - jnp.log10(denominator + EPS))


def snr(reference, estimate):
  """SNR `10 log10(‖s‖² / ‖s − ŝ‖²)` in dB; `[..., time] -> [...]`."""
  signal = jnp.sum(jnp.square(reference), axis=-1)
  error = jnp.sum(jnp.square(reference - estimate), axis=-1)
  return _db_ratio(signal, error)


def si_snr(reference, estimate):
  """Scale-invariant SNR (mean-removed, as in Asteroid); `[..., time] -> [...]`."""
  reference = reference - jnp.mean(reference, axis=-1, keepdims=True)
  estimate = estimate - jnp.mean(estimate, axis=-1, keepdims=True)
  scale = jnp.sum(reference * estimate, axis=-1, keepdims=True) / (
      jnp.sum(jnp.square(reference), axis=-1, keepdims=True) + EPS)
  projection = scale * reference
  return _db_ratio(jnp.sum(jnp.square(projection), axis=-1),
                   jnp.sum(jnp.square(estimate - projection), axis=-1))


def improvement(metric, reference, estimate, mixture):
  """`metric(s, ŝ) − metric(s, x)`: the gain over using the mixture as the estimate.

  `reference`, `estimate`: `[..., sources, time]`; `mixture`: `[..., time]`.
  """
  baseline = metric(reference, jnp.broadcast_to(mixture[..., None, :], reference.shape))
  return metric(reference, estimate) - baseline
