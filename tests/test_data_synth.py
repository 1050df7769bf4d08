"""The embedded eSpeak corpus: layout, determinism, speakers, levels, noise.
`eesep data synth`: test_cli_data.py."""

import concurrent.futures
import csv
import multiprocessing
import os

import numpy as np
import pytest
import scipy.signal
import scipy.stats
import soundfile

from eesep_jax import data
from eesep_jax.data import espeak
from eesep_jax.data import sentences
from eesep_jax.data import synth

SEED = 3


def _build(root, **kwargs):
  arguments = dict(num_train=6, num_valid=2, num_test=2, seed=SEED, progress=False, num_workers=2)
  arguments.update(kwargs)
  return synth.synthesize_corpus(root, **arguments)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth") / "corpus"
  return root, _build(root, num_train=48, num_valid=8, num_test=8)


def _read(path):
  return soundfile.read(path, dtype="float64")[0]


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


def _speakers_in_names(names):
  """WSJ0-2mix style ids: `<utt>_<level>_<utt>_<level>`, utterance = speaker + `u` + number."""
  return [tuple(part.split("u")[0] for part in name.split("_")[::2]) for name in names]


def test_wsj0_mix_layout_readable_by_three_readers(corpus):
  root, manifest = corpus
  assert manifest["layout"] == "wsj0-mix"
  for split, count in (("tr", 48), ("cv", 8), ("tt", 8)):
    assert sorted(os.listdir(root / split)) == ["mix", "s1", "s2"]
    wsj = data.open_dataset("wsj0-mix", root, split, sample_rate=8000, num_sources=2)
    libri = data.open_dataset("librimix", root, split, sample_rate=8000, num_sources=2)
    assert len(wsj) == len(libri) == manifest["splits"][split]["mixtures"] == count
    assert sorted(wsj.ids) == sorted(libri.ids)
  with open(root / "metadata" / "mixture_tr_mix_clean.csv") as file:
    rows = list(csv.DictReader(file))
  assert list(rows[0]) == ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"]
  assert all(os.path.isabs(row["mixture_path"]) for row in rows)
  seconds = np.array([int(row["length"]) for row in rows]) / 8000
  assert 1.0 < seconds.min() and seconds.max() < 6.0 and 1.8 < seconds.mean() < 4.0
  example = wsj[0]  # The mixture is the sum of its sources (16-bit rounding apart).
  np.testing.assert_allclose(example["mixture"], example["sources"].sum(0), atol=2 / 32768)
  peak = max(np.abs(example["mixture"]).max(), np.abs(example["sources"]).max())
  assert peak == pytest.approx(0.9, abs=1e-3)  # Scaled as WSJ0-2mix scales its mixtures.


def test_speakers_are_many_varied_and_disjoint(corpus):
  root, _ = corpus
  with open(root / "speakers.csv") as file:
    speakers = list(csv.DictReader(file))
  groups = {}
  for speaker in speakers:
    groups.setdefault(speaker["group"], []).append(speaker)
  assert len(groups["tr"]) >= 16
  variants = {group: {s["variant"] for s in members} for group, members in groups.items()}
  names = list(variants)
  for i, first in enumerate(names):  # No voice variant is shared between groups.
    for second in names[i + 1 :]:
      assert not variants[first] & variants[second], (first, second)
  for group in ("tr", "cv", "tt"):  # Both voice registers in every split.
    assert variants[group] & set(espeak.HIGH_VARIANTS) and variants[group] & set(
      espeak.LOW_VARIANTS
    )
  voices = [tuple(s[k] for k in ("accent", "variant", "pitch", "rate")) for s in speakers]
  assert len(set(voices)) == len(voices)
  used = {}
  for split in ("tr", "cv", "tt"):
    pairs = _speakers_in_names(os.path.splitext(n)[0] for n in os.listdir(root / split / "mix"))
    assert all(len(set(pair)) == 2 for pair in pairs)  # Two different speakers per mixture.
    used[split] = {s for pair in pairs for s in pair}
    assert used[split] <= {s["speaker"] for s in groups[split]}
  assert len(used["tr"]) >= 16
  assert not used["tr"] & used["tt"] and not used["tr"] & used["cv"] and not used["cv"] & used["tt"]


def test_relative_levels_are_uniform_0_to_5_db(corpus):
  root, _ = corpus
  measured = []
  for split in ("tr", "cv", "tt"):
    for name in sorted(os.listdir(root / split / "mix")):
      s1, s2 = (_read(root / split / folder / name) for folder in ("s1", "s2"))
      difference = 20 * np.log10(_rms(s1) / _rms(s2))
      level_1, level_2 = (float(x) for x in os.path.splitext(name)[0].split("_")[1::2])
      assert difference == pytest.approx(level_1 - level_2, abs=0.01)
      measured.append(difference)
  assert min(measured) >= 0 and max(measured) <= 5.0 + 1e-3
  assert scipy.stats.kstest(measured, scipy.stats.uniform(0, 5).cdf).pvalue > 0.01


def test_same_arguments_give_the_same_bytes(corpus, tmp_path):
  first, second = tmp_path / "a", tmp_path / "b"
  _build(first, num_workers=1)
  _build(second, num_workers=2)
  files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
  assert len([f for f in files if f.suffix == ".wav"]) == 10 * 3
  for name in files:
    a, b = (first / name).read_bytes(), (second / name).read_bytes()
    if name.suffix == ".csv":  # Metadata holds absolute paths, as LibriMix's does.
      a = a.replace(str(first).encode(), b"ROOT")
      b = b.replace(str(second).encode(), b"ROOT")
    assert a == b, name
  # Each split has its own generator: the test split does not depend on num_train.
  big, _ = corpus
  for name in os.listdir(first / "tt" / "s1"):
    assert (first / "tt" / "s1" / name).read_bytes() == (big / "tt" / "s1" / name).read_bytes()


def test_noisy_corpus_in_wham_layout(tmp_path):
  root = tmp_path / "noisy"
  manifest = _build(root, noise="babble", num_sources=3, sample_rate=16000, num_train=4)
  assert manifest["layout"] == "wham"
  assert sorted(os.listdir(root / "tr")) == [
    "mix_both",
    "mix_clean",
    "mix_single",
    "noise",
    "s1",
    "s2",
    "s3",
  ]
  assert sorted(os.listdir(root / "metadata")) == sorted(
    f"mixture_{split}_mix_{kind}.csv"
    for split in ("tr", "cv", "tt")
    for kind in ("clean", "both", "single")
  )
  quantum = 4 / 32768
  for name in os.listdir(root / "tr" / "noise"):
    signal = {folder: _read(root / "tr" / folder / name) for folder in os.listdir(root / "tr")}
    sources = [signal["s1"], signal["s2"], signal["s3"]]
    np.testing.assert_allclose(signal["mix_clean"], sum(sources), atol=quantum)
    np.testing.assert_allclose(
      signal["mix_both"], signal["mix_clean"] + signal["noise"], atol=quantum
    )
    np.testing.assert_allclose(signal["mix_single"], signal["s1"] + signal["noise"], atol=quantum)
    snr = 20 * np.log10(max(_rms(s) for s in sources) / _rms(signal["noise"]))
    assert -6.01 <= snr <= 3.01
  noisy = data.open_dataset("wham", root, "tr", sample_rate=16000, task="sep_noisy")
  assert noisy.num_sources == 3 and noisy[0]["sources"].shape[0] == 3
  single = data.open_dataset("librimix", root, "cv", sample_rate=16000, mixture="single")
  assert single.num_sources == 1 and single[0]["sample_rate"] == 16000


@pytest.mark.parametrize("kind, slope", [("white", 0.0), ("pink", -1.0)])
def test_noise_spectra(kind, slope):
  noise = synth._noise(kind, 2**16, np.random.default_rng(0), (), 8000)  # pylint: disable=protected-access
  frequencies, power = scipy.signal.welch(noise, fs=8000, nperseg=1024)
  band = (frequencies > 50) & (frequencies < 3500)
  fitted = np.polyfit(np.log10(frequencies[band]), np.log10(power[band]), 1)[0]
  assert fitted == pytest.approx(slope, abs=0.1)


def test_sentences_vary_and_are_seeded():
  first = [sentences.sentence_with_length(np.random.default_rng(k), 5, 12) for k in range(200)]
  again = [sentences.sentence_with_length(np.random.default_rng(k), 5, 12) for k in range(200)]
  assert first == again
  lengths = [len(s.split()) for s in first]
  assert min(lengths) >= 5 and max(lengths) <= 12 and len(set(lengths)) >= 6
  assert len(set(first)) >= 195
  assert {s[-1] for s in first} == {".", "?"}


def _speak(args):
  return espeak.speak(*args)


def test_speech_depends_only_on_its_arguments():
  voice = espeak.Voice(
    accent="en-us",
    variant="f2",
    pitch=50,
    pitch_range=50,
    rate=170,
    word_gap=0,
    tract_scale=1.0,
    tilt=0.0,
  )
  other = espeak.Voice(
    accent="en-gb-x-rp",
    variant="m3",
    pitch=40,
    pitch_range=60,
    rate=150,
    word_gap=1,
    tract_scale=0.95,
    tilt=0.2,
  )
  text = "The careful painter measured every wooden bridge."
  requests = [(text, voice, 7, 8000), (text, other, 7, 8000), (text, voice, 7, 8000)]
  # eSpeak runs in a spawned process, as the corpus builder runs it.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    first, second, third = pool.map(_speak, requests)
  np.testing.assert_array_equal(first, third)
  assert first.dtype == np.float32 and 1.0 < len(first) / 8000 < 5.0
  assert len(first) != len(second) or not np.allclose(first, second)


def test_ensure_demo_corpus_builds_once(tmp_path):
  root = tmp_path / "demo"
  sizes = dict(num_train=3, num_valid=1, num_test=1)
  manifest = synth.ensure_demo_corpus(root, progress=False, **sizes)
  wav = next((root / "tr" / "mix").iterdir())
  stamp = wav.stat().st_mtime_ns
  assert synth.ensure_demo_corpus(root, progress=False, **sizes) == manifest
  assert wav.stat().st_mtime_ns == stamp
  with pytest.raises(FileExistsError, match="made with"):
    synth.ensure_demo_corpus(root, progress=False, num_train=4, num_valid=1, num_test=1)
  (root / synth._IN_PROGRESS).touch()  # pylint: disable=protected-access
  (root / "manifest.json").unlink()  # As an interrupted run leaves it.
  assert synth.ensure_demo_corpus(root, progress=False, **sizes) == manifest
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    synth.ensure_demo_corpus(other, progress=False, **sizes)


def test_heldout_set_speaks_languages_and_variants_no_training_split_uses(tmp_path):
  heldout = tmp_path / "heldout"
  manifest = synth.ensure_heldout_corpus(heldout, progress=False)
  assert manifest["splits"]["tt"]["mixtures"] == synth.HELDOUT["num_test"]
  assert not any((heldout / split).exists() for split in ("tr", "cv"))
  with open(heldout / "speakers.csv") as file:
    tested = [row for row in csv.DictReader(file) if row["group"] == "tt"]
  # The demo corpus's training speakers (same seed).
  training = synth.draw_speakers(synth.HELDOUT["seed"])["tr"].values()
  assert {row["accent"] for row in tested} <= set(espeak.HELDOUT_VOICES)
  assert not {row["accent"] for row in tested} & {voice.accent for voice in training}
  assert not {row["variant"] for row in tested} & {voice.variant for voice in training}
  source = data.open_dataset("wsj0-mix", heldout, "tt", sample_rate=8000)
  assert len(source) == synth.HELDOUT["num_test"]
  assert np.abs(source[0]["sources"]).max() > 0.1  # Speech, not silence.


def test_synthesize_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="sample_rate"):
    synth.synthesize_corpus(tmp_path / "x", sample_rate=22050)
  with pytest.raises(ValueError, match="noise"):
    synth.synthesize_corpus(tmp_path / "x", noise="brown")
