"""Separating audio files: what `eesep separate` runs.

Every input, at any sample rate and with any number of channels, is downmixed to mono
(with a warning) and resampled to the model's rate, separated in overlapping chunks
(`inference.separate_long`), and each source is resampled back and written at the
input's rate and exact length as `OUT/<input stem>_s<k>.wav`.

Outputs are 16-bit PCM WAV, what the separation corpora and most players use. All
sources of a file are scaled by one gain, so their relative levels are kept, and only
ever down, so that no sample exceeds `PEAK` and nothing clips.

A file that cannot be separated (missing, empty, corrupt, not audio, silent) gets a
`FileResult` whose `error` is one line naming it, and the other files go on.
"""

import dataclasses
import os

import numpy as np
import tqdm

from eesep_jax import inference
from eesep_jax.data import audio
from eesep_jax.data import mixing

PEAK = 0.99
# One step of 16-bit audio: a file no louder than that holds nothing to separate.
SILENCE_PEAK = 2.0 ** -15


@dataclasses.dataclass(frozen=True)
class FileResult:
  """What became of one input.

  Attributes:
    path: the input file (or a folder with no audio files in it).
    outputs: the written files, one per source, in source order.
    exits: where each chunk stopped and what it cost; None when `error`.
    gain: the factor the outputs were scaled by so that nothing clips (at most 1).
    error: one line naming the input and what is wrong with it; None on success.
  """
  path: str
  outputs: tuple[str, ...] = ()
  exits: inference.ChunkExits | None = None
  gain: float = 1.0
  error: str | None = None


def expand_inputs(paths):
  """`paths` with each folder replaced by its audio files (sorted, not those in its
  sub-folders); a folder with none is kept, to be reported as an error."""
  expanded = []
  for path in map(str, paths):
    files = audio.list_audio_files(path) if os.path.isdir(path) else []
    expanded.extend(files or [path])
  return expanded


def output_paths(path, out_dir, num_sources):
  """`[OUT/<stem>_s1.wav, ...]`, one per source."""
  stem = os.path.splitext(os.path.basename(path))[0]
  return tuple(os.path.join(out_dir, f"{stem}_s{k}.wav") for k in range(1, num_sources + 1))


def clipping_gain(signals):
  """The one gain, at most 1, that keeps every sample of `signals` within `PEAK`."""
  return min(1.0, mixing.peak_scale(signals, PEAK))


def _read_mixture(path, sample_rate):
  """`(mixture [time] at sample_rate, audio.AudioInfo)` of `path`; warns when it was
  downmixed.

  Raises:
    audio.AudioError: when `path` is missing, unreadable, empty, truncated or silent.
  """
  if os.path.isdir(path):
    raise audio.AudioError(
        path, f"folder holds no audio files ({', '.join(audio.AUDIO_EXTENSIONS)})")
  info = audio.inspect_audio(path)
  mixture = audio.read_audio(path, sample_rate)
  if np.max(np.abs(mixture)) <= SILENCE_PEAK:
    raise audio.AudioError(path, "silent (no sample above one 16-bit step): "
                                 "nothing to separate")
  return mixture, info


def _to_length(signal, length):
  """`signal` `[time]` cut or zero-padded at its end to `length` samples: resampling
  there and back can land a sample off."""
  return np.pad(signal[:length], (0, max(0, length - signal.shape[0])))


def separate_file(path, *, variables, config, out_dir, **separate_long_kwargs):
  """Separates the audio file `path` and writes one WAV per source into `out_dir`.

  Args:
    path: an audio file soundfile can read.
    variables: the model variables.
    config: the model's `models.PressNetConfig`.
    out_dir: where `<stem>_s<k>.wav` go (created if missing).
    **separate_long_kwargs: `inference.separate_long`'s chunking and stopping keywords.

  Returns:
    A `FileResult` without `error`.

  Raises:
    audio.AudioError: naming `path`, when it holds nothing that can be separated.
  """
  mixture, info = _read_mixture(path, config.sample_rate)
  result = inference.separate_long(variables, config, mixture, **separate_long_kwargs)
  sources = [_to_length(audio.resample(source, config.sample_rate, info.sample_rate),
                        info.frames) for source in result.estimates]
  gain = clipping_gain(sources)
  outputs = output_paths(path, out_dir, config.num_sources)
  for output, source in zip(outputs, sources):
    audio.write_audio(output, gain * source, info.sample_rate)
  return FileResult(path=path, outputs=outputs, exits=result.exits, gain=gain)


def separate_files(paths, *, variables, config, out_dir, report=None, progress=False,
                   **separate_long_kwargs):
  """Separates every file in `paths` (folders: their audio files), going on past errors.

  Args:
    paths: audio files and folders of them.
    variables: the model variables.
    config: the model's `models.PressNetConfig`.
    out_dir: where `<stem>_s<k>.wav` go (created if missing).
    report: called with each `FileResult` as soon as its file is done.
    progress: show a progress bar when there are several files.
    **separate_long_kwargs: `inference.separate_long`'s chunking and stopping keywords
      (`chunk_seconds`, `overlap_seconds`, `chunk_batch`, `policy`, `target_snr_db`,
      `confidence`, `exit_index`, `posthoc_scales`, ...).

  Returns:
    One `FileResult` per file, in order.

  Example:
    config, variables = train.restore_params("runs/demo")
    results = separate_files(["mixtures/"], variables=variables, config=config,
                             out_dir="separated", target_snr_db=15.0, confidence=0.9)
    failed = [result.error for result in results if result.error]
  """
  files = expand_inputs(paths)
  results, written_by = [], {}
  for path in tqdm.tqdm(files, unit="file", disable=not progress or len(files) < 2):
    outputs = output_paths(path, out_dir, config.num_sources)
    try:
      if outputs[0] in written_by:
        raise audio.AudioError(path, f"has the same name as {written_by[outputs[0]]}, "
                                     "whose outputs it would overwrite")
      result = separate_file(path, variables=variables, config=config, out_dir=out_dir,
                             **separate_long_kwargs)
      written_by[outputs[0]] = path
    except audio.AudioError as error:
      result = FileResult(path=path, error=str(error).replace("\n", " "))
    results.append(result)
    if report:
      report(result)
  return results
