"""Dataset readers on tiny fixtures written in each corpus's own layout, with every error case."""

import csv
import os
import warnings

import numpy as np
import pytest
import soundfile

from eesep_jax import data
from eesep_jax.data import audio as audio_lib

RATE = 8000
LENGTH = 400  # Samples per fixture file: 50 ms.


def _signal(seed, length=LENGTH, channels=1):
  rng = np.random.default_rng(seed)
  shape = (length,) if channels == 1 else (length, channels)
  return (0.3 * rng.uniform(-1, 1, shape)).astype(np.float32)


def _write(path, signal, rate=RATE, subtype="PCM_16"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, signal, rate, subtype=subtype)
  return str(path)


def _parallel_folders(directory, folders, names, rate=RATE, length=LENGTH):
  """Writes `directory/FOLDER/NAME.wav` for every folder and name; returns the signals."""
  signals = {}
  for k, name in enumerate(names):
    for j, folder in enumerate(folders):
      signals[folder, name] = _signal(100 * k + j, length)
      _write(os.path.join(directory, folder, f"{name}.wav"), signals[folder, name], rate)
  return signals


# WSJ0-2mix names its mixtures after both utterances and their levels.
WSJ_NAMES = ("01aa010b_0.97482_209a010p_-0.97482", "01ao0305_1.4526_20do010c_-1.4526")


def _wsj0_mix(root, num_sources=2, splits=("tr", "cv", "tt")):
  folders = ["mix"] + [f"s{c + 1}" for c in range(num_sources)]
  return {split: _parallel_folders(root / split, folders, WSJ_NAMES) for split in splits}


def _read16(path):
  return soundfile.read(path, dtype="int16")[0].astype(np.float32) / 32768.0


# ---------------------------------------------------------------------------- wsj0-mix


@pytest.mark.parametrize("num_sources", [2, 3])
def test_wsj0_mix_reads_mixtures_and_sources(tmp_path, num_sources):
  _wsj0_mix(tmp_path, num_sources)
  source = data.open_dataset("wsj0-mix", tmp_path, "cv", sample_rate=RATE, num_sources=num_sources)
  assert len(source) == 2 and source.num_sources == num_sources
  example = source[1]
  assert example["id"] == WSJ_NAMES[1] and example["sample_rate"] == RATE
  assert example["mixture"].dtype == np.float32 and example["mixture"].shape == (LENGTH,)
  assert example["sources"].shape == (num_sources, LENGTH)
  folder = tmp_path / "cv"
  np.testing.assert_array_equal(example["mixture"], _read16(folder / "mix" / f"{WSJ_NAMES[1]}.wav"))
  np.testing.assert_array_equal(
    example["sources"][-1], _read16(folder / f"s{num_sources}" / f"{WSJ_NAMES[1]}.wav")
  )
  assert source.lengths == [LENGTH, LENGTH] and source.num_skipped == 0
  for c in range(num_sources):
    np.testing.assert_array_equal(source.read_source(1, c), example["sources"][c])


def test_wsj0_mix_wrong_number_of_sources(tmp_path):
  _wsj0_mix(tmp_path, 3)
  with pytest.raises(data.DatasetError, match="wrong number of sources.*has 3.*2 were asked"):
    data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE, num_sources=2)


def test_wsj0_mix_unknown_split_lists_the_splits(tmp_path):
  _wsj0_mix(tmp_path, splits=("tr", "tt"))
  with pytest.raises(data.DatasetError, match="no split 'cv'.*tr, tt"):
    data.open_dataset("wsj0-mix", tmp_path, "cv", sample_rate=RATE)


def test_missing_root(tmp_path):
  for kind in ("wsj0-mix", "wham", "voicebank-demand"):
    with pytest.raises(data.DatasetError, match=f"{tmp_path / 'nowhere'} does not exist"):
      data.open_dataset(
        kind, tmp_path / "nowhere", "tt" if kind != "voicebank-demand" else "test", sample_rate=RATE
      )


def test_wsj0_mix_empty_split(tmp_path):
  for folder in ("mix", "s1", "s2"):
    (tmp_path / "tt" / folder).mkdir(parents=True)
  with pytest.raises(data.DatasetError, match="empty"):
    data.open_dataset("wsj0-mix", tmp_path, "tt", sample_rate=RATE)


def test_missing_source_file_strict_and_skipped(tmp_path):
  _wsj0_mix(tmp_path)
  missing = tmp_path / "tr" / "s2" / f"{WSJ_NAMES[0]}.wav"
  missing.unlink()
  with pytest.raises(data.DatasetError, match=f"{missing}: file does not exist"):
    data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE)
  with pytest.warns(UserWarning, match=r"1 of 2 examples are unusable(.|\n)*skipping these 1"):
    source = data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE, strict=False)
  assert len(source) == 1 and source.num_skipped == 1
  assert source.ids == [WSJ_NAMES[1]] and str(missing) in source.skipped[WSJ_NAMES[0]]


def test_every_example_skipped_is_an_error(tmp_path):
  _wsj0_mix(tmp_path)
  for name in WSJ_NAMES:
    (tmp_path / "tr" / "s1" / f"{name}.wav").unlink()
  with pytest.warns(UserWarning), pytest.raises(data.DatasetError, match="every one of its 2"):
    data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE, strict=False)


def test_unreadable_file(tmp_path):
  _wsj0_mix(tmp_path)
  broken = tmp_path / "tr" / "mix" / f"{WSJ_NAMES[1]}.wav"
  broken.write_bytes(b"not a wav file at all" * 10)
  with pytest.raises(data.DatasetError, match=f"{broken}: unreadable audio file"):
    data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE)
  # Without header validation the problem surfaces when the example is read.
  source = data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE, validate=False)
  assert source.lengths is None
  with pytest.raises(data.AudioError, match=f"{broken}: unreadable"):
    source[1]


def test_one_source_read_alone_at_another_rate_and_broken_after_open(tmp_path):
  # 16001 frames at 16 kHz resample to 8001 samples at 8 kHz; the header rounds to 8000.
  _parallel_folders(tmp_path / "tr", ["mix", "s1", "s2"], WSJ_NAMES[:1], rate=16000, length=16001)
  source = data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE)
  example = source[0]
  for c in (0, 1):
    track = source.read_source(0, c)
    np.testing.assert_array_equal(track, example["sources"][c])
    assert track.shape == (8001,)
    written = _read16(tmp_path / "tr" / f"s{c + 1}" / f"{WSJ_NAMES[0]}.wav")
    np.testing.assert_allclose(track, audio_lib.resample(written, 16000, RATE), atol=1e-6)
  broken = tmp_path / "tr" / "s2" / f"{WSJ_NAMES[0]}.wav"
  broken.write_bytes(b"not a wav file at all" * 10)
  with pytest.raises(data.AudioError, match=f"{broken}: unreadable"):
    source.read_source(0, 1)


def test_truncated_file(tmp_path):
  _wsj0_mix(tmp_path)
  cut = tmp_path / "tr" / "s1" / f"{WSJ_NAMES[0]}.wav"
  cut.write_bytes(cut.read_bytes()[:-300])  # 150 of 400 int16 samples gone.
  with pytest.raises(data.DatasetError, match=f"{cut}: truncated.*declares 400 frames.*holds 250"):
    data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE)


def test_non_finite_samples_at_open_and_at_read(tmp_path):
  _wsj0_mix(tmp_path)
  poisoned = str(tmp_path / "tr" / "s1" / f"{WSJ_NAMES[1]}.wav")
  signal = _signal(8)
  signal[[3, 9]] = [np.nan, -np.inf]
  _write(poisoned, signal, subtype="FLOAT")
  with pytest.raises(data.DatasetError, match=f"{poisoned}: 2 of 400 samples are NaN or infinite"):
    data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE)
  with pytest.warns(UserWarning, match="skipping these 1 examples"):
    source = data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE, strict=False)
  assert source.ids == [WSJ_NAMES[0]] and "NaN" in source.skipped[WSJ_NAMES[1]]
  # A file that turns bad after the split was opened fails by name when it is read.
  source = data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE, validate=False)
  with pytest.raises(data.AudioError, match=f"{poisoned}: 2 of 400 samples"):
    source[1]


def test_implausible_header_rate(tmp_path):
  _wsj0_mix(tmp_path)
  odd = str(tmp_path / "cv" / "mix" / f"{WSJ_NAMES[0]}.wav")
  _write(odd, _signal(9), rate=1)
  with pytest.raises(data.DatasetError, match=f"{odd}: the header gives a sample rate of 1 Hz"):
    data.open_dataset("wsj0-mix", tmp_path, "cv", sample_rate=RATE)


def test_length_mismatch_at_open_and_at_read(tmp_path):
  _wsj0_mix(tmp_path)
  short = str(tmp_path / "tr" / "s2" / f"{WSJ_NAMES[0]}.wav")
  _write(short, _signal(7, LENGTH - 10))
  with pytest.raises(data.DatasetError, match=f"{short}: length mismatch, 390 samples against 400"):
    data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE)
  source = data.open_dataset("wsj0-mix", tmp_path, "tr", sample_rate=RATE, validate=False)
  with pytest.raises(data.AudioError, match=f"{short}: length mismatch"):
    source[0]


def test_unknown_kind_lists_the_kinds(tmp_path):
  with pytest.raises(ValueError, match="wsj0-mix, librimix, wham, whamr, voicebank-demand, folder"):
    data.open_dataset("wsj0-2mix", tmp_path, "tr", sample_rate=RATE)


# ---------------------------------------------------------------------------- audio


def test_integer_pcm_is_scaled_to_float(tmp_path):
  values = np.array([0, 1, -1, 16384, -32768, 32767], np.int16)
  path = str(tmp_path / "pcm16.wav")
  soundfile.write(path, values, RATE, subtype="PCM_16")
  np.testing.assert_array_equal(audio_lib.read_audio(path, RATE), values / 32768.0)
  values32 = np.array([0, 1 << 16, -(1 << 31), (1 << 31) - 1], np.int32)
  path32 = str(tmp_path / "pcm32.wav")
  soundfile.write(path32, values32, RATE, subtype="PCM_32")
  np.testing.assert_allclose(audio_lib.read_audio(path32, RATE), values32 / 2.0**31, rtol=1e-7)


def test_resampling_matches_librosa_soxr(tmp_path):
  import librosa  # pylint: disable=g-import-not-at-top

  signal = _signal(3, 1600)
  path = _write(str(tmp_path / "x16k.wav"), signal, rate=16000, subtype="FLOAT")
  expected = librosa.resample(signal, orig_sr=16000, target_sr=RATE, res_type="soxr_hq")
  np.testing.assert_allclose(audio_lib.read_audio(path, RATE), expected, atol=1e-6)


def test_multichannel_is_downmixed_with_one_warning_per_dataset(tmp_path):
  names = ("a", "b")
  for k, name in enumerate(names):
    _write(str(tmp_path / "mix" / f"{name}.wav"), _signal(k, channels=2), subtype="FLOAT")
    _write(str(tmp_path / "s1" / f"{name}.wav"), _signal(10 + k, channels=2), subtype="FLOAT")
  source = data.open_dataset("folder", tmp_path, None, sample_rate=RATE)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    examples = [source[0], source[1]]
  downmix = [w for w in caught if "downmixed to mono" in str(w.message)]
  assert len(downmix) == 1 and str(tmp_path / "mix" / "a.wav") in str(downmix[0].message)
  np.testing.assert_allclose(examples[1]["mixture"], _signal(1, channels=2).mean(axis=1), atol=1e-7)
  with pytest.warns(UserWarning, match="2 channels, downmixed"):
    audio_lib.read_audio(str(tmp_path / "s1" / "b.wav"), RATE)


# ---------------------------------------------------------------------------- LibriMix

LIBRI_IDS = ("1272-128104-0000_2035-147961-0014", "1462-170138-0027_6313-66125-0026")


def _librimix(
  root, num_sources=2, split="dev", mixtures=("clean", "both", "single"), extra_column=False
):
  """`Libri{n}Mix/wav8k/min/{split}/{s1,..,mix_*,noise}` and metadata with absolute paths."""
  folders = [f"s{c + 1}" for c in range(num_sources)] + ["noise"] + [f"mix_{m}" for m in mixtures]
  _parallel_folders(root / split, folders, LIBRI_IDS)
  for mixture in mixtures:
    sources = [f"source_{c + 1}_path" for c in range(num_sources if mixture != "single" else 1)]
    header = (
      ["mixture_ID"]
      + (["original_mixture_ID"] if extra_column else [])
      + ["mixture_path"]
      + sources
      + (["noise_path"] if mixture != "clean" else [])
      + ["length"]
    )
    path = root / "metadata" / f"mixture_{split}_mix_{mixture}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
      writer = csv.writer(file)
      writer.writerow(header)
      for name in LIBRI_IDS:
        row = (
          [name]
          + ([name] if extra_column else [])
          + [str((root / split / f"mix_{mixture}" / f"{name}.wav").absolute())]
        )
        row += [
          str((root / split / f"s{c + 1}" / f"{name}.wav").absolute()) for c in range(len(sources))
        ]
        row += (
          [str((root / split / "noise" / f"{name}.wav").absolute())] if mixture != "clean" else []
        )
        writer.writerow(row + [LENGTH])
  return root


@pytest.mark.parametrize(
  "mixture, folder, num_sources",
  [("clean", "mix_clean", 2), ("both", "mix_both", 2), ("single", "mix_single", 1)],
)
def test_librimix_mixture_kinds(tmp_path, mixture, folder, num_sources):
  root = _librimix(tmp_path / "Libri2Mix" / "wav8k" / "min")
  source = data.open_dataset(
    "librimix", root, "dev", sample_rate=RATE, mixture=mixture, num_sources=num_sources
  )
  example = source[0]
  assert example["id"] == LIBRI_IDS[0] and example["sources"].shape == (num_sources, LENGTH)
  np.testing.assert_array_equal(
    example["mixture"], _read16(root / "dev" / folder / f"{LIBRI_IDS[0]}.wav")
  )
  np.testing.assert_array_equal(
    example["sources"][0], _read16(root / "dev" / "s1" / f"{LIBRI_IDS[0]}.wav")
  )


def test_libri3mix_and_newer_metadata_columns(tmp_path):
  root = _librimix(
    tmp_path, num_sources=3, split="train-360", mixtures=("clean",), extra_column=True
  )
  source = data.open_dataset("librimix", root, "train-360", sample_rate=RATE)
  assert source.num_sources == 3 and source[1]["sources"].shape == (3, LENGTH)


def test_librimix_moved_dataset_is_found_under_root(tmp_path):
  _librimix(tmp_path / "old" / "Libri2Mix", mixtures=("clean",))
  os.rename(tmp_path / "old", tmp_path / "new")
  source = data.open_dataset("librimix", tmp_path / "new" / "Libri2Mix", "dev", sample_rate=RATE)
  assert source.entry(0).mixture == str(
    tmp_path / "new" / "Libri2Mix" / "dev" / "mix_clean" / f"{LIBRI_IDS[0]}.wav"
  )


def test_librimix_missing_file_listed_in_metadata(tmp_path):
  root = _librimix(tmp_path, mixtures=("both",))
  noise = root / "dev" / "noise" / f"{LIBRI_IDS[1]}.wav"
  noise.unlink()
  gone = root / "dev" / "s2" / f"{LIBRI_IDS[1]}.wav"
  gone.unlink()
  # The noise is not a target: only the missing speaker matters.
  with pytest.raises(data.DatasetError, match=f"1 of 2 examples(.|\n)*{gone}: file does not exist"):
    data.open_dataset("librimix", root, "dev", sample_rate=RATE, mixture="both")


def test_librimix_length_column_catches_a_replaced_file(tmp_path):
  root = _librimix(tmp_path, mixtures=("clean",))
  for folder in ("mix_clean", "s1", "s2"):
    _write(str(root / "dev" / folder / f"{LIBRI_IDS[0]}.wav"), _signal(1, 300))
  mixture = root / "dev" / "mix_clean" / f"{LIBRI_IDS[0]}.wav"
  with pytest.raises(
    data.DatasetError, match=f"{mixture}: the metadata gives 400 samples but the file holds 300"
  ):
    data.open_dataset("librimix", root, "dev", sample_rate=RATE)


def test_librimix_missing_metadata_lists_splits_and_empty_csv(tmp_path):
  root = _librimix(tmp_path, split="test", mixtures=("clean",))
  with pytest.raises(
    data.DatasetError, match="mixture_dev_mix_clean.csv.*splits with mix_clean metadata there: test"
  ):
    data.open_dataset("librimix", root, "dev", sample_rate=RATE)
  path = root / "metadata" / "mixture_test_mix_clean.csv"
  path.write_text(path.read_text().splitlines()[0] + "\n")
  with pytest.raises(data.DatasetError, match="empty"):
    data.open_dataset("librimix", root, "test", sample_rate=RATE)


def test_librimix_csv_without_required_column(tmp_path):
  root = _librimix(tmp_path, mixtures=("clean",))
  path = root / "metadata" / "mixture_dev_mix_clean.csv"
  path.write_text(path.read_text().replace("mixture_path", "mix_path"))
  with pytest.raises(data.DatasetError, match=f"{path}: no column mixture_path"):
    data.open_dataset("librimix", root, "dev", sample_rate=RATE)


# ---------------------------------------------------------------------------- WHAM!, WHAMR!

WHAM_FOLDERS = ("mix_clean", "mix_both", "mix_single", "s1", "s2", "noise")
WHAMR_FOLDERS = (
  "mix_clean_anechoic",
  "mix_clean_reverb",
  "mix_both_anechoic",
  "mix_both_reverb",
  "mix_single_anechoic",
  "mix_single_reverb",
  "s1_anechoic",
  "s1_reverb",
  "s2_anechoic",
  "s2_reverb",
  "noise",
)


@pytest.mark.parametrize(
  "task, mixture, targets",
  [
    ("sep_clean", "mix_clean", ("s1", "s2")),
    ("sep_noisy", "mix_both", ("s1", "s2")),
    ("enh_single", "mix_single", ("s1",)),
    ("enh_both", "mix_both", ("mix_clean",)),
  ],
)
def test_wham_tasks(tmp_path, task, mixture, targets):
  signals = _parallel_folders(tmp_path / "tt", WHAM_FOLDERS, WSJ_NAMES)
  source = data.open_dataset("wham", tmp_path, "tt", sample_rate=RATE, task=task)
  example = source[0]
  np.testing.assert_allclose(example["mixture"], signals[mixture, WSJ_NAMES[0]], atol=1 / 32768)
  np.testing.assert_allclose(
    example["sources"], np.stack([signals[t, WSJ_NAMES[0]] for t in targets]), atol=1 / 32768
  )


@pytest.mark.parametrize(
  "task, target, mixture, targets",
  [
    ("sep_clean", "anechoic", "mix_clean_anechoic", ("s1_anechoic", "s2_anechoic")),
    ("sep_reverb", "anechoic", "mix_clean_reverb", ("s1_anechoic", "s2_anechoic")),
    ("sep_noisy_reverb", "anechoic", "mix_both_reverb", ("s1_anechoic", "s2_anechoic")),
    ("sep_reverb", "reverb", "mix_clean_reverb", ("s1_reverb", "s2_reverb")),
    ("enh_single_reverb", "anechoic", "mix_single_reverb", ("s1_anechoic",)),
    ("enh_both", "anechoic", "mix_both_anechoic", ("mix_clean_anechoic",)),
  ],
)
def test_whamr_tasks(tmp_path, task, target, mixture, targets):
  signals = _parallel_folders(tmp_path / "cv", WHAMR_FOLDERS, WSJ_NAMES)
  source = data.open_dataset("whamr", tmp_path, "cv", sample_rate=RATE, task=task, target=target)
  example = source[1]
  np.testing.assert_allclose(example["mixture"], signals[mixture, WSJ_NAMES[1]], atol=1 / 32768)
  np.testing.assert_allclose(
    example["sources"], np.stack([signals[t, WSJ_NAMES[1]] for t in targets]), atol=1 / 32768
  )


def test_wham_missing_folder_and_unknown_task(tmp_path):
  _parallel_folders(tmp_path / "tr", ("mix_clean", "s1", "s2"), WSJ_NAMES)
  with pytest.raises(data.DatasetError, match="no folder mix_both/.*mix_clean, s1, s2"):
    data.open_dataset("wham", tmp_path, "tr", sample_rate=RATE, task="sep_noisy")
  with pytest.raises(ValueError, match="unknown task 'sep_dirty'.*sep_clean"):
    data.open_dataset("wham", tmp_path, "tr", sample_rate=RATE, task="sep_dirty")


# ---------------------------------------------------------------------------- VoiceBank-DEMAND


def _voicebank(root):
  names = {
    "trainset_28spk": ("p226_001", "p226_002", "p239_001", "p287_003", "p256_010"),
    "testset": ("p232_001", "p257_004"),
  }
  for subset, files in names.items():
    _parallel_folders(
      root, (f"clean_{subset}_wav", f"noisy_{subset}_wav"), files, rate=48000, length=2400
    )
  return root


@pytest.mark.parametrize(
  "split, ids",
  [
    ("train", ["p239_001", "p256_010"]),
    ("valid", ["p226_001", "p226_002", "p287_003"]),
    ("test", ["p232_001", "p257_004"]),
  ],
)
def test_voicebank_demand_splits_at_16k(tmp_path, split, ids):
  root = _voicebank(tmp_path)
  source = data.open_dataset("voicebank-demand", root, split, sample_rate=16000, num_sources=1)
  assert source.ids == ids
  example = source[0]
  assert example["mixture"].shape == (800,) and example["sources"].shape == (1, 800)
  subset = "testset" if split == "test" else "trainset_28spk"
  expected = audio_lib.resample(
    _read16(root / f"clean_{subset}_wav" / f"{ids[0]}.wav"), 48000, 16000
  )
  np.testing.assert_allclose(example["sources"][0], expected, atol=1e-6)


def test_voicebank_demand_unknown_split(tmp_path):
  with pytest.raises(data.DatasetError, match="no split 'dev'; splits: train, valid, test"):
    data.open_dataset("voicebank-demand", _voicebank(tmp_path), "dev", sample_rate=16000)


# ---------------------------------------------------------------------------- folder


def test_folder_of_bare_mixtures_recursive(tmp_path):
  _write(str(tmp_path / "meeting" / "a.wav"), _signal(1, 300))
  _write(str(tmp_path / "b.flac"), _signal(2, 500))
  (tmp_path / "notes.txt").write_text("not audio")
  source = data.open_dataset("folder", tmp_path, None, sample_rate=RATE)
  assert source.ids == ["b", os.path.join("meeting", "a")] and source.num_sources == 0
  assert source[1]["mixture"].shape == (300,) and source[1]["sources"].shape == (0, 300)


def test_folder_with_references_and_empty_folder(tmp_path):
  _wsj0_mix(tmp_path, splits=("custom",))
  source = data.open_dataset("folder", tmp_path, "custom", sample_rate=RATE, num_sources=2)
  assert source[0]["sources"].shape == (2, LENGTH)
  (tmp_path / "nothing").mkdir()
  with pytest.raises(data.DatasetError, match="empty"):
    data.open_dataset("folder", tmp_path, "nothing", sample_rate=RATE)
