"""Training-time voice and channel variation, drawn afresh for every dynamic mixture.

A model trained on a few synthesisers learns their voices and their clean, digital
channel. `augment_sources` varies what a synthesiser cannot, per example, so no two
epochs hear the same sound:

- each speaker's vocal-tract length and pitch, together (`warp`: resampling by a
  factor, as `espeak.colour` does at synthesis);
- each speaker's spectral tilt (`tilt`, first order);
- a room shared by the speakers (`reverberate`: exponentially decaying noise as the
  impulse response; the targets are the reverberant sources);
- the channel's band (`band_limit`: a telephone-like band on everything);
- a noise floor under the mixture only (`noise_floor`), as recordings have.

All of it is linear in each source, except the warp, which only resamples it, so the
mixture stays the sum of its targets (before the noise floor).
"""

import dataclasses

import numpy as np
import scipy.signal

from eesep_jax.data import audio as audio_lib
from eesep_jax.data import mixing


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """How strongly `augment_sources` varies a mixture; every range is drawn uniformly.

  Attributes:
    warp: range of the resampling factor (> 1: a shorter tract, higher and faster).
    tilt: range of the first-order tilt coefficient (> 0 brighter).
    reverb_probability: share of mixtures put in a room.
    rt60_seconds: range of the room's reverberation time.
    band_probability: share of mixtures band-limited.
    band_low_hz, band_high_hz: ranges of the band's edges.
    noise_probability: share of mixtures with a noise floor.
    noise_snr_db: range of the louder speaker's level over the noise floor.
  """

  warp: tuple[float, float] = (0.85, 1.2)
  tilt: tuple[float, float] = (-0.6, 0.6)
  reverb_probability: float = 0.3
  rt60_seconds: tuple[float, float] = (0.15, 0.6)
  band_probability: float = 0.3
  band_low_hz: tuple[float, float] = (60.0, 300.0)
  band_high_hz: tuple[float, float] = (2800.0, 3800.0)
  noise_probability: float = 0.5
  noise_snr_db: tuple[float, float] = (15.0, 40.0)

  @classmethod
  def parts(cls, *, voices=True, channel=True):
    """The default variation with a part left out: `voices` (each speaker's warp and
    tilt) or `channel` (the room, the band and the noise floor)."""
    left_out = {}
    if not voices:
      left_out.update(warp=(1.0, 1.0), tilt=(0.0, 0.0))
    if not channel:
      left_out.update(reverb_probability=0.0, band_probability=0.0, noise_probability=0.0)
    return cls(**left_out)


def warp(signal, factor):
  """`signal` `[time]` played `factor` times faster: formants and pitch up by `factor`,
  length divided by it (soxr resampling from `factor * r` to `r`)."""
  return audio_lib.resample(np.asarray(signal, np.float32), 1000.0 * factor, 1000.0)


def tilt(signal, coefficient):
  """First-order tilt `y[t] = x[t] - coefficient x[t-1]` of `signal` `[..., time]`."""
  return scipy.signal.lfilter([1.0, -coefficient], [1.0], signal, axis=-1)


def room_response(rng, rt60_seconds, sample_rate, direct_delay=0):
  """A synthetic room impulse response `[time]`: a unit direct path, then Gaussian
  noise whose energy falls by 60 dB in `rt60_seconds`."""
  length = int(rt60_seconds * sample_rate)
  t = np.arange(length) / sample_rate
  tail = rng.standard_normal(length) * 10.0 ** (-3.0 * t / rt60_seconds)
  tail *= 0.3 / max(float(np.sqrt(np.sum(tail**2))), 1e-12)  # Direct-to-reverberant ~10 dB.
  response = np.concatenate([np.zeros(direct_delay), [1.0], tail])
  return response


def reverberate(signals, response):
  """`signals` `[..., time]` convolved with `response`, cut to their length."""
  return scipy.signal.fftconvolve(
    signals, response[None] if signals.ndim > 1 else response, axes=-1
  )[..., : signals.shape[-1]]


def band_limit(signals, low_hz, high_hz, sample_rate):
  """`signals` `[..., time]` band-passed to `[low_hz, high_hz]` (4th-order Butterworth,
  forward only, as a channel would)."""
  sos = scipy.signal.butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
  return scipy.signal.sosfilt(sos, signals, axis=-1)


def noise_floor(rng, length, level_rms):
  """White or pink noise `[length]` at RMS `level_rms`."""
  noise = rng.standard_normal(length)
  if rng.random() < 0.5:  # Pink: power falling as 1/f.
    spectrum = np.fft.rfft(noise)
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n=length)
  return noise * level_rms / max(mixing.rms(noise), 1e-12)


def warp_track(track, rng, augmentation):
  """One speaker's track with a random vocal-tract warp and tilt (before cropping, so
  that a crop of the warped track is always full)."""
  warped = warp(track, rng.uniform(*augmentation.warp))
  return tilt(warped, rng.uniform(*augmentation.tilt)).astype(np.float32)


def augment_sources(sources, valid, rng, augmentation, sample_rate):
  """The room, band and noise floor of one mixture.

  Args:
    sources: `[sources, time]` at their mixing levels.
    valid: how many leading samples are real (the rest is padding, kept silent).
    rng: a numpy Generator.
    augmentation: an `Augmentation`.
    sample_rate: in Hz.

  Returns:
    `(mixture [time], sources [sources, time])`, float32; the mixture is the sources'
    sum plus the noise floor, if any.
  """
  sources = np.asarray(sources, np.float64)
  if rng.random() < augmentation.reverb_probability:
    response = room_response(rng, rng.uniform(*augmentation.rt60_seconds), sample_rate)
    sources = reverberate(sources, response)
  if rng.random() < augmentation.band_probability:
    sources = band_limit(
      sources,
      rng.uniform(*augmentation.band_low_hz),
      min(rng.uniform(*augmentation.band_high_hz), 0.45 * sample_rate),
      sample_rate,
    )
  sources[:, valid:] = 0.0
  mixture = sources.sum(axis=0)
  if rng.random() < augmentation.noise_probability:
    loudest = max(mixing.rms(s[:valid]) for s in sources) if valid else 0.0
    level = loudest * 10.0 ** (-rng.uniform(*augmentation.noise_snr_db) / 20.0)
    mixture[:valid] += noise_floor(rng, valid, level)
  return mixture.astype(np.float32), sources.astype(np.float32)
