"""Separation metrics in `jax.numpy`: `snr`, `si_snr` and `improvement`
(differentiable, used as training objectives too). The host-side scores of the field's
reference libraries (SDR, PESQ, STOI) are in `eesep_jax.analysis.scores`.

Signal functions take `[..., time]` arrays and return `[...]` values in dB. Definitions
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
  """SNR `10 log10(‖s‖² / ‖s − ŝ‖²)` in dB; `[..., time] -> [...]`.

  Zero padding adds nothing to either energy: a padded signal scores as its valid part.
  """
  signal = jnp.sum(jnp.square(reference), axis=-1)
  error = jnp.sum(jnp.square(reference - estimate), axis=-1)
  return _db_ratio(signal, error)


def _remove_mean(signal, lengths):
  """`signal` minus its mean over its first `lengths` samples, zero beyond them."""
  if lengths is None:
    return signal - jnp.mean(signal, axis=-1, keepdims=True)
  lengths = jnp.asarray(lengths)[..., None]
  valid = jnp.arange(signal.shape[-1]) < lengths
  mean = jnp.sum(signal * valid, axis=-1, keepdims=True) / jnp.maximum(lengths, 1)
  return (signal - mean) * valid


def si_snr(reference, estimate, lengths=None):
  """Scale-invariant SNR (mean-removed, as in Asteroid); `[..., time] -> [...]`.

  Removing the mean is not invariant to zero padding (the mean changes, and the
  padding would become `−mean`): with `lengths`, the valid samples of each example
  (broadcastable to `[...]`; signals zero beyond them), the means are over the valid
  samples and removed from those only, so a padded signal scores as its valid part.
  SNR needs no such care: zeros add no energy.
  """
  reference = _remove_mean(reference, lengths)
  estimate = _remove_mean(estimate, lengths)
  scale = jnp.sum(reference * estimate, axis=-1, keepdims=True) / (
    jnp.sum(jnp.square(reference), axis=-1, keepdims=True) + EPS
  )
  projection = scale * reference
  return _db_ratio(
    jnp.sum(jnp.square(projection), axis=-1), jnp.sum(jnp.square(estimate - projection), axis=-1)
  )


def improvement(metric, reference, estimate, mixture):
  """`metric(s, ŝ) − metric(s, x)`: the gain over using the mixture as the estimate.

  `reference`, `estimate`: `[..., sources, time]`; `mixture`: `[..., time]`.
  """
  baseline = metric(reference, jnp.broadcast_to(mixture[..., None, :], reference.shape))
  return metric(reference, estimate) - baseline
