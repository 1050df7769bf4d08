"""The evaluation scores (`analysis/scores`): the SDR, PESQ and STOI wrappers against
their libraries and on signals where they must fail softly."""

import fast_bss_eval
import numpy as np
import pytest

from eesep_jax.analysis import scores

RATE = 8000


def _speech_like(seed, seconds=1.0, rate=RATE):
  """A voiced, syllable-rate modulated harmonic tone with a little noise: enough speech
  for PESQ's voice activity detector and STOI's silent-frame removal."""
  rng = np.random.default_rng(seed)
  t = np.arange(round(seconds * rate)) / rate
  voiced = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 8))
  envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
  return 0.2 * envelope * voiced + 1e-3 * rng.standard_normal(t.size)


def test_sdr_matches_fast_bss_eval_with_its_permutation_search():
  rng = np.random.default_rng(2)
  references = rng.standard_normal((3, 2, 4000))
  estimates = references + 0.5 * rng.standard_normal((3, 2, 4000)) + 0.2 * references[:, ::-1]
  expected, permutation = fast_bss_eval.numpy.sdr(references, estimates, return_perm=True)
  np.testing.assert_array_equal(permutation, [[0, 1]] * 3)
  np.testing.assert_allclose(scores.sdr(references, estimates), expected, rtol=1e-10)
  # Broadcast a mixture against its sources, as improvements do.
  mixture = references.sum(axis=1, keepdims=True)
  assert scores.sdr(references, mixture).shape == (3, 2)


def test_sdr_forgives_a_short_filter_but_not_noise():
  signal = _speech_like(3)
  noisy = signal + 0.05 * np.random.default_rng(3).standard_normal(signal.size)
  assert scores.sdr(signal, signal) > 100
  filtered = np.convolve(signal, [1.0, 0.5, -0.2])[: signal.size]  # Within 512 taps.
  assert 30 < scores.sdr(signal, filtered) < np.inf
  assert scores.sdr(signal, noisy) < 20


def test_sdr_is_nan_where_undefined(monkeypatch):
  signal = _speech_like(4)
  assert np.isnan(scores.sdr(np.zeros_like(signal), signal))
  # A singular filter system (seen on pure tones) fails the library's whole batch:
  # only the signal that causes it may lose its score.
  sdr_loss = fast_bss_eval.numpy.sdr_loss

  def singular_on_constants(estimate, reference, **kwargs):
    if np.any(np.ptp(reference, axis=-1) == 0):
      raise np.linalg.LinAlgError("Singular matrix")
    return sdr_loss(estimate, reference, **kwargs)

  monkeypatch.setattr(fast_bss_eval.numpy, "sdr_loss", singular_on_constants)
  references = np.stack([signal, np.ones_like(signal)])
  values = scores.sdr(references, references + 0.01)
  assert np.isfinite(values[0]) and np.isnan(values[1])


@pytest.mark.parametrize("rate", [8000, 16000])
def test_pesq_and_stoi_rank_a_cleaner_estimate_higher(rate):
  clean = _speech_like(5, rate=rate)
  noise = np.random.default_rng(5).standard_normal(clean.size)
  (pesq_clean, stoi_clean), (pesq_noisy, stoi_noisy) = (
    (
      scores.pesq(clean, clean + level * noise, rate),
      scores.stoi(clean, clean + level * noise, rate),
    )
    for level in (0.01, 0.1)
  )
  assert pesq_clean[1] is None and stoi_clean[1] is None
  assert 1.0 <= pesq_noisy[0] < pesq_clean[0] <= 4.65
  assert 0.0 <= stoi_noisy[0] < stoi_clean[0] <= 1.0


def test_pesq_and_stoi_report_what_they_cannot_score():
  silence = np.zeros(RATE)
  score, problem = scores.pesq(silence, silence, RATE)
  assert np.isnan(score) and "No utterances" in problem
  score, problem = scores.pesq(_speech_like(6), silence, RATE)
  assert np.isnan(score) and problem.startswith("PESQ")
  score, problem = scores.pesq(_speech_like(6, seconds=0.1), _speech_like(7, seconds=0.1), RATE)
  assert np.isnan(score) and "1/4 of a second" in problem
  score, problem = scores.pesq(_speech_like(6), _speech_like(7), 44100)
  assert np.isnan(score) and "44100 Hz" in problem
  score, problem = scores.stoi(_speech_like(6, seconds=0.05), _speech_like(7, seconds=0.05), RATE)
  assert np.isnan(score) and "STOI" in problem
