"""Audio files in and out: reading, resampling, downmixing, and the checks behind them.

Every problem with a file is raised as an `AudioError` whose message starts with the
file's path and says what is wrong with it, so a failing run on a corpus of a hundred
thousand files points at the one to fix.

What is read is checked: a header must promise a plausible sample rate and no more
frames than the file holds, and every sample read must be finite. What is written is
checked too: `write_audio` refuses a NaN, an infinity or a sample beyond full scale,
and writes to a temporary name in the target folder that it then renames, so that an
interrupted write never leaves a partial file under the real name.
"""

import dataclasses
import hashlib
import os
import struct
import warnings

import numpy as np
import soundfile
import soxr

from eesep_jax import errors

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")
# Header rates outside these bounds are taken for a corrupt header: below 4 kHz there
# is no intelligible speech, and no recorder goes beyond 768 kHz.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768_000
# Only these subtypes can store a NaN or an infinity; integer PCM cannot.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_SCAN_BLOCK_FRAMES = 1 << 20
PARTIAL_SUFFIX = ".partial"


class DatasetError(errors.DataError):
  """A dataset cannot be used as asked: missing or broken files, wrong layout, empty split."""


class AudioError(DatasetError):
  """One audio file is missing, unreadable, truncated or inconsistent with its example."""

  def __init__(self, path, problem):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{path}: {problem}")


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  """What a file's header says: `frames` per channel at its own `sample_rate`, and the
  sample format (`subtype`, e.g. `PCM_16`, `FLOAT`)."""
  frames: int
  sample_rate: int
  channels: int
  subtype: str = ""

  @property
  def seconds(self):
    return self.frames / self.sample_rate

  @property
  def can_hold_non_finite(self):
    """Whether the samples are floats, which may be NaN or infinite."""
    return self.subtype in FLOAT_SUBTYPES


def _declared_wav_frames(path):
  """Frames the RIFF header of a WAV file promises, or None when it promises nothing.

  libsndfile quietly reads whatever part of a cut-off WAV file is there, so a
  truncated file is only noticed by comparing the header's data-chunk size with
  the bytes actually on disk.
  """
  with open(path, "rb") as file:
    if file.read(4) != b"RIFF":
      return None
    file.read(4)
    if file.read(4) != b"WAVE":
      return None
    block_align = None
    while True:
      header = file.read(8)
      if len(header) < 8:
        return None
      chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
      if chunk_id == b"fmt ":
        fmt = file.read(size)
        if len(fmt) >= 14:
          block_align = struct.unpack("<H", fmt[12:14])[0]
        if size % 2:
          file.read(1)
      elif chunk_id == b"data":
        # Streaming writers leave 0 or 0xFFFFFFFF when they never came back to fill it in.
        if size in (0, 0xFFFFFFFF) or not block_align:
          return None
        return size // block_align
      else:
        file.seek(size + size % 2, os.SEEK_CUR)


def inspect_audio(path):
  """Reads `path`'s header; raises `AudioError` if it is missing, unreadable or truncated."""
  if not os.path.exists(path):
    raise AudioError(path, "file does not exist")
  try:
    info = soundfile.info(path)
  except (soundfile.LibsndfileError, RuntimeError) as error:
    raise AudioError(path, f"unreadable audio file ({error})") from None
  if info.frames <= 0:
    raise AudioError(path, "holds no audio samples")
  if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
    raise AudioError(path, f"the header gives a sample rate of {info.samplerate} Hz, outside "
                           f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz: a corrupt header?")
  declared = _declared_wav_frames(path)
  if declared is not None and declared > info.frames:
    raise AudioError(path, f"truncated: the header declares {declared} frames but the file "
                           f"holds {info.frames}")
  return AudioInfo(frames=info.frames, sample_rate=info.samplerate, channels=info.channels,
                   subtype=info.subtype)


def non_finite_count(signal):
  """How many samples of `signal` are NaN or infinite."""
  return int(np.size(signal) - np.count_nonzero(np.isfinite(signal)))


def check_finite(path, signal, what="samples"):
  """Raises an `AudioError` naming `path` if `signal` holds a NaN or an infinity."""
  bad = non_finite_count(signal)
  if bad:
    raise AudioError(path, f"{bad} of {np.size(signal)} {what} are NaN or infinite")


def scan_samples(path, info):
  """Reads a float file in blocks and raises an `AudioError` if a sample is not finite;
  returns at once for integer PCM (`info.can_hold_non_finite`), which cannot be."""
  if not info.can_hold_non_finite:
    return
  bad = 0
  with soundfile.SoundFile(path) as file:
    for block in file.blocks(_SCAN_BLOCK_FRAMES, dtype="float32", always_2d=True):
      bad += non_finite_count(block)
  if bad:
    raise AudioError(path, f"{bad} of {info.frames * info.channels} samples are NaN or "
                           "infinite")


def resample(audio, orig_rate, target_rate):
  """`audio` `[time]` from `orig_rate` to `target_rate` Hz with soxr's high quality.

  This is the resampler librosa uses for `res_type="soxr_hq"`; calling it directly
  spares every data worker librosa's numba start-up.
  """
  if orig_rate == target_rate:
    return audio
  return soxr.resample(audio, orig_rate, target_rate, quality="HQ").astype(np.float32)


def load_audio(path, sample_rate):
  """Reads `path` as float32 mono `[time]` at `sample_rate` Hz; also returns its channel count.

  Integer PCM is scaled to [-1, 1) (soundfile divides by 2**(bits-1)), several
  channels are averaged, and a file at another rate is resampled.

  Raises:
    AudioError: naming the file, when it is missing or cannot be decoded.
  """
  try:
    audio, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
    problem = ("file does not exist" if not os.path.exists(path)
               else f"unreadable audio file ({error})")
    raise AudioError(path, problem) from None
  if audio.shape[0] == 0:
    raise AudioError(path, "holds no audio samples")
  check_finite(path, audio)
  channels = audio.shape[1]
  audio = audio.mean(axis=1) if channels > 1 else audio[:, 0]
  return resample(np.ascontiguousarray(audio), file_rate, sample_rate), channels


def read_audio(path, sample_rate):
  """`load_audio`'s audio, with a warning when channels were averaged."""
  audio, channels = load_audio(path, sample_rate)
  if channels > 1:
    warnings.warn(downmix_message(path, channels), stacklevel=2)
  return audio


def downmix_message(path, channels):
  return f"{path}: {channels} channels, downmixed to mono by averaging them"


def partial_path(path):
  """The temporary name `write_audio` writes `path` under before renaming it: in the
  same folder (so the rename is atomic), hidden, not an audio extension (so no folder
  listing takes it for audio), short whatever the length of `path`'s name, and the same
  on every run (so a rerun replaces what an interrupted one left)."""
  directory, name = os.path.split(os.fspath(path))
  digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
  return os.path.join(directory, f".eesep-{digest}{PARTIAL_SUFFIX}")


def write_audio(path, audio, sample_rate, comment=None):
  """Writes float `audio` `[time]` in [-1, 1] to `path` as 16-bit PCM WAV (as WSJ0-2mix
  does), by way of `partial_path(path)` and a rename: an interrupted write leaves no
  partial file at `path`.

  Args:
    path: the file to write; its folder is created if missing.
    audio: `[time]` samples, all finite and within [-1, 1].
    sample_rate: in Hz.
    comment: text stored in the file's INFO chunk (`read_comment` gives it back).

  Raises:
    AudioError: naming `path`, when a sample is NaN, infinite or beyond full scale;
      nothing is written then.
  """
  audio = np.asarray(audio, dtype=np.float64)
  check_finite(path, audio, "samples to write")
  peak = float(np.max(np.abs(audio), initial=0.0))
  if peak > 1.0:
    raise AudioError(path, f"refusing to write samples beyond full scale (peak {peak:.3g})")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  partial = partial_path(path)
  try:
    with soundfile.SoundFile(partial, "w", sample_rate, 1, subtype="PCM_16",
                             format="WAV") as file:
      if comment is not None:
        file.comment = comment
      file.write(audio)
    os.replace(partial, path)
  except BaseException:
    # Whatever stopped the write (a full disk, Ctrl-C), no half-written file stays.
    if os.path.exists(partial):
      os.remove(partial)
    raise


def read_comment(path):
  """The comment `write_audio` stored in `path`; "" when it has none or is unreadable."""
  try:
    with soundfile.SoundFile(path) as file:
      return file.comment or ""
  except (soundfile.LibsndfileError, RuntimeError, OSError):
    return ""


def list_audio_files(directory, recursive=False):
  """Sorted paths of the audio files in `directory` (in its sub-folders too if `recursive`)."""
  paths = []
  for current, folders, files in os.walk(directory):
    folders.sort()
    paths.extend(os.path.join(current, name) for name in sorted(files)
                 if name.lower().endswith(AUDIO_EXTENSIONS))
    if not recursive:
      break
  return paths
