"""Readers for the standard separation and enhancement corpora, in their own layouts.

`open_dataset(kind, root, split, sample_rate=...)` returns a `MixtureSource`: a
random-access sequence (`len`, `[]`, what grain's `MapDataset.source` takes) of

    {"mixture": [time] float32, "sources": [sources, time] float32,
     "sample_rate": int, "id": str}

and `read_source(index, source_index)` reads one source alone (dynamic mixing).

Each kind only turns its layout into a list of `Entry`s (file paths); the checks,
the reading and the error messages are shared. At open time every listed file is
checked (and, with `validate=True`, its header read, and a float file's samples
scanned for NaN and infinities; integer PCM cannot hold them, so a corpus of 16-bit
files costs only its headers): missing, unreadable, truncated and non-finite files and
length mismatches either raise one `DatasetError` listing them (`strict=True`) or are
skipped with a warning that counts them (`strict=False`, the skipped ids and reasons
are kept in `source.skipped`). Nothing is dropped without a word. Reading an example
checks its samples again, so a file changed since it was opened still fails by name.
"""

import concurrent.futures
import csv
import dataclasses
import os
import re
import warnings

import numpy as np

from eesep_jax.data import audio as audio_lib
from eesep_jax.data.audio import AudioError
from eesep_jax.data.audio import DatasetError

_MAX_LISTED_PROBLEMS = 10
_HEADER_THREADS = 16  # Header reads wait on storage (a mounted bucket), not on the CPU.


@dataclasses.dataclass(frozen=True)
class Entry:
  """One example's files. `length`: the mixture's samples as the metadata states, if it does."""

  id: str
  mixture: str
  sources: tuple[str, ...]
  length: int | None = None


def _entry_problem(entry, validate):
  """`(problem, None)` if `entry` is unusable, else `(None, (frames, rate) or None)`.

  `(frames, rate)` are the mixture's, from its header, when `validate` read it.
  """
  paths = (entry.mixture, *entry.sources)
  missing = [path for path in paths if not os.path.exists(path)]
  if missing:
    return "; ".join(f"{path}: file does not exist" for path in missing), None
  if not validate:
    return None, None
  try:
    infos = [audio_lib.inspect_audio(path) for path in paths]
    for path, info in zip(paths, infos):
      audio_lib.scan_samples(path, info)
  except AudioError as error:
    return str(error), None
  mixture = infos[0]
  if entry.length is not None and mixture.frames != entry.length:
    return (
      f"{entry.mixture}: the metadata gives {entry.length} samples but the file "
      f"holds {mixture.frames} (truncated or replaced?)"
    ), None
  for path, info in zip(entry.sources, infos[1:]):
    if info.sample_rate != mixture.sample_rate:
      return (
        f"{path}: sample rate {info.sample_rate} Hz differs from its mixture's "
        f"{mixture.sample_rate} Hz ({entry.mixture})"
      ), None
    if info.frames != mixture.frames:
      return (
        f"{path}: length mismatch, {info.frames} samples against {mixture.frames} "
        f"in its mixture {entry.mixture}"
      ), None
  return None, (mixture.frames, mixture.sample_rate)


def _summarise(name, problems, total):
  lines = [f"{name}: {len(problems)} of {total} examples are unusable:"]
  lines += [f"  {problem}" for problem in problems[:_MAX_LISTED_PROBLEMS]]
  if len(problems) > _MAX_LISTED_PROBLEMS:
    lines.append(f"  ... and {len(problems) - _MAX_LISTED_PROBLEMS} more")
  return "\n".join(lines)


class MixtureSource:
  """Random-access examples of one split of one dataset.

  Attributes:
    name: kind, split and root, for messages.
    sample_rate: rate every example is returned at.
    num_sources: sources per example (0 for a folder of bare mixtures).
    skipped: `{id: problem}` of the examples left out (only with `strict=False`).
    lengths: per example, its length in samples at `sample_rate` (None without
      `validate`, where no header was read).
  """

  def __init__(self, entries, *, name, sample_rate, num_sources, strict=True, validate=True):
    self.name = name
    self.sample_rate = int(sample_rate)
    self.num_sources = num_sources
    if not entries:
      raise DatasetError(f"{name}: the split is empty (no mixtures found)")
    with concurrent.futures.ThreadPoolExecutor(_HEADER_THREADS) as pool:
      checks = list(pool.map(lambda entry: _entry_problem(entry, validate), entries))
    problems = [(entry, problem) for entry, (problem, _) in zip(entries, checks) if problem]
    self.skipped = {entry.id: problem for entry, problem in problems}
    if problems:
      summary = _summarise(name, [problem for _, problem in problems], len(entries))
      if strict:
        raise DatasetError(
          summary + "\n(strict=False skips these examples instead: "
          "--config.data.strict=False for `eesep train`)"
        )
      warnings.warn(
        f"{summary}\nskipping these {len(problems)} examples (strict=False)", stacklevel=3
      )
    kept = [(entry, info) for entry, (problem, info) in zip(entries, checks) if not problem]
    if not kept:
      raise DatasetError(f"{name}: every one of its {len(entries)} examples was skipped")
    self._entries = [entry for entry, _ in kept]
    self.lengths = (
      [round(frames * self.sample_rate / rate) for _, (frames, rate) in kept] if validate else None
    )
    self._downmix_warned = False

  def __len__(self):
    return len(self._entries)

  @property
  def num_skipped(self):
    """How many examples were left out (always 0 with `strict=True`)."""
    return len(self.skipped)

  @property
  def ids(self):
    """The examples' ids, in index order."""
    return [entry.id for entry in self._entries]

  def entry(self, index):
    """The `Entry` (file paths) of example `index`."""
    return self._entries[index]

  def _read(self, path):
    audio, channels = audio_lib.load_audio(path, self.sample_rate)
    if channels > 1 and not self._downmix_warned:
      # Once per dataset (and process): a multichannel corpus would print one per file.
      self._downmix_warned = True
      warnings.warn(
        f"{audio_lib.downmix_message(path, channels)} (further multichannel "
        f"files of {self.name} are downmixed without a warning)",
        stacklevel=3,
      )
    return audio

  def __getitem__(self, index):
    entry = self._entries[index]
    mixture = self._read(entry.mixture)
    sources = [self._read(path) for path in entry.sources]
    for path, source in zip(entry.sources, sources):
      if source.shape[0] != mixture.shape[0]:
        raise AudioError(
          path,
          f"length mismatch, {source.shape[0]} samples against "
          f"{mixture.shape[0]} in its mixture {entry.mixture}",
        )
    sources = np.stack(sources) if sources else np.zeros((0, mixture.shape[0]), np.float32)
    return {"mixture": mixture, "sources": sources, "sample_rate": self.sample_rate, "id": entry.id}

  def read_source(self, index, source_index):
    """Source `source_index` of example `index` alone, `[time]` float32: one file read
    where `self[index]` reads them all (what dynamic mixing needs of each example).

    The file is checked as `self[index]` checks it (readable, finite), but not against
    its mixture's length: dynamic mixing crops every track on its own, and `lengths`
    (rounded from the headers) can miss the resampler's length by a sample.
    """
    return self._read(self._entries[index].sources[source_index])

  def __repr__(self):
    return (
      f"MixtureSource({self.name}, {len(self)} examples, {self.num_sources} sources, "
      f"{self.sample_rate} Hz)"
    )


# ----------------------------------------------------------------------------------------
# Layouts. Each returns (entries, number of sources).


def _subfolders(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(
    name for name in os.listdir(directory) if os.path.isdir(os.path.join(directory, name))
  )


def _split_dir(root, split, kind):
  if not os.path.isdir(root):
    raise DatasetError(f"{kind}: the root folder {root} does not exist")
  directory = os.path.join(root, split)
  if not os.path.isdir(directory):
    raise DatasetError(
      f"{kind}: no split {split!r} in {root} "
      f"(folders there: {', '.join(_subfolders(root)) or 'none'})"
    )
  return directory


def _parallel_entries(directory, mixture_folder, source_folders, kind):
  """Entries for `directory/{mixture_folder, *source_folders}/NAME.wav` with matching names."""
  present = _subfolders(directory)
  for folder in (mixture_folder, *source_folders):
    if folder not in present:
      raise DatasetError(
        f"{kind}: no folder {folder}/ in {directory} "
        f"(folders there: {', '.join(present) or 'none'})"
      )
  entries = []
  for path in audio_lib.list_audio_files(os.path.join(directory, mixture_folder)):
    name = os.path.basename(path)
    entries.append(
      Entry(
        id=os.path.splitext(name)[0],
        mixture=path,
        sources=tuple(os.path.join(directory, folder, name) for folder in source_folders),
      )
    )
  return entries


def _numbered_source_folders(directory, kind, suffix=""):
  """`s1{suffix}`, `s2{suffix}`, ... found in `directory`, checked to be contiguous."""
  pattern = re.compile(rf"s(\d+){re.escape(suffix)}$")
  numbers = sorted(int(m.group(1)) for m in map(pattern.match, _subfolders(directory)) if m)
  if numbers != list(range(1, len(numbers) + 1)):
    raise DatasetError(
      f"{kind}: source folders in {directory} are not s1..sN: "
      f"{', '.join(f's{n}{suffix}' for n in numbers) or 'none'}"
    )
  return [f"s{n}{suffix}" for n in numbers]


def read_wsj0_mix(root, split):
  """WSJ0-2mix / WSJ0-3mix: `root/{tr,cv,tt}/{mix,s1,s2[,s3]}/*.wav`.

  `root` is e.g. `wsj0-mix/2speakers/wav8k/min`; the sources are the `s*` folders.
  """
  directory = _split_dir(root, split, "wsj0-mix")
  folders = _numbered_source_folders(directory, "wsj0-mix")
  return _parallel_entries(directory, "mix", folders, "wsj0-mix"), len(folders)


LIBRIMIX_MIXTURES = ("clean", "both", "single")


def _under_root(path, root):
  """LibriMix's absolute `<out>/Libri2Mix/wav8k/min/<split>/<folder>/<file>` under `root`."""
  return os.path.join(root, *os.path.normpath(path).split(os.sep)[-3:])


def _moved(first_path, root):
  """Whether the dataset was moved since its metadata was written (or is mounted
  elsewhere): the paths as written are gone but the same files are under `root`.
  Decided once, on the first row, so a large split costs two lookups, not millions."""
  return not os.path.exists(first_path) and os.path.exists(_under_root(first_path, root))


def read_librimix(root, split, *, mixture="clean"):
  """Libri2Mix / Libri3Mix: `root/metadata/mixture_{split}_mix_{mixture}.csv`.

  `root` is e.g. `Libri2Mix/wav8k/min`; `split` one of `train-360`, `train-100`,
  `dev`, `test` (any split with a metadata file works); `mixture` is `clean`
  (speech only), `both` (speech and noise; targets the speakers) or `single` (one
  speaker and noise; enhancement, one target). Columns used: `mixture_ID`,
  `mixture_path`, `source_{i}_path`, `length`; paths as LibriMix writes them
  (absolute), or relative to `root` after a move.
  """
  if mixture not in LIBRIMIX_MIXTURES:
    raise ValueError(f"librimix: mixture={mixture!r}; expected one of {LIBRIMIX_MIXTURES}")
  metadata = os.path.join(root, "metadata")
  path = os.path.join(metadata, f"mixture_{split}_mix_{mixture}.csv")
  if not os.path.isfile(path):
    pattern = re.compile(rf"mixture_(.+)_mix_{mixture}\.csv$")
    found = (
      sorted(m.group(1) for m in map(pattern.match, os.listdir(metadata)) if m)
      if os.path.isdir(metadata)
      else []
    )
    raise DatasetError(
      f"librimix: no metadata file {path} (splits with mix_{mixture} "
      f"metadata there: {', '.join(found) or 'none'})"
    )
  with open(path, newline="", encoding="utf-8") as file:
    reader = csv.DictReader(file)
    columns = reader.fieldnames or []
    rows = list(reader)
  source_columns = sorted(
    (c for c in columns if re.fullmatch(r"source_\d+_path", c)), key=lambda c: int(c.split("_")[1])
  )
  for required in ("mixture_path", "source_1_path"):
    if required not in columns:
      raise DatasetError(f"{path}: no column {required} (columns: {', '.join(columns)})")
  for line, row in enumerate(rows, start=2):
    for column in ("mixture_path", *source_columns):
      if not row.get(column):
        raise DatasetError(f"{path}, line {line}: no {column}")
  locate = (
    (lambda p: _under_root(p, root))
    if rows and _moved(rows[0]["mixture_path"], root)
    else (lambda p: p)
  )
  entries = []
  for row in rows:
    length = row.get("length")
    entries.append(
      Entry(
        id=row.get("mixture_ID") or os.path.splitext(os.path.basename(row["mixture_path"]))[0],
        mixture=locate(row["mixture_path"]),
        sources=tuple(locate(row[c]) for c in source_columns),
        length=int(float(length)) if length else None,
      )
    )
  return entries, len(source_columns)


# Task -> (mixture folder, target folders); None stands for every speaker folder s1..sN
# (WHAM! has two speakers; the synthetic corpus in this layout may have three).
# Task names follow asteroid's.
WHAM_TASKS = {
  "sep_clean": ("mix_clean", None),
  "sep_noisy": ("mix_both", None),
  "enh_single": ("mix_single", ("s1",)),
  "enh_both": ("mix_both", ("mix_clean",)),
}
# WHAMR!: `{target}` is `anechoic` or `reverb` (the `target` keyword).
WHAMR_TASKS = {
  "sep_clean": ("mix_clean_anechoic", None),
  "sep_noisy": ("mix_both_anechoic", None),
  "sep_reverb": ("mix_clean_reverb", None),
  "sep_reverb_noisy": ("mix_both_reverb", None),
  "enh_single": ("mix_single_anechoic", ("s1_{target}",)),
  "enh_single_reverb": ("mix_single_reverb", ("s1_{target}",)),
  "enh_both": ("mix_both_anechoic", ("mix_clean_{target}",)),
  "enh_both_reverb": ("mix_both_reverb", ("mix_clean_{target}",)),
}


def _task_entries(kind, tasks, root, split, task, suffix=""):
  if task not in tasks:
    raise ValueError(f"{kind}: unknown task {task!r}; tasks: {', '.join(tasks)}")
  mixture_folder, target_folders = tasks[task]
  directory = _split_dir(root, split, kind)
  if target_folders is None:
    target_folders = _numbered_source_folders(directory, kind, suffix)
  target_folders = [folder.format(target=suffix.lstrip("_")) for folder in target_folders]
  return _parallel_entries(directory, mixture_folder, target_folders, kind), len(target_folders)


def read_wham(root, split, *, task="sep_clean"):
  """WHAM!: `root/{tr,cv,tt}/{mix_clean,mix_both,mix_single,s1,s2,noise}/*.wav`.

  `root` is e.g. `wham/wav8k/min`. Tasks: `sep_clean` (mix_clean -> s1, s2),
  `sep_noisy` (mix_both -> s1, s2), `enh_single` (mix_single -> s1) and `enh_both`
  (mix_both -> mix_clean).
  """
  return _task_entries("wham", WHAM_TASKS, root, split, task)


def read_whamr(root, split, *, task="sep_clean", target="anechoic"):
  """WHAMR!: `root/{tr,cv,tt}/{mix_{clean,both,single}_{anechoic,reverb},s1_anechoic,...}`.

  `root` is e.g. `whamr/wav8k/min`. Tasks: `sep_clean`, `sep_noisy`, `sep_reverb`,
  `sep_reverb_noisy` (alias `sep_noisy_reverb`), `enh_single`, `enh_single_reverb`,
  `enh_both`, `enh_both_reverb`. Targets are the anechoic sources (`s1_anechoic`,
  as in the WHAMR! paper: separation plus dereverberation); `target="reverb"` uses
  the reverberant ones (`s1_reverb`) instead.
  """
  if target not in ("anechoic", "reverb"):
    raise ValueError(f"whamr: target={target!r}; expected 'anechoic' or 'reverb'")
  task = "sep_reverb_noisy" if task == "sep_noisy_reverb" else task
  return _task_entries("whamr", WHAMR_TASKS, root, split, task, suffix=f"_{target}")


VOICEBANK_VALIDATION_SPEAKERS = ("p226", "p287")


def read_voicebank_demand(
  root, split, *, trainset="28spk", validation_speakers=VOICEBANK_VALIDATION_SPEAKERS
):
  """VoiceBank-DEMAND (Valentini): `root/{clean,noisy}_{trainset_28spk,testset}_wav/*.wav`.

  Splits: `train` (the trainset without `validation_speakers`), `valid` (those
  speakers: p226 and p287, as common recipes hold out), `test` (the testset).
  `trainset="56spk"` reads `*_trainset_56spk_wav`. One target: the clean speech.
  """
  folder_set = {"train": f"trainset_{trainset}", "valid": f"trainset_{trainset}", "test": "testset"}
  if split not in folder_set:
    raise DatasetError(f"voicebank-demand: no split {split!r}; splits: train, valid, test")
  if not os.path.isdir(root):
    raise DatasetError(f"voicebank-demand: the root folder {root} does not exist")
  noisy = f"noisy_{folder_set[split]}_wav"
  clean = f"clean_{folder_set[split]}_wav"
  entries = _parallel_entries(root, noisy, (clean,), "voicebank-demand")
  if split != "test":
    held_out = set(validation_speakers)
    want_held_out = split == "valid"
    # Valentini's files are named SPEAKER_UTTERANCE.wav, e.g. p226_001.wav.
    entries = [entry for entry in entries if (entry.id.split("_")[0] in held_out) == want_held_out]
  return entries, 1


def read_folder(root, split=None):
  """Any folder of audio: `root/split` (or `root` when `split` is None or "").

  If the folder has a `mix/` sub-folder, its files are the mixtures and `s1/`, `s2/`,
  ... hold the references under the same names (custom data). Otherwise every audio
  file in it and below is a mixture without references (inference), with sources
  of shape `[0, time]` and the path relative to the folder as its id.
  """
  directory = _split_dir(root, split, "folder") if split else root
  if not os.path.isdir(directory):
    raise DatasetError(f"folder: {directory} does not exist")
  if os.path.isdir(os.path.join(directory, "mix")):
    folders = _numbered_source_folders(directory, "folder")
    return _parallel_entries(directory, "mix", folders, "folder"), len(folders)
  entries = [
    Entry(id=os.path.splitext(os.path.relpath(path, directory))[0], mixture=path, sources=())
    for path in audio_lib.list_audio_files(directory, recursive=True)
  ]
  return entries, 0


READERS = {
  "wsj0-mix": read_wsj0_mix,
  "librimix": read_librimix,
  "wham": read_wham,
  "whamr": read_whamr,
  "voicebank-demand": read_voicebank_demand,
  "folder": read_folder,
}


def open_dataset(
  kind, root, split, *, sample_rate, num_sources=None, strict=True, validate=True, **options
):
  """Opens one split of a dataset in its standard layout.

  Args:
    kind: one of `READERS`: `wsj0-mix`, `librimix`, `wham`, `whamr`,
      `voicebank-demand`, `folder`.
    root: the dataset's folder (see each `read_*` function for what it holds).
    split: e.g. `tr`/`cv`/`tt` (wsj0-mix, WHAM!, WHAMR!), `train-360`/`dev`/`test`
      (LibriMix), `train`/`valid`/`test` (VoiceBank-DEMAND).
    sample_rate: rate to return audio at; files at another rate are resampled.
    num_sources: if given, the number of targets the dataset must have.
    strict: raise on unusable examples (True) or skip them with a warning and
      record them in `skipped` (False).
    validate: read every file's header at open time (catches truncated files and
      length mismatches before training starts).
    **options: the kind's own keywords (`mixture=` for librimix, `task=` for
      wham/whamr, `target=` for whamr, `trainset=` for voicebank-demand).

  Returns:
    A `MixtureSource`.

  Raises:
    DatasetError: naming the files and the problem.
  """
  if kind not in READERS:
    raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(READERS)}")
  root = os.fspath(root)
  entries, found = READERS[kind](root, split, **options)
  name = f"{kind} {split!r} at {root}"
  if num_sources is not None and found != num_sources:
    raise DatasetError(
      f"{name}: wrong number of sources, the dataset has {found} per "
      f"mixture but {num_sources} were asked for"
    )
  return MixtureSource(
    entries, name=name, sample_rate=sample_rate, num_sources=found, strict=strict, validate=validate
  )
