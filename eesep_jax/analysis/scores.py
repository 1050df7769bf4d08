"""Host-side scores from the field's reference libraries, for evaluation: BSS-eval SDR
(fast_bss_eval's numpy backend), PESQ (`pesq`) and STOI (`pystoi`).

Signal functions take `[..., time]` numpy arrays. The training metrics (SNR, SI-SNR)
are `eesep_jax.core.metrics`.
"""

import warnings

import fast_bss_eval
import numpy as np
import pesq as pesq_lib
import pystoi


def sdr(reference, estimate, filter_length=512):
  """BSS-eval SDR in dB (numpy, float64); `[..., time] -> [...]`.

  The signal-to-distortion ratio of `bss_eval_sources` (v4: the target is the part of
  the estimate explained by a `filter_length`-tap filter of its own reference), as
  computed by fast_bss_eval's numpy backend. No permutation is searched: estimate `i`
  is scored against reference `i`. NaN where it is undefined: a silent reference, or
  one too narrow-band (e.g. a few pure tones) for the filter to be determined.
  """
  reference, estimate = np.broadcast_arrays(
    np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
  )
  try:
    # The library normalises every signal by its norm: silence divides 0 by 0. One
    # channel "pairwise" (`[..., 1, 1]` out), as its non-pairwise path hands
    # `np.linalg.solve` a stack of vectors, which numpy 2 reads as one matrix.
    with np.errstate(invalid="ignore", divide="ignore"):
      return -fast_bss_eval.numpy.sdr_loss(
        estimate[..., None, :], reference[..., None, :], filter_length=filter_length, pairwise=True
      )[..., 0, 0]
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
      return float(
        pesq_lib.pesq(
          sample_rate, np.asarray(reference, np.float64), np.asarray(estimate, np.float64), mode
        )
      ), None
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
    score = pystoi.stoi(
      np.asarray(reference, np.float64),
      np.asarray(estimate, np.float64),
      sample_rate,
      extended=extended,
    )
  if caught:
    return float("nan"), f"STOI: {caught[0].message}"
  return float(score), None
