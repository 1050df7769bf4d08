"""Audio files in and out: reading, resampling, downmixing, and the checks behind them.

Every problem with a file is raised as an `AudioError` whose message starts with the
file's path and says what is wrong with it, so a failing run on a corpus of a hundred
thousand files points at the one to fix.
"""

import dataclasses
import os
import struct
import warnings

import numpy as np
import soundfile
import soxr

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")


class DatasetError(ValueError):
  """A dataset cannot be used as asked: missing or broken files, wrong layout, empty split."""


class AudioError(DatasetError):
  """One audio file is missing, unreadable, truncated or inconsistent with its example."""

  def __init__(self, path, problem):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{path}: {problem}")


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  """What a file's header says: `frames` per channel at its own `sample_rate`."""
  frames: int
  sample_rate: int
  channels: int


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
  declared = _declared_wav_frames(path)
  if declared is not None and declared > info.frames:
    raise AudioError(path, f"truncated: the header declares {declared} frames but the file "
                           f"holds {info.frames}")
  return AudioInfo(frames=info.frames, sample_rate=info.samplerate, channels=info.channels)


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


def write_audio(path, audio, sample_rate):
  """Writes float `audio` `[time]` in [-1, 1] to `path` as 16-bit PCM WAV (as WSJ0-2mix does)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  soundfile.write(path, np.asarray(audio, dtype=np.float64), sample_rate, subtype="PCM_16",
                  format="WAV")


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
