"""Training-time augmentation: each transform against an independent computation, and
the augmented dynamic-mixing stream."""

import numpy as np
import pytest

from eesep_jax import config_lib
from eesep_jax.data import augment
from eesep_jax.data import pipeline
from eesep_jax.training import train

RATE = 8000


def _peak_hz(signal, rate=RATE):
  spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
  return np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)]


def _sine(hz, seconds=1.0, rate=RATE):
  return np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


@pytest.mark.parametrize("factor", [0.85, 1.2])
def test_warp_scales_frequencies_and_duration(factor):
  warped = augment.warp(_sine(500.0), factor)
  assert len(warped) == pytest.approx(RATE / factor, abs=2)
  assert _peak_hz(warped) == pytest.approx(500.0 * factor, abs=3.0)


def test_tilt_is_first_difference():
  signal = np.random.default_rng(0).standard_normal(1000)
  expected = signal - 0.4 * np.concatenate([[0.0], signal[:-1]])
  np.testing.assert_allclose(augment.tilt(signal, 0.4), expected, atol=1e-12)


def test_room_response_decays_by_60_db_in_rt60():
  rng = np.random.default_rng(1)
  rt60 = 0.4
  response = augment.room_response(rng, rt60, RATE)
  assert response[0] == 1.0
  tail = response[1:]
  # Energy in 20 ms frames against time: a line whose slope is -60 dB per rt60.
  frame = RATE // 50
  energy = np.array([np.sum(tail[k : k + frame] ** 2) for k in range(0, len(tail) - frame, frame)])
  slope = np.polyfit(np.arange(len(energy)) * frame / RATE, 10 * np.log10(energy), 1)[0]
  assert slope == pytest.approx(-60.0 / rt60, rel=0.2)


def test_band_limit_passes_the_band_and_stops_outside():
  def gain_db(hz):
    out = augment.band_limit(_sine(hz), 300.0, 3000.0, RATE)[RATE // 2 :]
    return 20 * np.log10(np.std(out) / np.std(_sine(hz)[RATE // 2 :]))

  assert abs(gain_db(1000.0)) < 0.5
  assert gain_db(80.0) < -20.0
  assert gain_db(3800.0) < -15.0


def test_noise_floor_level_and_colour():
  rng = np.random.default_rng(2)
  noises = [augment.noise_floor(rng, 8000, 0.01) for _ in range(8)]
  for noise in noises:
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(0.01, rel=1e-6)


def test_augment_sources_keeps_the_mixture_the_sum_plus_noise():
  rng = np.random.default_rng(3)
  sources = rng.standard_normal((2, 4000)) * [[1.0], [0.5]]
  quiet = augment.Augmentation(reverb_probability=1.0, band_probability=1.0, noise_probability=0.0)
  mixture, out = augment.augment_sources(sources, 3000, np.random.default_rng(4), quiet, RATE)
  np.testing.assert_allclose(mixture, out.sum(0), atol=1e-6)
  assert not out[:, 3000:].any() and not mixture[3000:].any()  # Padding stays silent.
  noisy = augment.Augmentation(
    reverb_probability=0.0, band_probability=0.0, noise_probability=1.0, noise_snr_db=(20.0, 20.0)
  )
  mixture, out = augment.augment_sources(sources, 4000, np.random.default_rng(4), noisy, RATE)
  np.testing.assert_allclose(out, sources, atol=1e-6)  # Targets are untouched.
  noise = mixture - out.sum(0)
  loudest = np.sqrt(np.mean(sources[0] ** 2))
  assert 20 * np.log10(loudest / np.sqrt(np.mean(noise**2))) == pytest.approx(20.0, abs=0.01)


def test_augmentation_parts_leave_out_voices_or_channel():
  assert augment.Augmentation.parts() == augment.Augmentation()
  rng = np.random.default_rng(5)
  track = rng.standard_normal(4000).astype(np.float32)
  sources = rng.standard_normal((2, 4000)).astype(np.float32)
  voices_only = augment.Augmentation.parts(channel=False)
  channel_only = augment.Augmentation.parts(voices=False)
  for seed in range(20):  # The draws that would vary the part left out are ignored.
    np.testing.assert_array_equal(
      augment.warp_track(track, np.random.default_rng(seed), channel_only), track
    )
    mixture, out = augment.augment_sources(
      sources, 4000, np.random.default_rng(seed), voices_only, RATE
    )
    np.testing.assert_allclose(out, sources, atol=1e-6)
    np.testing.assert_allclose(mixture, sources.sum(0), atol=1e-5)
  warped = augment.warp_track(track, np.random.default_rng(0), voices_only)
  assert len(warped) != len(track)  # The part kept still varies.


@pytest.mark.parametrize(
  "overrides, expected",
  [
    ((), augment.Augmentation()),
    (("data.augment_voices=False",), augment.Augmentation.parts(voices=False)),
    (("data.augment_channel=False",), augment.Augmentation.parts(channel=False)),
    (("data.augment=False",), None),
  ],
)
def test_the_config_chooses_the_training_augmentation(overrides, expected):
  config = config_lib.load_config(config_lib.PACKAGED_CONFIGS / "demo.py", overrides)
  assert train._augmentation(config.data) == expected  # pylint: disable=protected-access


def test_augmented_dynamic_mixing_is_deterministic_and_consistent(tiny_corpus):
  from eesep_jax import data

  source = data.open_dataset("wsj0-mix", tiny_corpus, "tr", sample_rate=RATE)
  no_noise = augment.Augmentation(noise_probability=0.0)

  def batches(augmentation):
    loader = pipeline.training_loader(
      source,
      batch_size=2,
      segment_seconds=0.5,
      seed=5,
      dynamic_mixing=True,
      augmentation=augmentation,
    )
    iterator = iter(loader)
    return [next(iterator) for _ in range(3)]

  first, again = batches(no_noise), batches(no_noise)
  plain = batches(None)
  for a, b, c in zip(first, again, plain):
    np.testing.assert_array_equal(a["mixture"], b["mixture"])
    np.testing.assert_allclose(a["mixture"], a["sources"].sum(1), atol=1e-5)
    assert not np.allclose(a["sources"], c["sources"])  # Augmentation changed them.
  with pytest.raises(ValueError, match="dynamic_mixing"):
    pipeline.training_loader(
      source, batch_size=2, segment_seconds=0.5, seed=5, augmentation=no_noise
    )
