"""The training and stopping metrics (`core/metrics`): SI-SNR against fast_bss_eval and
Asteroid's formula and for its mean removal, SNR and improvements against numpy."""

import fast_bss_eval
import numpy as np

from eesep_jax.core import metrics


def _asteroid_si_sdr(reference, estimate):
  """Asteroid's `SingleSrcPITLossWrapper(PairwiseNegSDR("sisdr"))` in numpy float64:
  zero-mean both, project the estimate on the reference, ratio of energies."""
  reference = reference - reference.mean(axis=-1, keepdims=True)
  estimate = estimate - estimate.mean(axis=-1, keepdims=True)
  scale = np.sum(estimate * reference, axis=-1, keepdims=True) / np.sum(
    reference**2, axis=-1, keepdims=True
  )
  target = scale * reference
  return 10 * np.log10(np.sum(target**2, axis=-1) / np.sum((estimate - target) ** 2, axis=-1))


def test_si_snr_matches_asteroid():
  rng = np.random.default_rng(0)
  reference = rng.standard_normal((3, 2, 800)) + 0.5
  estimate = 0.8 * reference + 0.4 * rng.standard_normal((3, 2, 800)) - 0.2
  np.testing.assert_allclose(
    metrics.si_snr(reference.astype(np.float32), estimate.astype(np.float32)),
    _asteroid_si_sdr(reference, estimate),
    atol=1e-3,
  )


def test_si_snr_removes_the_mean_and_ignores_scale():
  rng = np.random.default_rng(1)
  reference = rng.standard_normal((2, 800))
  estimate = reference + 0.5 * rng.standard_normal((2, 800))
  base = metrics.si_snr(reference, estimate)
  shifted = metrics.si_snr(reference + 1.0, 3.0 * estimate - 2.0)
  np.testing.assert_allclose(shifted, base, atol=1e-3)
  # fast_bss_eval keeps the mean unless told otherwise: its default is another metric.
  keeps_mean = fast_bss_eval.numpy.si_sdr(reference[:, None] + 1.0, 3.0 * estimate[:, None] - 2.0)
  assert np.all(np.abs(keeps_mean[:, 0] - base) > 1.0)
  removes_mean = fast_bss_eval.numpy.si_sdr(
    reference[:, None] + 1.0, 3.0 * estimate[:, None] - 2.0, zero_mean=True
  )
  np.testing.assert_allclose(removes_mean[:, 0], base, atol=1e-3)


def _signals(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_si_snr_matches_fast_bss_eval():
  reference, noise = _signals(0, (2, 5, 1000))
  estimate = 0.7 * reference + 0.3 * noise + 0.1
  expected = np.array(
    [
      fast_bss_eval.numpy.si_sdr(
        r[None].astype(np.float64), e[None].astype(np.float64), zero_mean=True
      )[0]
      for r, e in zip(reference, estimate)
    ]
  )
  np.testing.assert_allclose(metrics.si_snr(reference, estimate), expected, atol=1e-3)


def test_snr_and_improvement_match_numpy():
  reference, estimate = _signals(1, (2, 3, 2, 400))
  mixture = reference.sum(axis=1)
  ref64, est64, mix64 = (x.astype(np.float64) for x in (reference, estimate, mixture))

  def snr64(s, s_hat):
    return 10 * np.log10(np.sum(s**2, -1) / np.sum((s - s_hat) ** 2, -1))

  np.testing.assert_allclose(metrics.snr(reference, estimate), snr64(ref64, est64), atol=1e-4)
  expected = snr64(ref64, est64) - snr64(ref64, mix64[:, None, :])
  np.testing.assert_allclose(
    metrics.improvement(metrics.snr, reference, estimate, mixture), expected, atol=1e-4
  )
