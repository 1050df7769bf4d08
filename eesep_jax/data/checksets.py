"""Check sets: two-speaker mixtures of speech a training corpus has not heard.

    data.ensure_check_set("kokoro", "data/checks/kokoro")    # or "kokoro-blend", "piper", "recorded"

Each set is written as a wsj0-mix test split, `root/tt/{mix,s1,s2}/<id>.wav`, with
`speakers.csv` and `manifest.json`, so `open_dataset("wsj0-mix", root, "tt")`,
`eesep evaluate --data-root root` and the demo read it as they read the corpus.

- `kokoro`: the **unseen-engine check**. Kokoro-82M (`neural_tts`), a neural
  synthesiser of another family than both training engines (eSpeak NG's formant
  synthesis and Piper's VITS), in its five voices, each as two speakers (its own
  rate, vocal-tract scale and tilt). Kept out of every tuning decision but this one:
  it is the stated check of each corpus lever.
- `kokoro-blend`: the **final-report set**, looked at once, for the final model. The
  same engine speaking through blends of two or three of its voices (new timbres),
  other sentences. No engine is left for it that is neither trained on nor `kokoro`'s;
  what it adds is voices and sentences no decision saw.
- `piper`: the unseen-engine check of a corpus that trains on Kokoro instead of
  Piper (`synth`'s `kokoro_speakers`): Piper's one voice as ten speakers
  (`synth.draw_piper_voice`). For the demo, which trains on Piper, it is a check of
  a training engine's unheard speakers.
- `recorded`: a small **recorded-speech check**. The one recording of a person that
  a pip-installed package ships (CMU ARCTIC `arctic_a0007`, in `pysptk`), mixed with
  itself played 0.8-0.9 or 1.12-1.25 times as fast (a shorter or longer vocal tract:
  another apparent speaker, saying the same words at another time). A few seconds
  of one voice: a sanity check of real recording conditions, never training data.

Utterances are drawn up front from the set's seed; each neural utterance is cached
(`neural_tts.cache_dir`), and a mixture pairs two utterances of different speakers
from the set's pool, the longer cut at a random offset to the shorter's length, at
WSJ0-2mix relative levels (`mixing.wsj0_levels_db`). Kokoro speaks at about 0.6 CPU
seconds per second of speech, so the pool is smaller than the mixtures: each
utterance is heard in several mixtures, each time against another speaker.
"""

import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import shutil

import numpy as np
import tqdm

from eesep_jax.data import audio as audio_lib
from eesep_jax.data import mixing
from eesep_jax.data import neural_tts
from eesep_jax.data import sentences
from eesep_jax.data import synth

MANIFEST = "manifest.json"
_IN_PROGRESS = ".incomplete"
FORMAT_VERSION = 1
WORDS = (4, 9)  # Words per sentence: about 1.5 to 3 s of speech.
RECORDED_WARPS = ((0.8, 0.9), (1.12, 1.25))  # Playback speed of the recording's partner.


@dataclasses.dataclass(frozen=True)
class CheckSet:
  """A check set's recipe.

  Attributes:
    num_mixtures: mixtures written (the demo's default; `ensure_check_set` takes others).
    num_utterances: utterances in the pool the mixtures pair (synthesised ones).
    seed: every draw is made from it.
    purpose: what the set is for, in a few words (written to the manifest).
  """

  num_mixtures: int
  num_utterances: int
  seed: int
  purpose: str


CHECK_SETS = {
  "kokoro": CheckSet(300, 100, 101, "unseen-engine check (Kokoro-82M, its 5 voices)"),
  "kokoro-blend": CheckSet(300, 80, 202, "final report only (Kokoro-82M, blends of its voices)"),
  "piper": CheckSet(300, 100, 404, "unseen-engine check of a Kokoro-trained corpus (Piper)"),
  "recorded": CheckSet(24, 1, 303, "recorded speech (CMU ARCTIC arctic_a0007, pysptk)"),
}


def _pool_speakers(name, rng):
  """A pool's ten speakers: `kokoro`'s pure voices twice each, `kokoro-blend`'s blends
  of 2-3 voices, or `piper`'s settings of its one voice."""
  if name == "piper":
    return {f"pp{k:02d}": synth.draw_piper_voice(rng) for k in range(10)}
  speakers = {}
  for k in range(10):
    if name == "kokoro":
      blend = ((neural_tts.KOKORO_VOICES[k % 5], 1.0),)
    else:
      blend = neural_tts.kokoro_blend(rng, (2, 4))
    speakers[f"kk{k:02d}"] = neural_tts.KokoroVoice(
      blend=blend,
      speed=round(float(rng.uniform(0.85, 1.15)), 4),
      tract_scale=round(float(rng.uniform(0.94, 1.06)), 4),
      tilt=round(float(rng.uniform(-0.3, 0.3)), 4),
    )
  return speakers


def _speak(utterance, sample_rate):
  return synth.speak(utterance, sample_rate)


def _speech_pool(name, recipe, sample_rate, num_workers, progress):
  """`(speakers, utterances, audio)`: the pool's utterances, spoken (cached)."""
  rng = synth._rng(recipe.seed, "check", name)  # pylint: disable=protected-access
  speakers = _pool_speakers(name, rng)
  names = sorted(speakers)
  utterances = []
  for k in range(recipe.num_utterances):
    speaker = names[k % len(names)]
    utterances.append(
      synth.Utterance(
        id=f"{speaker}u{k // len(names) + 1:04d}",
        speaker=speaker,
        voice=speakers[speaker],
        text=sentences.sentence_with_length(rng, *WORDS),
        seed=0,
      )
    )
  context = multiprocessing.get_context("spawn")  # eSpeak forks from a thread-free process.
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
    spoken = pool.map(_speak, utterances, itertools.repeat(sample_rate))
    audio = list(
      tqdm.tqdm(
        spoken,
        total=len(utterances),
        unit="utterance",
        desc=f"speaking the {name} check set",
        disable=not progress,
      )
    )
  return speakers, utterances, audio


def recorded_speech(sample_rate):
  """The recording `recorded` is made of: float32 `[time]` at `sample_rate`."""
  from pysptk import util  # pylint: disable=g-import-not-at-top  (only this set needs it)

  audio, _ = audio_lib.load_audio(util.example_audio_file(), sample_rate)
  return audio


def _recorded_pairs(recipe, sample_rate):
  """`[(id, source 1, source 2)]`: the recording against a warped copy of itself."""
  from eesep_jax.data import augment  # pylint: disable=g-import-not-at-top

  rng = synth._rng(recipe.seed, "check", "recorded")  # pylint: disable=protected-access
  speech = recorded_speech(sample_rate)
  pairs = []
  for k in range(recipe.num_mixtures):
    factor = float(rng.uniform(*RECORDED_WARPS[k % 2]))
    partner = augment.warp(speech, factor)
    length = min(len(speech), len(partner))
    # The partner starts at a random point of its own, so the two say different words.
    offset = int(rng.integers(len(partner) - length + 1)) if len(partner) > length else 0
    shift = int(rng.integers(length // 4, 3 * length // 4))
    partner = np.roll(partner[offset : offset + length], shift)
    pairs.append((f"arctic_a0007_x{factor:.3f}_r{shift}", speech[:length], partner))
  return pairs


def _pool_pairs(recipe, utterances, audio, rng):
  """`[(id, source 1, source 2)]`: pool utterances of different speakers, paired."""
  pairs = []
  for _ in range(recipe.num_mixtures):
    while True:
      first, second = (int(k) for k in rng.choice(len(utterances), size=2, replace=False))
      if utterances[first].speaker != utterances[second].speaker:
        break
    a, b = audio[first], audio[second]
    length = min(len(a), len(b))
    a = a[(start := int(rng.integers(len(a) - length + 1))) : start + length]
    b = b[(start := int(rng.integers(len(b) - length + 1))) : start + length]
    pairs.append((f"{utterances[first].id}_{utterances[second].id}", a, b))
  return pairs


def make_check_set(
  name,
  out_dir,
  *,
  sample_rate=8000,
  num_mixtures=None,
  num_utterances=None,
  num_workers=None,
  progress=True,
):
  """Writes the check set `name` (one of `CHECK_SETS`) into the new folder `out_dir`.

  `num_mixtures` and `num_utterances` (the pool) default to the recipe's.

  Returns the manifest (also `out_dir/manifest.json`): the arguments, the set's
  purpose, its mixtures' count and seconds, and its speakers.
  """
  if name not in CHECK_SETS:
    raise ValueError(f"check set {name!r}: expected one of {tuple(CHECK_SETS)}")
  if sample_rate not in synth.SAMPLE_RATES:
    raise ValueError(f"sample_rate={sample_rate}; check sets are made at {synth.SAMPLE_RATES} Hz")
  recipe = CHECK_SETS[name]
  if num_mixtures is not None:
    if num_mixtures < 1:
      raise ValueError(f"num_mixtures={num_mixtures}: need at least one")
    recipe = dataclasses.replace(recipe, num_mixtures=num_mixtures)
  if num_utterances is not None:
    if num_utterances < 2:
      raise ValueError(f"num_utterances={num_utterances}: a pool needs two speakers")
    recipe = dataclasses.replace(recipe, num_utterances=num_utterances)
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} is not empty; make the check set in a new folder")
  os.makedirs(out_dir, exist_ok=True)
  marker = os.path.join(out_dir, _IN_PROGRESS)
  open(marker, "w", encoding="utf-8").close()

  speakers = {}
  if name == "recorded":
    pairs = _recorded_pairs(recipe, sample_rate)
  else:
    speakers, utterances, audio = _speech_pool(
      name, recipe, sample_rate, num_workers or min(8, os.cpu_count() or 1), progress
    )
    rng = synth._rng(recipe.seed, "check", name, "mixtures")  # pylint: disable=protected-access
    pairs = _pool_pairs(recipe, utterances, audio, rng)
    speakers = {u.speaker: u.voice for u in utterances}  # Those the pool holds.
  rng = synth._rng(recipe.seed, "check", name, "levels")  # pylint: disable=protected-access
  rows, seconds = [], 0.0
  for mixture_id, *sources in pairs:
    levels = mixing.wsj0_levels_db(rng, 2)
    sources = mixing.apply_levels(sources, levels)
    signals = {"s1": sources[0], "s2": sources[1], "mix": sources[0] + sources[1]}
    gain = mixing.peak_scale(list(signals.values()))
    mixture_id = f"{mixture_id}_{levels[0]:.4f}_{levels[1]:.4f}"
    paths = {}
    for folder, signal in signals.items():
      paths[folder] = os.path.join(out_dir, "tt", folder, f"{mixture_id}.wav")
      audio_lib.write_audio(paths[folder], signal * gain, sample_rate)
    rows.append([mixture_id, paths["mix"], paths["s1"], paths["s2"], len(sources[0])])
    seconds += len(sources[0]) / sample_rate
  if speakers:
    synth.write_speakers(
      os.path.join(out_dir, "speakers.csv"), {"tt": dict(sorted(speakers.items()))}
    )
  manifest = {
    "format_version": FORMAT_VERSION,
    "check_set": name,
    "purpose": recipe.purpose,
    "arguments": {"name": name, "sample_rate": sample_rate, "num_mixtures": recipe.num_mixtures},
    "layout": "wsj0-mix",
    "splits": {
      "tt": {"mixtures": len(rows), "seconds": round(seconds, 3), "speakers": sorted(speakers)}
    },
  }
  with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as file:
    json.dump(manifest, file, indent=2, sort_keys=True)
    file.write("\n")
  os.remove(marker)
  return manifest


def ensure_check_set(name, root, *, sample_rate=8000, num_mixtures=None, progress=True):
  """The manifest of check set `name` at `root`, made first if missing.

  A set left half-written by an interrupted run is made again; a folder holding
  something else, or the set made with other arguments, raises instead.
  """
  if name not in CHECK_SETS:
    raise ValueError(f"check set {name!r}: expected one of {tuple(CHECK_SETS)}")
  root = os.path.abspath(os.fspath(root))
  arguments = {
    "name": name,
    "sample_rate": sample_rate,
    "num_mixtures": num_mixtures or CHECK_SETS[name].num_mixtures,
  }
  if os.path.exists(os.path.join(root, _IN_PROGRESS)):
    shutil.rmtree(root)
  manifest_path = os.path.join(root, MANIFEST)
  if os.path.isfile(manifest_path):
    with open(manifest_path, encoding="utf-8") as file:
      manifest = json.load(file)
    if manifest.get("arguments") != arguments:
      raise FileExistsError(
        f"{root} holds {manifest.get('arguments')}, not {arguments}; "
        "remove it or choose another folder"
      )
    return manifest
  return make_check_set(
    name, root, sample_rate=sample_rate, num_mixtures=num_mixtures, progress=progress
  )
