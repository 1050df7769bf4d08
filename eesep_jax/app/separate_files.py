"""Separating audio files: what `eesep separate` runs.

Every input, at any sample rate and with any number of channels, is downmixed to mono
(with a warning) and resampled to the model's rate, separated in overlapping chunks
(`inference.separate_long`), and each source is resampled back and written at the
input's rate and exact length as `OUT/<input stem>_s<k>.wav`.

Outputs are 16-bit PCM WAV, what the separation corpora and most players use, except
a file's whose sources are so quiet (peak under `QUIET_PEAK`) that 16-bit steps would
drown them: those are 32-bit float WAV, with a warning naming the file. All sources of
a file are scaled by one gain, so their relative levels are kept, and only ever down,
so that no sample exceeds `PEAK` and nothing clips. (The model itself sees every input
at its training level, whatever the file's: `inference.separate`.)

Each file goes through the same steps, one function each:

1. `check_outputs`: what its outputs would replace (see below);
2. `read_input`: read and checked (a regular file, a plausible header, every sample
   finite, not silent, not too short to resample), downmixed and resampled;
3. `inference.separate_long`;
4. `finish_sources`: back to the input's rate and length, checked finite, scaled so
   that nothing clips;
5. `write_outputs`: all of a file's sources or none. Each is written to a temporary
   file of this run's in the output folder (`audio.write_partial`), marked in its WAV
   comment as this input's output; once all are written, each is moved into place
   with an atomic no-replace link (`audio.place`), so that neither a crash, a full
   disk, Ctrl-C nor a concurrent run into the same folder leaves a partial WAV, half
   a source set, or one run's outputs replaced by another's.

What is never overwritten, and what is never an input:

- an existing output is replaced only with `overwrite=True` (`--overwrite`), unless it
  is this input's own output from an earlier run (its mark says so): when all of them
  are there, the file was separated already and is skipped; when only some are, an
  interrupted run left them, and the file is separated again;
- an output that is one of the run's own inputs is never written, even with
  `overwrite`;
- a folder's files that `eesep separate` wrote (marked) are left out of its inputs,
  with a warning, so that a second run into the input folder does not separate the
  first run's outputs; name such a file to separate it;
- a file given twice (`dir/` and `dir/x.wav`) is separated once, with a warning.

Only regular files are inputs: a FIFO, a device or a socket is refused by name
without being opened (a FIFO would block the run for good).

A file that cannot be separated (missing, no regular file, empty, corrupt, not audio,
silent, holding NaN, an output that cannot be written, whatever the audio library
raised) gets a `FileResult` whose `error` is one line
naming it, and the other files go on. The output folder itself is checked before the
first file (`prepare_out_dir`).
"""

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import warnings

import numpy as np
import tqdm

from eesep_jax import errors
from eesep_jax import inference
from eesep_jax.data import audio
from eesep_jax.data import mixing

PEAK = 0.99
# Outputs peaking below this use under 8 of 16 bits: they are written as float.
QUIET_PEAK = 2.0**-7
# One step of 16-bit audio: a file no louder than that holds nothing to separate.
SILENCE_PEAK = 2.0**-15
# Longer inputs are announced before the work: hours of audio take a while.
LONG_INPUT_SECONDS = 3600.0
# What starts the WAV comment of every output (`output_mark`).
MARK = "eesep separate"
_NAME_MAX = 255  # Bytes in a file name, where the file system does not say.


@dataclasses.dataclass(frozen=True)
class FileResult:
  """What became of one input.

  Attributes:
    path: the input file (or a folder with no audio files in it).
    outputs: the written files, one per source, in source order (when `note`, those
      an earlier run wrote).
    exits: where each chunk stopped and what it cost; None when `error` or `note`.
    gain: the factor the outputs were scaled by so that nothing clips (at most 1).
    error: one line naming the input and what is wrong with it; None on success.
    note: why the input was not separated again although nothing is wrong (an earlier
      run did it); None otherwise.
  """

  path: str
  outputs: tuple[str, ...] = ()
  exits: inference.ChunkExits | None = None
  gain: float = 1.0
  error: str | None = None
  note: str | None = None


def is_output(path):
  """Whether `path` is a file `eesep separate` wrote (its WAV comment is its mark); a
  FIFO, device or socket is not opened, and is not."""
  return audio.read_comment(path).startswith(MARK + ":")


def expand_inputs(paths):
  """`paths` with each folder replaced by its audio files (sorted, not those in its
  sub-folders), every file once; a folder with none is kept, to be reported as an
  error.

  A file named twice is kept at its first mention, and a folder's files that
  `eesep separate` wrote (`is_output`) are left out, each with a warning.
  """
  expanded, seen = [], {}
  for path in map(str, paths):
    candidates = [path]
    if os.path.isdir(path):
      files = audio.list_audio_files(path)
      candidates = [file for file in files if not is_output(file)]
      if len(candidates) < len(files):
        warnings.warn(
          f"{path}: left out {len(files) - len(candidates)} files that eesep "
          "separate wrote (name a file to separate it)",
          stacklevel=2,
        )
      if not files:
        candidates = [path]
    for file in candidates:
      key = os.path.realpath(file)
      if key in seen:
        also = "" if file == seen[key] else f" (also as {seen[key]})"
        warnings.warn(f"{file}: given twice{also}: separated once", stacklevel=2)
        continue
      seen[key] = file
      expanded.append(file)
  return expanded


def output_paths(path, out_dir, num_sources):
  """`[OUT/<stem>_s1.wav, ...]`, one per source."""
  stem = os.path.splitext(os.path.basename(path))[0]
  return tuple(os.path.join(out_dir, f"{stem}_s{k}.wav") for k in range(1, num_sources + 1))


def output_mark(path, source, num_sources):
  """The WAV comment of `path`'s output `source` (1-based): it names the input, and an
  identity of the input file (its real path, size and modification time), so that a
  changed input is separated again."""
  status = os.stat(path)
  identity = f"{os.path.realpath(path)}\0{status.st_size}\0{status.st_mtime_ns}"
  digest = hashlib.sha1(identity.encode("utf-8", "surrogateescape")).hexdigest()[:16]
  return f"{MARK}: source {source} of {num_sources} of {os.path.basename(path)} [{digest}]"


def prepare_out_dir(out_dir):
  """Creates `out_dir` if missing and checks that files can be written in it, before
  any work.

  Raises:
    errors.UsageError: naming `out_dir`, when it is under a file, is a file, or
      cannot be written.
  """
  try:
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir):
      pass
  except OSError as error:
    raise errors.UsageError(
      out_dir, f"cannot write the outputs there ({error.strerror or error})"
    ) from None


@contextlib.contextmanager
def report_dir(out_dir):
  """`prepare_out_dir(out_dir)` for a command that writes its report there at the end
  (`evaluate`, `calibrate`): when the work in the block fails or is interrupted, a
  folder it created and that is still empty is removed again, so that a failed run
  leaves nothing behind."""
  created = not os.path.exists(out_dir)
  try:  # From the folder's creation on: a Ctrl-C right after it still removes it.
    prepare_out_dir(out_dir)
    yield
  except BaseException:
    if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
      os.rmdir(out_dir)
    raise


def _name_max(directory):
  try:
    return os.pathconf(directory, "PC_NAME_MAX")
  except (OSError, ValueError):
    return _NAME_MAX


def check_outputs(path, outputs, overwrite=False):
  """Whether `path` is to be separated into `outputs`: False when an earlier run did it
  (every output is there, marked as this input's); True otherwise.

  Raises:
    audio.AudioError: naming `path`, when an output's name is too long for its
      folder, or, without `overwrite`, when an output exists that is not this input's
      own (a user's file).
  """
  for output in outputs:
    directory, name = os.path.split(output)
    size, limit = len(os.fsencode(name)), _name_max(directory or ".")
    if size > limit:
      raise audio.AudioError(
        path,
        f"its output name is {size} bytes long, more than the "
        f"{limit} its folder allows: rename the input",
      )
  if overwrite or not os.path.isfile(path):  # A missing input fails when it is read.
    return True
  ours = 0
  for k, output in enumerate(outputs, start=1):
    if not os.path.exists(output):
      continue
    comment = audio.read_comment(output)
    if comment != output_mark(path, k, len(outputs)):
      whose = (
        "was separated from another input, or from this one before it changed"
        if comment.startswith(MARK + ":")
        else "exists and is not this file's output"
      )
      raise audio.AudioError(path, f"{output} {whose}: --overwrite replaces it")
    ours += 1
  return ours < len(outputs)


def read_input(path, sample_rate):
  """`(mixture [time] at sample_rate, audio.AudioInfo)` of `path`; warns when it was
  downmixed, or is over `LONG_INPUT_SECONDS` long.

  Raises:
    audio.AudioError: when `path` is missing, no regular file (a FIFO, a device: it is
      not opened), unreadable, empty, truncated, too short to leave a sample at
      `sample_rate`, claims an implausible rate, holds a NaN or an infinity, or is
      silent.
  """
  if os.path.isdir(path):
    raise audio.AudioError(
      path, f"folder holds no audio files ({', '.join(audio.AUDIO_EXTENSIONS)})"
    )
  info = audio.inspect_audio(path)
  if info.seconds > LONG_INPUT_SECONDS:
    warnings.warn(
      f"{path}: {info.seconds / 3600:.1f} hours of audio at "
      f"{info.sample_rate} Hz: separating it takes a while",
      stacklevel=2,
    )
  mixture = audio.read_audio(path, sample_rate)
  if not mixture.size:
    raise audio.AudioError(
      path,
      f"{info.frames} samples at {info.sample_rate} Hz are too "
      f"short: none remain at the model's {sample_rate} Hz",
    )
  if np.max(np.abs(mixture)) <= SILENCE_PEAK:
    raise audio.AudioError(path, "silent (no sample above one 16-bit step): nothing to separate")
  return mixture, info


def _to_length(signal, length):
  """`signal` `[time]` cut or zero-padded at its end to `length` samples: resampling
  there and back can land a sample off."""
  return np.pad(signal[:length], (0, max(0, length - signal.shape[0])))


def clipping_gain(signals):
  """The one gain, at most 1, that keeps every sample of `signals` within `PEAK`."""
  return min(1.0, mixing.peak_scale(signals, PEAK))


def finish_sources(path, estimates, sample_rate, info):
  """`(sources [sources, time], gain)`: `estimates` at `sample_rate` brought back to
  `path`'s rate and exact length (`info`), and scaled by `clipping_gain`.

  Raises:
    audio.AudioError: naming `path`, when an estimate holds a NaN or an infinity.
  """
  sources = np.stack(
    [
      _to_length(audio.resample(source, sample_rate, info.sample_rate), info.frames)
      for source in estimates
    ]
  )
  bad = audio.non_finite_count(sources)
  if bad:
    raise audio.AudioError(
      path,
      f"the separated sources hold {bad} NaN or infinite "
      "samples (a damaged checkpoint?): nothing written",
    )
  gain = clipping_gain(sources)
  return gain * sources, gain


def output_subtype(path, sources):
  """The WAV sample format of `path`'s outputs: 16-bit PCM, unless the `sources`
  `[sources, time]` are so quiet (peak under `QUIET_PEAK`) that 16-bit steps would
  drown them, which are written as 32-bit float, with a warning."""
  peak = float(np.max(np.abs(sources), initial=0.0))
  if peak >= QUIET_PEAK:
    return "PCM_16"
  warnings.warn(
    f"{path}: its sources peak at {20 * np.log10(max(peak, 1e-30)):.0f} dBFS, "
    "too quiet for 16-bit steps: written as 32-bit float WAV",
    stacklevel=2,
  )
  return "FLOAT"


def _place_output(path, partial, output, mark, overwrite):
  """Moves `partial` to `output`: over an existing file only with `overwrite`, or when
  it is this input's own output from an earlier run (its `mark`).

  Raises:
    audio.AudioError: naming `path`, when another file took `output` meanwhile (a
      concurrent run writing into the same folder), or it cannot be written.
  """
  try:
    try:
      audio.place(partial, output, replace=overwrite)
    except FileExistsError:
      if audio.read_comment(output) != mark:
        raise audio.AudioError(
          path,
          f"{output} appeared while it was separated (another "
          "run writing into the same folder?): not replaced, "
          "none of its outputs written",
        ) from None
      audio.place(partial, output, replace=True)
  except OSError as error:
    raise audio.AudioError(
      path, f"cannot write {output} ({audio.write_error(error)}): none of its outputs written"
    ) from None


def write_outputs(path, outputs, sources, sample_rate, overwrite=False):
  """Writes `path`'s `sources` `[sources, time]` to its `outputs`, marked
  (`output_mark`), all or none: each is written to a temporary file first
  (`audio.write_partial`), and only when all are written are they moved into place
  (`_place_output`); a failure at any point (a full disk, a file another run put there
  meanwhile, Ctrl-C) removes the temporary files and the outputs already placed.

  Raises:
    audio.AudioError: naming `path` and the output that could not be written.
  """
  subtype = output_subtype(path, sources)
  partials, placed = [], []
  try:
    for k, (output, source) in enumerate(zip(outputs, sources), start=1):
      try:
        partials.append(
          audio.write_partial(
            output, source, sample_rate, comment=output_mark(path, k, len(outputs)), subtype=subtype
          )
        )
      except audio.AudioError as error:
        raise audio.AudioError(
          path, f"{output} {error.problem}: none of its outputs written"
        ) from None
    for k, (output, partial) in enumerate(zip(outputs, partials), start=1):
      _place_output(path, partial, output, output_mark(path, k, len(outputs)), overwrite)
      placed.append(output)
  except BaseException:
    for output in placed:
      os.remove(output)
    raise
  finally:
    for partial in partials:
      if os.path.exists(partial):
        os.remove(partial)


class _ChunkBar:
  """A `separate_long` progress callback: a bar over one file's chunks, gone when done.

  It appears once the first batch of chunks is done and more remain, so that a file
  separated in one batch (most files) draws none.
  """

  def __init__(self, path):
    self._path = path
    self._bar = None

  def __call__(self, done, total):
    if self._bar is None and 0 < done < total:
      self._bar = tqdm.tqdm(
        total=total,
        desc=os.path.basename(self._path),
        unit="chunk",
        leave=False,
        dynamic_ncols=True,
      )
    if self._bar is not None:
      self._bar.update(done - self._bar.n)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def separate_file(
  path, *, variables, config, out_dir, overwrite=False, progress=False, **separate_long_kwargs
):
  """Separates the audio file `path` and writes one WAV per source into `out_dir`.

  Args:
    path: an audio file soundfile can read.
    variables: the model variables.
    config: the model's `models.PressNetConfig`.
    out_dir: where `<stem>_s<k>.wav` go (created if missing).
    overwrite: replace existing outputs (see the module's docstring).
    progress: show a progress bar over the file's chunks.
    **separate_long_kwargs: `inference.separate_long`'s chunking and stopping keywords.

  Returns:
    A `FileResult` without `error` (with `note` when an earlier run separated it).

  Raises:
    audio.AudioError: naming `path`, when it holds nothing that can be separated, or
      its outputs cannot be written.
  """
  outputs = output_paths(path, out_dir, config.num_sources)
  if not check_outputs(path, outputs, overwrite):
    return FileResult(
      path=path,
      outputs=outputs,
      note="separated by an earlier run, outputs kept (--overwrite separates it again)",
    )
  mixture, info = read_input(path, config.sample_rate)
  bar = _ChunkBar(path) if progress else None
  try:
    result = inference.separate_long(
      variables, config, mixture, progress=bar, **separate_long_kwargs
    )
  finally:
    if bar:
      bar.close()
  sources, gain = finish_sources(path, result.estimates, config.sample_rate, info)
  write_outputs(path, outputs, sources, info.sample_rate, overwrite=overwrite)
  return FileResult(path=path, outputs=outputs, exits=result.exits, gain=gain)


def _check_run(path, outputs, inputs, claimed):
  """Refuses outputs that are inputs of this run, or that another input of it writes.

  Raises:
    audio.AudioError: naming `path`.
  """
  for output in outputs:
    key = os.path.realpath(output)
    if key in inputs:
      raise audio.AudioError(
        path, f"its output {output} is one of this run's inputs: choose another --out-dir"
      )
    if key in claimed:
      raise audio.AudioError(
        path, f"has the same name as {claimed[key]}, whose outputs it would overwrite"
      )


def separate_files(
  paths,
  *,
  variables,
  config,
  out_dir,
  report=None,
  progress=False,
  overwrite=False,
  **separate_long_kwargs,
):
  """Separates every file in `paths` (folders: their audio files), going on past errors.

  Args:
    paths: audio files and folders of them.
    variables: the model variables.
    config: the model's `models.PressNetConfig`.
    out_dir: where `<stem>_s<k>.wav` go (created if missing).
    report: called with each `FileResult` as soon as its file is done.
    progress: show a progress bar over the files when there are several, and one over
      each file's chunks.
    overwrite: replace existing outputs (never the run's own inputs).
    **separate_long_kwargs: `inference.separate_long`'s chunking and stopping keywords
      (`chunk_seconds`, `overlap_seconds`, `chunk_batch`, `policy`, `target_snr_db`,
      `confidence`, `exit_index`, `posthoc_scales`, ...).

  Returns:
    One `FileResult` per file, in order.

  Raises:
    errors.UsageError: when nothing can be written in `out_dir` (before any work).

  Example:
    run = runs.load("runs/demo")
    results = separate_files(["mixtures/"], variables=run.variables,
                             config=run.model_config, out_dir="separated",
                             target_snr_db=10.0, confidence=0.95,
                             posthoc_scales=run.posthoc_scales)
    failed = [result.error for result in results if result.error]
  """
  out_dir = str(out_dir)
  prepare_out_dir(out_dir)
  files = expand_inputs(paths)
  inputs = {os.path.realpath(path) for path in files}
  results, claimed = [], {}
  for path in tqdm.tqdm(files, unit="file", disable=not progress or len(files) < 2):
    try:
      outputs = output_paths(path, out_dir, config.num_sources)
      _check_run(path, outputs, inputs, claimed)
      result = separate_file(
        path,
        variables=variables,
        config=config,
        out_dir=out_dir,
        overwrite=overwrite,
        progress=progress,
        **separate_long_kwargs,
      )
      claimed.update((os.path.realpath(output), path) for output in outputs)
    except audio.AudioError as error:
      result = FileResult(path=path, error=str(error).replace("\n", " "))
    results.append(result)
    if report:
      report(result)
  return results
