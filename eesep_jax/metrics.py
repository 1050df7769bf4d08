"""Separation and enhancement metrics.

`snr`, `si_snr` and `improvement` are `jax.numpy` functions (differentiable, used as
training objectives too); `sdr`, `pesq` and `stoi` wrap the field's reference libraries
(fast_bss_eval's numpy backend, `pesq`, `pystoi`) for evaluation on the host.

Signal functions take `[..., time]` arrays and return `[...]` values in dB. Definitions
follow the field's references (Asteroid, fast_bss_eval): SI-SNR removes the mean of
both signals before projecting the estimate onto the reference.
"""

import warnings

import fast_bss_eval
import jax.numpy as jnp
import numpy as np
import pesq as pesq_lib
import pystoi

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


def sdr(reference, estimate, filter_length=512):
  """BSS-eval SDR in dB (numpy, float64); `[..., time] -> [...]`.

  The signal-to-distortion ratio of `bss_eval_sources` (v4: the target is the part of
  the estimate explained by a `filter_length`-tap filter of its own reference), as
  computed by fast_bss_eval's numpy backend. No permutation is searched: estimate `i`
  is scored against reference `i`. NaN where it is undefined: a silent reference, or
  one too narrow-band (e.g. a few pure tones) for the filter to be determined.
  """
  reference, estimate = np.broadcast_arrays(np.asarray(reference, np.float64),
                                            np.asarray(estimate, np.float64))
  try:
    # The library normalises every signal by its norm: silence divides 0 by 0. One
    # channel "pairwise" (`[..., 1, 1]` out), as its non-pairwise path hands
    # `np.linalg.solve` a stack of vectors, which numpy 2 reads as one matrix.
    with np.errstate(invalid="ignore", divide="ignore"):
      return -fast_bss_eval.numpy.sdr_loss(
          estimate[..., None, :], reference[..., None, :], filter_length=filter_length,
          pairwise=True)[..., 0, 0]
  except np.linalg.LinAlgError:
    # One singular system fails the whole batch: find it, signal by signal.
    if reference.ndim == 1:
      return np.float64("nan")
    return np.stack([sdr(r, e, filter_length) for r, e in zip(reference, estimate)])


def _message(error):
  """An exception's message; the `pesq` extension raises with bytes."""
  message = error.args[0] if error.args else type(error).__name__
  return message.decode() if isinstance(message, bytes) else str(message)


def pesq(reference, estimate, sample_rate):
  """PESQ (ITU-T P.862 MOS-LQO) of one signal: narrow-band at 8 kHz, wide-band at 16 kHz.

  Args:
    reference, estimate: `[time]`.
    sample_rate: 8000 or 16000 (P.862 defines no other rate).

  Returns:
    `(score, problem)`: the score and None, or NaN and why it could not be computed
    (another rate, under 1/4 s of audio, no speech found, silence).
  """
  mode = {8000: "nb", 16000: "wb"}.get(sample_rate)
  if mode is None:
    return float("nan"), f"PESQ is defined at 8 or 16 kHz, not {sample_rate} Hz"
  try:
    # The wrapper divides by the peak, so silence reaches the C code as NaNs.
    with np.errstate(invalid="ignore", divide="ignore"):
      return float(pesq_lib.pesq(sample_rate, np.asarray(reference, np.float64),
                                 np.asarray(estimate, np.float64), mode)), None
  except (pesq_lib.PesqError, ValueError) as error:
    # ValueError: the wrapper's own failure on a silent degraded signal.
    return float("nan"), f"PESQ: {_message(error)}"


def stoi(reference, estimate, sample_rate, extended=False):
  """STOI (or extended STOI) of one signal, via `pystoi` (which resamples to 10 kHz).

  Args:
    reference, estimate: `[time]`.
    sample_rate: the signals' rate in Hz.
    extended: ESTOI instead of STOI.

  Returns:
    `(score, problem)`: the score and None, or NaN and why it could not be computed
    (`pystoi` warns and returns a placeholder when too few frames hold speech).
  """
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    score = pystoi.stoi(np.asarray(reference, np.float64), np.asarray(estimate, np.float64),
                        sample_rate, extended=extended)
  if caught:
    return float("nan"), f"STOI: {caught[0].message}"
  return float(score), None
