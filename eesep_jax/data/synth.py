"""The embedded corpus: eSpeak NG speakers mixed as WSJ0-2mix mixes its utterances.

`synthesize_corpus(out_dir, ...)` writes

    out_dir/{tr,cv,tt}/{mix,s1,...,sC}/<id>.wav              (clean: wsj0-mix layout)
    out_dir/{tr,cv,tt}/{mix_clean,mix_both,mix_single,s1,...,sC,noise}/<id>.wav
                                                             (with noise: WHAM! layout)
    out_dir/metadata/mixture_{tr,cv,tt}_mix_{clean[,both,single]}.csv   (LibriMix style)
    out_dir/speakers.csv, out_dir/manifest.json

so `open_dataset("wsj0-mix" | "wham" | "librimix", out_dir, split, ...)` all read it.

How a mixture is made (WSJ0-2mix's recipe, with synthetic speech):
- its C utterances come from C different speakers of its split; each is a fresh
  sentence from `sentences`, spoken by `espeak`;
- all are cut to the shortest ("min" mode), scaled to RMS levels of +u and -u dB
  with u ~ U(0, 2.5) (`mixing.wsj0_levels_db`: speaker 1 is 0-5 dB louder), and
  everything is scaled so the loudest sample is 0.9, then written as 16-bit PCM;
- with noise, the loudest speaker is U(-6, 3) dB above the noise, as in WHAM!.
Speakers of tr, cv and tt (and the babble talkers) use disjoint sets of eSpeak
voice variants, each speaker with its own accent, pitch, intonation range, rate,
word gap, vocal-tract scale and spectral tilt. Accents are English ones by default;
`accents=espeak.HELDOUT_VOICES` gives speakers of other languages, which no default
corpus trains on: `ensure_heldout_corpus` makes such a test set (`HELDOUT`).

Every random choice is made up front from `seed` (one generator per split, so the
test split does not change with `num_train`), and each utterance is spoken in
isolation (see `espeak`), so the same arguments give byte-identical files.
"""

import concurrent.futures
import csv
import dataclasses
import itertools
import json
import multiprocessing
import os
import shutil

import numpy as np
import tqdm

from eesep_jax.data import audio as audio_lib
from eesep_jax.data import espeak
from eesep_jax.data import mixing
from eesep_jax.data import neural_tts
from eesep_jax.data import sentences

SPLITS = ("tr", "cv", "tt")
NOISES = ("white", "pink", "babble")
SAMPLE_RATES = (8000, 16000)
# Speakers per split, and how many voice variants of each register each split owns.
SPEAKERS = {"tr": 96, "cv": 8, "tt": 8}
_VARIANTS_PER_SPLIT = {"cv": (3, 5), "tt": (3, 5), "babble": (2, 3)}  # (high, low)
BABBLE_SPEAKERS = 5
BABBLE_TALKERS = 4  # Simultaneous talkers in one babble noise.
NOISE_SNR_DB = (-6.0, 3.0)  # Louder speaker over noise, as WHAM! draws it.
WORDS = (5, 12)  # Words per sentence: about 2 to 4 s of speech.
MANIFEST = "manifest.json"
_IN_PROGRESS = ".incomplete"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Utterance:
  id: str
  speaker: str
  voice: espeak.Voice | neural_tts.PiperVoice | neural_tts.KokoroVoice
  text: str
  seed: int


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  """Everything needed to render one mixture, drawn in advance."""

  split: str
  id: str
  utterances: tuple[Utterance, ...]
  levels_db: tuple[float, ...]
  noise: str | None
  noise_snr_db: float
  noise_seed: int
  babble: tuple[Utterance, ...]


def _rng(seed, *keys):
  """A generator keyed by `seed` and `keys`, independent of every other key."""
  return np.random.default_rng([seed, *(int.from_bytes(k.encode(), "little") for k in keys)])


def _assign_variants(seed):
  """Disjoint voice variants for tr, cv, tt and the babble talkers.

  Each group's list alternates registers (high, low, high, ...) while both last, so
  that a group's first few speakers already include both.
  """
  rng = _rng(seed, "variants")
  high = [str(v) for v in rng.permutation(espeak.HIGH_VARIANTS)]
  low = [str(v) for v in rng.permutation(espeak.LOW_VARIANTS)]
  assigned = {}
  for group, (num_high, num_low) in (*_VARIANTS_PER_SPLIT.items(), ("tr", (len(high), len(low)))):
    pairs = itertools.zip_longest(high[:num_high], low[:num_low])
    assigned[group] = [v for pair in pairs for v in pair if v is not None]
    high, low = high[num_high:], low[num_low:]
  return assigned


# Ranges speakers' voice settings are drawn from: wide, because a separation network
# trained on few, similar voices does not carry over to voices it has not heard.
PITCH = (20, 80)
PITCH_RANGE = (20, 90)
RATE_WPM = (130, 210)
TRACT_SCALE = (0.9, 1.1)
TILT = (-0.5, 0.5)


def _draw_voice(rng, variant, accents):
  return espeak.Voice(
    accent=str(rng.choice(accents)),
    variant=str(variant),
    pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
    pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
    rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
    word_gap=int(rng.choice([0, 0, 1, 2])),
    tract_scale=round(float(rng.uniform(*TRACT_SCALE)), 4),
    tilt=round(float(rng.uniform(*TILT)), 4),
  )


# Piper speakers' settings (`neural_tts.PiperVoice`): the one voice stretched over
# rates, prosodic noise and vocal-tract scales from a deep man's to a woman's.
PIPER_LENGTH_SCALE = (0.8, 1.25)
PIPER_NOISE_SCALE = (0.3, 0.9)
PIPER_NOISE_W = (0.4, 1.0)
PIPER_TRACT_SCALE = (0.85, 1.3)


def draw_piper_voice(rng):
  """A `neural_tts.PiperVoice` with settings drawn from the ranges above."""
  return neural_tts.PiperVoice(
    length_scale=round(float(rng.uniform(*PIPER_LENGTH_SCALE)), 4),
    noise_scale=round(float(rng.uniform(*PIPER_NOISE_SCALE)), 4),
    noise_w=round(float(rng.uniform(*PIPER_NOISE_W)), 4),
    tract_scale=round(float(rng.uniform(*PIPER_TRACT_SCALE)), 4),
    tilt=round(float(rng.uniform(*TILT)), 4),
  )


# Kokoro speakers' settings (`neural_tts.KokoroVoice`): blends of one to three of its
# voices, at their own rate, vocal-tract scale and tilt.
KOKORO_VOICES_PER_BLEND = (1, 4)  # [low, high)
KOKORO_SPEED = (0.85, 1.2)
KOKORO_TRACT_SCALE = (0.88, 1.15)


def draw_kokoro_voice(rng):
  """A `neural_tts.KokoroVoice` with settings drawn from the ranges above."""
  return neural_tts.KokoroVoice(
    blend=neural_tts.kokoro_blend(rng, KOKORO_VOICES_PER_BLEND),
    speed=round(float(rng.uniform(*KOKORO_SPEED)), 4),
    tract_scale=round(float(rng.uniform(*KOKORO_TRACT_SCALE)), 4),
    tilt=round(float(rng.uniform(*TILT)), 4),
  )


def draw_speakers(seed, accents=espeak.ENGLISH_VOICES, piper_speakers=0, kokoro_speakers=0):
  """`{group: {speaker_id: voice}}` for tr, cv, tt and babble; variants never shared.

  Each eSpeak speaker's accent is drawn from `accents`. `piper_speakers` and
  `kokoro_speakers` more training speakers (`trp00`, ...; `trk00`, ...) are Piper and
  Kokoro voices (`neural_tts`); the other splits stay eSpeak's, so the test split
  does not depend on them.
  """
  variants = _assign_variants(seed)
  counts = dict(SPEAKERS, babble=BABBLE_SPEAKERS)
  speakers = {}
  for group, count in counts.items():
    rng = _rng(seed, "speakers", group)
    pool = variants[group]
    prefix = "bb" if group == "babble" else group
    speakers[group] = {
      f"{prefix}{k:02d}": _draw_voice(rng, pool[k % len(pool)], accents) for k in range(count)
    }
  rng = _rng(seed, "speakers", "piper")
  speakers["tr"].update({f"trp{k:02d}": draw_piper_voice(rng) for k in range(piper_speakers)})
  rng = _rng(seed, "speakers", "kokoro")
  speakers["tr"].update({f"trk{k:02d}": draw_kokoro_voice(rng) for k in range(kokoro_speakers)})
  return speakers


def speak(utterance, sample_rate):
  """The utterance spoken by its engine (eSpeak, Piper or Kokoro), silence trimmed."""
  engine = espeak if isinstance(utterance.voice, espeak.Voice) else neural_tts
  return engine.speak(utterance.text, utterance.voice, utterance.seed, sample_rate)


def _plan_split(split, num_mixtures, *, num_sources, noise, seed, speakers):
  """The `MixtureSpec`s of one split, drawn from its own generator."""
  rng = _rng(seed, "mixtures", split)
  names = sorted(speakers[split])
  babble_names = sorted(speakers["babble"])
  counts = dict.fromkeys(names + babble_names, 0)

  def utterance(name, voices):
    counts[name] += 1
    return Utterance(
      id=f"{name}u{counts[name]:04d}",
      speaker=name,
      voice=voices[name],
      text=sentences.sentence_with_length(rng, *WORDS),
      seed=int(rng.integers(2**31)),
    )

  specs = []
  for _ in range(num_mixtures):
    chosen = rng.choice(len(names), size=num_sources, replace=False)
    utterances = tuple(utterance(names[k], speakers[split]) for k in chosen)
    levels = tuple(round(float(x), 4) for x in mixing.wsj0_levels_db(rng, num_sources))
    snr = round(float(rng.uniform(*NOISE_SNR_DB)), 4)
    noise_seed = int(rng.integers(2**31))
    babble = ()
    if noise == "babble":
      talkers = rng.choice(len(babble_names), size=BABBLE_TALKERS, replace=False)
      babble = tuple(utterance(babble_names[k], speakers["babble"]) for k in talkers)
    mixture_id = "_".join(f"{u.id}_{level:.4f}" for u, level in zip(utterances, levels))
    specs.append(
      MixtureSpec(
        split=split,
        id=mixture_id,
        utterances=utterances,
        levels_db=levels,
        noise=noise,
        noise_snr_db=snr,
        noise_seed=noise_seed,
        babble=babble,
      )
    )
  return specs


def _noise(kind, length, rng, babble, sample_rate):
  if kind == "white":
    return rng.standard_normal(length)
  if kind == "pink":
    spectrum = rng.standard_normal(length // 2 + 1) + 1j * rng.standard_normal(length // 2 + 1)
    frequencies = np.fft.rfftfreq(length)
    spectrum[1:] /= np.sqrt(frequencies[1:])  # Power falling as 1/f.
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n=length)
  # Babble: several talkers, each looped from a random offset and at equal level.
  talkers = []
  for utterance in babble:
    speech = speak(utterance, sample_rate)
    looped = np.resize(np.roll(speech, -int(rng.integers(len(speech)))), length)
    talkers.append(looped / max(mixing.rms(looped), 1e-12))
  return np.sum(talkers, axis=0)


def _folders(num_sources, noise):
  sources = [f"s{c + 1}" for c in range(num_sources)]
  mixtures = ["mix"] if noise is None else ["mix_clean", "mix_both", "mix_single"]
  return mixtures, sources


def _render(spec, out_dir, sample_rate):
  """Speaks, mixes and writes one mixture; returns `{folder: path}` and its length."""
  sources = [speak(u, sample_rate) for u in spec.utterances]
  length = min(len(s) for s in sources)
  sources = mixing.apply_levels([s[:length] for s in sources], spec.levels_db)
  signals = {f"s{c + 1}": s for c, s in enumerate(sources)}
  clean = np.sum(sources, axis=0)
  if spec.noise is None:
    signals["mix"] = clean
  else:
    noise = _noise(
      spec.noise, length, np.random.default_rng(spec.noise_seed), spec.babble, sample_rate
    )
    loudest = max(mixing.rms(s) for s in sources)
    noise *= loudest / max(mixing.rms(noise), 1e-12) * 10.0 ** (-spec.noise_snr_db / 20.0)
    signals.update(
      noise=noise, mix_clean=clean, mix_both=clean + noise, mix_single=sources[0] + noise
    )
  gain = mixing.peak_scale(list(signals.values()))
  paths = {}
  for folder, signal in signals.items():
    paths[folder] = os.path.join(out_dir, spec.split, folder, f"{spec.id}.wav")
    audio_lib.write_audio(paths[folder], signal * gain, sample_rate)
  return paths, length


def _metadata_rows(spec, paths, length, num_sources):
  """LibriMix `mixture_*` rows: {mixture kind: row}."""
  sources = [paths[f"s{c + 1}"] for c in range(num_sources)]
  if "mix" in paths:
    return {"clean": [spec.id, paths["mix"], *sources, length]}
  return {
    "clean": [spec.id, paths["mix_clean"], *sources, length],
    "both": [spec.id, paths["mix_both"], *sources, paths["noise"], length],
    "single": [spec.id, paths["mix_single"], sources[0], paths["noise"], length],
  }


def _metadata_header(kind, num_sources):
  sources = [f"source_{c + 1}_path" for c in range(num_sources)]
  return {
    "clean": ["mixture_ID", "mixture_path", *sources, "length"],
    "both": ["mixture_ID", "mixture_path", *sources, "noise_path", "length"],
    "single": ["mixture_ID", "mixture_path", "source_1_path", "noise_path", "length"],
  }[kind]


def _write_csv(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as file:
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


_ENGINE_NAMES = {
  espeak.Voice: "espeak",
  neural_tts.PiperVoice: "piper",
  neural_tts.KokoroVoice: "kokoro",
}


def write_speakers(path, speakers):
  """`speakers.csv`: each speaker's group, engine and voice settings (a column per
  setting any engine has; blank where the speaker's engine has none)."""
  columns = list(
    dict.fromkeys(
      field.name
      for voices in speakers.values()
      for voice in voices.values()
      for field in dataclasses.fields(voice)
    )
  )
  rows = []
  for group, voices in speakers.items():
    for name, voice in voices.items():
      settings = dataclasses.asdict(voice)
      rows.append(
        [name, group, _ENGINE_NAMES[type(voice)], *(settings.get(column, "") for column in columns)]
      )
  _write_csv(path, ["speaker", "group", "engine", *columns], rows)


def _check_arguments(sample_rate, num_sources, noise, sizes, num_workers):
  if sample_rate not in SAMPLE_RATES:
    raise ValueError(f"sample_rate={sample_rate}; the corpus is made at {SAMPLE_RATES} Hz")
  if not 1 <= num_sources <= min(SPEAKERS.values()):
    raise ValueError(f"num_sources={num_sources}; expected 1 to {min(SPEAKERS.values())}")
  if noise not in (None, *NOISES):
    raise ValueError(f"noise={noise!r}; expected None or one of {NOISES}")
  if any(size < 0 for size in sizes.values()) or not any(sizes.values()):
    raise ValueError(f"mixture counts {sizes}: need non-negative counts, not all zero")
  if num_workers is not None and num_workers < 1:
    raise ValueError(f"num_workers={num_workers}; expected at least 1")


def synthesize_corpus(
  out_dir,
  *,
  sample_rate=8000,
  num_sources=2,
  num_train=400,
  num_valid=50,
  num_test=50,
  noise=None,
  seed=0,
  accents=espeak.ENGLISH_VOICES,
  piper_speakers=0,
  kokoro_speakers=0,
  num_workers=None,
  progress=True,
):
  """Synthesises a speech separation corpus into `out_dir` (see the module docstring).

  Args:
    out_dir: a folder that does not exist yet or is empty.
    sample_rate: 8000 or 16000 Hz.
    num_sources: speakers per mixture (2 or 3 as in WSJ0-2mix / WSJ0-3mix).
    num_train, num_valid, num_test: mixtures in tr, cv and tt.
    noise: None (clean, wsj0-mix layout) or "white", "pink", "babble" (WHAM! layout).
    seed: everything is drawn from it; same arguments, same bytes.
    accents: the eSpeak voices speakers' accents are drawn from (default: English).
    piper_speakers, kokoro_speakers: training speakers who are Piper or Kokoro
      voices, beside the eSpeak ones (`draw_speakers`); their utterances are cached
      (`neural_tts.cache_dir`). A corpus with Kokoro speakers is checked on the
      `piper` check set, not on Kokoro's.
    num_workers: synthesis processes (default: the CPU count, at most 8).
    progress: show a progress bar.

  Returns:
    The manifest (also written to `out_dir/manifest.json`): the arguments, the
    layout, and per split the number of mixtures, their speakers and total seconds.
  """
  sizes = {"tr": num_train, "cv": num_valid, "tt": num_test}
  _check_arguments(sample_rate, num_sources, noise, sizes, num_workers)
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    interrupted = os.path.exists(os.path.join(out_dir, _IN_PROGRESS))
    raise FileExistsError(
      f"{out_dir} holds a corpus an interrupted run left half-written; remove it"
      if interrupted
      else f"{out_dir} is not empty; synthesise into a new folder"
    )
  os.makedirs(out_dir, exist_ok=True)
  marker = os.path.join(out_dir, _IN_PROGRESS)
  open(marker, "w", encoding="utf-8").close()

  accents = tuple(accents)
  speakers = draw_speakers(seed, accents, piper_speakers, kokoro_speakers)
  specs = [
    spec
    for split in SPLITS
    for spec in _plan_split(
      split, sizes[split], num_sources=num_sources, noise=noise, seed=seed, speakers=speakers
    )
  ]
  num_workers = num_workers or min(8, os.cpu_count() or 1)
  # Spawned workers: eSpeak is initialised (and forked from) in processes that hold
  # no threads, even when the caller has started JAX's.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
    rendered = pool.map(
      _render, specs, itertools.repeat(out_dir), itertools.repeat(sample_rate), chunksize=4
    )
    results = list(
      tqdm.tqdm(
        rendered, total=len(specs), desc="synthesising corpus", unit="mixture", disable=not progress
      )
    )

  kinds = ["clean"] if noise is None else ["clean", "both", "single"]
  rows = {(split, kind): [] for split in SPLITS for kind in kinds}
  seconds = dict.fromkeys(SPLITS, 0.0)
  for spec, (paths, length) in zip(specs, results):
    for kind, row in _metadata_rows(spec, paths, length, num_sources).items():
      rows[spec.split, kind].append(row)
    seconds[spec.split] += length / sample_rate
  for (split, kind), split_rows in rows.items():
    if split_rows:
      _write_csv(
        os.path.join(out_dir, "metadata", f"mixture_{split}_mix_{kind}.csv"),
        _metadata_header(kind, num_sources),
        split_rows,
      )
  write_speakers(os.path.join(out_dir, "speakers.csv"), speakers)

  manifest = {
    "format_version": FORMAT_VERSION,
    "arguments": {
      "sample_rate": sample_rate,
      "num_sources": num_sources,
      "num_train": num_train,
      "num_valid": num_valid,
      "num_test": num_test,
      "noise": noise,
      "seed": seed,
      "accents": list(accents),
      "piper_speakers": piper_speakers,
      # Recorded only when used, so that corpora made before it existed still match
      # the arguments `ensure_demo_corpus` asks for.
      **({"kokoro_speakers": kokoro_speakers} if kokoro_speakers else {}),
    },
    "layout": "wsj0-mix" if noise is None else "wham",
    "splits": {
      split: {
        "mixtures": sizes[split],
        "seconds": round(seconds[split], 3),
        "speakers": sorted(
          {u.speaker for spec in specs if spec.split == split for u in spec.utterances}
        ),
      }
      for split in SPLITS
    },
  }
  with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as file:
    json.dump(manifest, file, indent=2, sort_keys=True)
    file.write("\n")
  os.remove(marker)
  return manifest


# Evaluation sets large enough to tell stopping policies apart: a share of 300 has a 95%
# interval about ±5 points wide.
DEMO_SIZES = {"num_train": 2000, "num_valid": 300, "num_test": 300}
# The demo corpus's Piper speakers, beside its 96 eSpeak ones in the training split.
DEMO_PIPER_SPEAKERS = 8


# The held-out test set: speakers of other languages (`espeak.HELDOUT_VOICES`) with the
# test split's voice variants, none of which a training split of the same seed uses.
# The seed is the demo's, so it holds the demo test split's sentences and speaker
# pairs, spoken in other languages' voices: a controlled shift of the voices alone.
HELDOUT = {
  "num_train": 0,
  "num_valid": 0,
  "num_test": 300,
  "seed": 0,
  "accents": espeak.HELDOUT_VOICES,
  "piper_speakers": 0,
}


def ensure_demo_corpus(
  root,
  *,
  sample_rate=8000,
  num_sources=2,
  seed=0,
  accents=espeak.ENGLISH_VOICES,
  piper_speakers=DEMO_PIPER_SPEAKERS,
  progress=True,
  **sizes,
):
  """Returns the manifest of the corpus at `root`, synthesising it first if missing.

  The default is the demo corpus: `DEMO_SIZES` clean 2-speaker mixtures of about
  2-4 s at 8 kHz. A corpus left half-written by an interrupted run is removed and
  made again; a folder that holds something else, or a corpus made with other
  arguments, raises instead of being touched.
  """
  root = os.path.abspath(os.fspath(root))
  arguments = {
    "sample_rate": sample_rate,
    "num_sources": num_sources,
    "seed": seed,
    "noise": None,
    "accents": list(accents),
    "piper_speakers": piper_speakers,
    **DEMO_SIZES,
    **sizes,
  }
  manifest_path = os.path.join(root, MANIFEST)
  if os.path.exists(os.path.join(root, _IN_PROGRESS)):
    shutil.rmtree(root)
  if os.path.isfile(manifest_path):
    with open(manifest_path, encoding="utf-8") as file:
      manifest = json.load(file)
    if manifest["arguments"] != arguments:
      raise FileExistsError(
        f"{root} holds a corpus made with {manifest['arguments']}, "
        f"not {arguments}; remove it or choose another folder"
      )
    return manifest
  return synthesize_corpus(root, progress=progress, **arguments)


def ensure_heldout_corpus(root, *, sample_rate=8000, num_sources=2, progress=True):
  """`ensure_demo_corpus` of the `HELDOUT` test set (its `tt` split only)."""
  return ensure_demo_corpus(
    root, sample_rate=sample_rate, num_sources=num_sources, progress=progress, **HELDOUT
  )
