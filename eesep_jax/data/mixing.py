"""Relative source levels as WSJ0-2mix draws them, shared by the corpus and dynamic mixing."""

import numpy as np

# WSJ0-2mix draws one "SNR" u ~ U(0, 2.5) dB per mixture and scales its two
# (level-normalised) utterances by +u and -u dB: speaker 1 is 0 to 5 dB louder.
MAX_LEVEL_DIFFERENCE_DB = 5.0
# Its mixtures and sources are then scaled together so the loudest sample is 0.9.
PEAK = 0.9
_EPS = 1e-12


def wsj0_levels_db(rng, num_sources):
  """Per-source gains `[num_sources]` in dB around a common reference level.

  Sources 1 and 2 get +u and -u with u ~ U(0, 2.5) dB, so source 1 is uniformly
  0 to 5 dB louder than source 2 (WSJ0-2mix). Further sources (3-speaker mixtures)
  get independent U(-2.5, 2.5) dB, which keeps every pairwise difference within
  5 dB. A single source gets 0 dB.
  """
  half_range = MAX_LEVEL_DIFFERENCE_DB / 2
  if num_sources == 1:
    return np.zeros(1)
  u = rng.uniform(0.0, half_range)
  extra = rng.uniform(-half_range, half_range, size=num_sources - 2)
  return np.concatenate([[u, -u], extra])


def rms(x, axis=-1):
  """Root mean square along `axis`."""
  return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=axis))


def apply_levels(sources, levels_db, reference_rms=1.0):
  """Scales each of `sources` `[sources, time]` to RMS `reference_rms * 10**(level/20)`.

  Silent sources stay silent instead of being blown up.
  """
  current = np.array([rms(s) for s in sources])
  target = reference_rms * 10.0 ** (np.asarray(levels_db) / 20.0)
  scale = np.where(current > _EPS, target / np.maximum(current, _EPS), 0.0)
  return [s * g for s, g in zip(sources, scale)]


def peak_scale(signals, peak=PEAK):
  """The one gain that brings the loudest sample of all `signals` to `peak`."""
  loudest = max(float(np.max(np.abs(s))) for s in signals)
  return peak / loudest if loudest > _EPS else 1.0
