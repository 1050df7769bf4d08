"""Audio files in and out: reading, resampling, downmixing, and the checks behind them.

Every problem with a file is raised as an `AudioError` whose message starts with the
file's path and says what is wrong with it, so a failing run on a corpus of a hundred
thousand files points at the one to fix.

What is read is checked: a header must promise a plausible sample rate and no more
frames than the file holds, and every sample read must be finite. What is written is
checked too: `write_partial` refuses a NaN, an infinity or a sample beyond full
scale, and writes to a temporary name of its own in the target folder, which `place`
moves to the real name atomically (never over another run's file, unless asked), so
that an interrupted write never leaves a partial file under the real name. Only
regular files are read: a FIFO, a device or a socket is refused by name, unopened.
"""

import dataclasses
import hashlib
import os
import stat
import struct
import tempfile
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


# What a path that is no regular file is, by its `stat` mode: opening one could block
# (a FIFO waits for a writer) or read without end (a device).
_SPECIAL_FILES = (
  (stat.S_ISFIFO, "a FIFO (named pipe)"),
  (stat.S_ISCHR, "a character device"),
  (stat.S_ISBLK, "a block device"),
  (stat.S_ISSOCK, "a socket"),
  (stat.S_ISDIR, "a folder"),
)


def special_file(path):
  """What `path` is when it exists and is no regular file ("a FIFO (named pipe)", "a
  socket", ...), from its `stat` alone, without opening it; None otherwise."""
  try:
    mode = os.stat(path).st_mode
  except (OSError, ValueError):
    return None
  return next((what for test, what in _SPECIAL_FILES if test(mode)), None)


def check_regular(path):
  """Raises an `AudioError` naming `path` when it is a FIFO, device, socket or folder:
  only regular files are read, and this one is not opened."""
  what = special_file(path)
  if what is not None:
    raise AudioError(path, f"{what}, not a regular file: not read")


def inspect_audio(path):
  """Reads `path`'s header; raises `AudioError` if it is missing, no regular file,
  unreadable or truncated."""
  if not os.path.exists(path):
    raise AudioError(path, "file does not exist")
  check_regular(path)
  try:
    info = soundfile.info(path)
  except (soundfile.LibsndfileError, RuntimeError) as error:
    raise AudioError(path, f"unreadable audio file ({error})") from None
  if info.frames <= 0:
    raise AudioError(path, "holds no audio samples")
  if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
    raise AudioError(
      path,
      f"the header gives a sample rate of {info.samplerate} Hz, outside "
      f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz: a corrupt header?",
    )
  declared = _declared_wav_frames(path)
  if declared is not None and declared > info.frames:
    raise AudioError(
      path, f"truncated: the header declares {declared} frames but the file holds {info.frames}"
    )
  return AudioInfo(
    frames=info.frames, sample_rate=info.samplerate, channels=info.channels, subtype=info.subtype
  )


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
    raise AudioError(path, f"{bad} of {info.frames * info.channels} samples are NaN or infinite")


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
    AudioError: naming the file, when it is missing, no regular file, or cannot be
      decoded.
  """
  check_regular(path)
  try:
    audio, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
    problem = (
      "file does not exist" if not os.path.exists(path) else f"unreadable audio file ({error})"
    )
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


def _partial_prefix(path):
  """What the temporary names of `path` start with: in its folder (so that moving one
  into place is atomic), hidden, and short whatever the length of `path`'s name."""
  directory, name = os.path.split(os.fspath(path))
  digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
  return os.path.join(directory, f".eesep-{digest}-")


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # Another user's process: alive.
    return True
  return True


_CLEANED_FOLDERS = set()


def _remove_stale_partials(directory):
  """Removes, once per folder and process, the temporary files that killed processes
  left there (SIGKILL runs no clean-up); those of running processes stay."""
  key = os.path.realpath(directory)
  if key in _CLEANED_FOLDERS:
    return
  for name in os.listdir(directory):
    pid = name.split("-")[2] if name.count("-") >= 3 else ""
    if (
      name.startswith(".eesep-")
      and name.endswith(PARTIAL_SUFFIX)
      and pid.isdigit()
      and (not _alive(int(pid)))
    ):
      try:
        os.remove(os.path.join(directory, name))
      except FileNotFoundError:  # Another run removed it first.
        pass
  _CLEANED_FOLDERS.add(key)


def write_error(error):
  """What an `OSError` or a libsndfile error (a full disk, a vanished folder) says."""
  return getattr(error, "strerror", None) or getattr(error, "error_string", None) or str(error)


def write_partial(path, audio, sample_rate, comment=None, subtype="PCM_16"):
  """Writes float `audio` `[time]` in [-1, 1] as a WAV under a new temporary name next
  to `path`, for `place` to move to `path`; returns that name. The name is this call's
  own (several runs may write the same `path` at once), hidden, and not an audio
  extension, so that no folder listing takes it for audio.

  Args:
    path: the file the audio is meant for; its folder is created if missing.
    audio: `[time]` samples, all finite and within [-1, 1].
    sample_rate: in Hz.
    comment: text stored in the file's INFO chunk (`read_comment` gives it back).
    subtype: `PCM_16` (as WSJ0-2mix), or `FLOAT` for audio too quiet for 16 bits.

  Raises:
    AudioError: naming `path`, when a sample is NaN, infinite or beyond full scale, or
      the file cannot be written (a full disk: whatever the audio library raises);
      nothing is left behind then.
  """
  audio = np.asarray(audio, dtype=np.float64)
  check_finite(path, audio, "samples to write")
  peak = float(np.max(np.abs(audio), initial=0.0))
  if peak > 1.0:
    raise AudioError(path, f"refusing to write samples beyond full scale (peak {peak:.3g})")
  partial = None
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _remove_stale_partials(os.path.dirname(path) or ".")
    handle, partial = tempfile.mkstemp(
      prefix=f"{os.path.basename(_partial_prefix(path))}{os.getpid()}-",
      suffix=PARTIAL_SUFFIX,
      dir=os.path.dirname(path) or ".",
    )
    os.close(handle)
    with soundfile.SoundFile(partial, "w", sample_rate, 1, subtype=subtype, format="WAV") as file:
      if comment is not None:
        file.comment = comment
      file.write(audio)
    return partial
  except BaseException as error:
    # Whatever stopped the write (a full disk, Ctrl-C), no half-written file stays.
    if partial is not None and os.path.exists(partial):
      os.remove(partial)
    if isinstance(error, (OSError, RuntimeError)):  # libsndfile's are RuntimeErrors.
      raise AudioError(path, f"cannot be written ({write_error(error)})") from None
    raise


def place(partial, path, replace=False):
  """Moves the file `partial` (`write_partial`'s) to `path`, atomically.

  Without `replace`, an existing `path` is never replaced, even one that appeared an
  instant ago (another run writing the same name): a hard link made where no file is,
  then `partial` unlinked. Where the file system has no hard links (some network
  mounts), `path` is claimed by an exclusive create first, then replaced.

  Raises:
    FileExistsError: when `path` exists and not `replace`; `partial` is kept.
  """
  if replace:
    os.replace(partial, path)
    return
  try:
    os.link(partial, path)
  except FileExistsError:
    raise
  except OSError:  # No hard links here: claim the name, then rename over the claim.
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    os.replace(partial, path)
    return
  os.remove(partial)


def write_audio(path, audio, sample_rate, comment=None, subtype="PCM_16"):
  """Writes float `audio` `[time]` in [-1, 1] to `path` as a WAV (16-bit PCM as
  WSJ0-2mix, unless `subtype`), replacing what is there, by way of `write_partial` and
  a rename: an interrupted write leaves no partial file at `path`.

  Raises:
    AudioError: naming `path`, when a sample is NaN, infinite or beyond full scale, or
      the file cannot be written; nothing is written then.
  """
  partial = write_partial(path, audio, sample_rate, comment=comment, subtype=subtype)
  try:
    place(partial, path, replace=True)
  except OSError as error:
    if os.path.exists(partial):
      os.remove(partial)
    raise AudioError(path, f"cannot be written ({write_error(error)})") from None


def read_comment(path):
  """The comment `write_partial` stored in `path`; "" when it has none, is unreadable,
  or is no regular file (which is not opened: a FIFO would block)."""
  if special_file(path) is not None:
    return ""
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
    paths.extend(
      os.path.join(current, name)
      for name in sorted(files)
      if name.lower().endswith(AUDIO_EXTENSIONS)
    )
    if not recursive:
      break
  return paths
