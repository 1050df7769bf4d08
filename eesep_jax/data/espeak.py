"""Speech from eSpeak NG, driven through ctypes from the `espeakng-loader` wheel.

The wheel ships `libespeak-ng` and its voice data, so speech can be made on a fresh
machine with pip alone. The library runs in synchronous mode: `espeak_Synth`
returns once the whole text is spoken, handing 16-bit samples at 22050 Hz to a
callback on the way.

eSpeak NG keeps global state between utterances (the glottal phase, pitch flutter,
gain control, the Klatt filters), so the same text spoken twice in one process
does not give the same samples. Each utterance is therefore spoken in a child
forked from a process whose library has been initialised but has spoken nothing:
its output depends on its own text and voice alone, in whatever order and in
whichever worker it is made. This needs `os.fork` (Linux, macOS).
"""

import ctypes
import dataclasses
import os

import espeakng_loader
import numpy as np

from eesep_jax.data import audio as audio_lib

NATIVE_RATE = 22050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes: IPA, as Piper and Kokoro read them.
_EE_OK = 0
# espeak_PARAMETER values (speak_lib.h).
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
  ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

# English voices (accents) and voice variants (`voices/!v`) that sound like people:
# robots, whispers, heavy echoes and joke voices are left out. The variants are
# grouped by voice register (female and child-like / male) so that every split of
# the corpus can get both.
ENGLISH_VOICES = (
  "en-us",
  "en",
  "en-gb-scotland",
  "en-gb-x-rp",
  "en-gb-x-gbclan",
  "en-gb-x-gbcwmd",
  "en-us-nyc",
  "en-029",
)
# Voices of other languages, which the corpus's training split never uses: the
# held-out set (`synth.HELDOUT`) speaks its English sentences with their letter-to-
# sound rules, phonemes and intonation.
HELDOUT_VOICES = ("de", "es", "it", "pl", "nl", "pt", "sv", "cs", "hu", "fi", "ro")
HIGH_VARIANTS = (
  "f1",
  "f2",
  "f3",
  "f4",
  "f5",
  "Andrea",
  "Annie",
  "anika",
  "aunty",
  "belinda",
  "grandma",
  "linda",
  "shelby",
  "steph",
  "steph3",
  "zac",
)
LOW_VARIANTS = (
  "m1",
  "m2",
  "m3",
  "m4",
  "m5",
  "m6",
  "m7",
  "m8",
  "Alex",
  "Andy",
  "Denis",
  "Diogo",
  "Gene",
  "Henrique",
  "Jacky",
  "Lee",
  "Mario",
  "Michael",
  "Mike",
  "Nguyen",
  "Storm",
  "adam",
  "antonio",
  "benjamin",
  "boris",
  "david",
  "ed",
  "edward",
  "grandpa",
  "gustave",
  "iven3",
  "kaukovalta",
  "marcelo",
  "max",
  "michel",
  "miguel",
  "paul",
  "pedro",
  "quincy",
  "rob",
  "robert",
  "travis",
  "victor",
)


@dataclasses.dataclass(frozen=True)
class Voice:
  """One synthetic speaker: an eSpeak voice and variant plus how they are played.

  Attributes:
    accent: an eSpeak voice (language and accent), e.g. one of `ENGLISH_VOICES`.
    variant: a voice variant (formants, breathiness, roughness), one of
      `HIGH_VARIANTS` or `LOW_VARIANTS`.
    pitch: eSpeak base pitch, 0-99 (50 is the variant's own).
    pitch_range: eSpeak intonation range, 0-99 (0 is monotone).
    rate: speaking rate in words per minute.
    word_gap: extra pause between words, in units of 10 ms.
    tract_scale: scales formants, pitch and tempo together (vocal tract length).
    tilt: first-order spectral tilt: > 0 brighter (pressed), < 0 duller (breathy).
  """

  accent: str
  variant: str
  pitch: int
  pitch_range: int
  rate: int
  word_gap: int
  tract_scale: float
  tilt: float


class Engine:
  """The eSpeak NG library of this process, initialised for synchronous synthesis."""

  def __init__(self):
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_TextToPhonemes.argtypes = [
      ctypes.POINTER(ctypes.c_char_p),
      ctypes.c_int,
      ctypes.c_int,
    ]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_Synth.argtypes = [
      ctypes.c_char_p,
      ctypes.c_size_t,
      ctypes.c_uint,
      ctypes.c_int,
      ctypes.c_uint,
      ctypes.c_uint,
      ctypes.c_void_p,
      ctypes.c_void_p,
    ]
    rate = lib.espeak_Initialize(
      _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
    )
    if rate != NATIVE_RATE:
      raise RuntimeError(f"espeak_Initialize returned {rate}, expected {NATIVE_RATE} Hz")
    self._chunks = []
    # Kept on self: ctypes does not hold a reference to a callback it has handed out.
    self._callback = _SYNTH_CALLBACK(self._collect)
    lib.espeak_SetSynthCallback(self._callback)
    self._lib = lib

  def _collect(self, samples, count, events):
    del events
    if count > 0:
      self._chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
    return 0  # 0 = go on.

  def speak(self, text, voice, seed):
    """`text` in `voice` (eSpeak parameters only): int16 `[time]` at 22050 Hz."""
    name = f"{voice.accent}+{voice.variant}".encode()
    if self._lib.espeak_SetVoiceByName(name) != _EE_OK:
      raise ValueError(f"eSpeak NG has no voice {name.decode()}")
    for parameter, value in (
      (_RATE, voice.rate),
      (_PITCH, voice.pitch),
      (_RANGE, voice.pitch_range),
      (_WORDGAP, voice.word_gap),
      (_VOLUME, 100),
    ):
      self._lib.espeak_SetParameter(parameter, int(value), 0)
    self._lib.espeak_ng_SetRandSeed(int(seed))  # Breath and Klatt noise.
    self._chunks = []
    data = text.encode()
    status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
    if status != _EE_OK or self._lib.espeak_Synchronize() != _EE_OK:
      raise RuntimeError(f"eSpeak NG failed (status {status}) on {text!r}")
    return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

  def phonemes(self, text, accent):
    """`text` as eSpeak NG's IPA phonemes in `accent`, one clause after another."""
    if self._lib.espeak_SetVoiceByName(accent.encode()) != _EE_OK:
      raise ValueError(f"eSpeak NG has no voice {accent}")
    remaining = ctypes.c_char_p(text.encode())
    clauses = []
    while remaining.value:  # Each call phonemises one clause and moves the pointer on.
      clauses.append(
        self._lib.espeak_TextToPhonemes(
          ctypes.byref(remaining), _CHARS_UTF8, _PHONEMES_IPA
        ).decode()
      )
    return " ".join(clauses)

  def speak_isolated(self, text, voice, seed):
    """Like `speak`, but in a forked child, so this engine's state stays pristine."""
    samples = run_isolated(lambda: self.speak(text, voice, seed).tobytes())
    if samples is None:
      raise RuntimeError(f"eSpeak NG failed on {text!r} in voice {voice}")
    return np.frombuffer(samples, np.int16)


def run_isolated(produce):
  """`produce()` (bytes) run in a forked child; None if it failed.

  Whatever state `produce` changes (eSpeak's, onnxruntime's random generators) dies
  with the child, so each call sees the state this process had before it.
  """
  read_end, write_end = os.pipe()
  pid = os.fork()
  if pid == 0:  # Child: produce, send the bytes, leave without running any cleanup.
    os.close(read_end)
    code = 0
    try:
      payload = produce()
      with os.fdopen(write_end, "wb") as pipe:
        pipe.write(payload)
    except BaseException:  # pylint: disable=broad-except
      code = 1
    os._exit(code)  # pylint: disable=protected-access
  os.close(write_end)
  with os.fdopen(read_end, "rb") as pipe:
    payload = pipe.read()
  _, status = os.waitpid(pid, 0)
  return payload if os.waitstatus_to_exitcode(status) == 0 else None


_ENGINE = None


def _engine():
  global _ENGINE
  if _ENGINE is None:
    _ENGINE = Engine()
  return _ENGINE


def trim_silence(audio, sample_rate, threshold_db=-40.0, margin_seconds=0.05):
  """`audio` without the leading and trailing stretches quieter than `threshold_db`
  below its loudest 10 ms frame (keeping `margin_seconds` on each side)."""
  frame = max(1, sample_rate // 100)
  count = len(audio) // frame
  if count == 0:
    return audio
  energy = np.mean(np.square(audio[: count * frame].reshape(count, frame)), axis=1)
  active = np.flatnonzero(energy > energy.max() * 10.0 ** (threshold_db / 10.0))
  margin = int(margin_seconds * sample_rate)
  start = max(0, active[0] * frame - margin)
  stop = min(len(audio), (active[-1] + 1) * frame + margin)
  return audio[start:stop]


def phonemes(text, accent="en-us"):
  """`text` in IPA as eSpeak NG reads it in `accent` (the neural engines' front end).

  Phonemised in a forked child, so the synthesiser's state stays pristine.
  """
  payload = run_isolated(lambda: _engine().phonemes(text, accent).encode())
  if payload is None:
    raise RuntimeError(f"eSpeak NG could not phonemise {text!r} in {accent}")
  return payload.decode()


def colour(native, native_rate, tract_scale, tilt, sample_rate):
  """The voice-quality changes a synthesiser has no parameter for, then `sample_rate`.

  `tilt` is a first-order spectral tilt (`y[t] = x[t] - tilt x[t-1]`). Playing the
  samples as if recorded at `native_rate * tract_scale` Hz moves formants and pitch
  up by `tract_scale` (a shorter vocal tract) and speeds speech up by as much.
  """
  native = np.asarray(native, np.float32)
  tilted = native.copy()
  tilted[1:] -= tilt * native[:-1]
  return audio_lib.resample(tilted, native_rate * tract_scale, sample_rate)


def speak(text, voice, seed, sample_rate):
  """`text` spoken by `voice`: float32 `[time]` at `sample_rate`, silence trimmed.

  Deterministic: the same arguments give the same samples in any process and order.
  """
  native = _engine().speak_isolated(text, voice, seed).astype(np.float32) / 32768.0
  audio = colour(native, NATIVE_RATE, voice.tract_scale, voice.tilt, sample_rate)
  return trim_silence(audio, sample_rate)
