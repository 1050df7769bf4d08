"""Input pipelines on grain: training segments, dynamic mixing, full-length evaluation.

Training (`training_loader`) is one grain `MapDataset` graph over example indices:

    range(N) -> shuffle(seed), a new order each epoch -> repeat
      -> random_map: read, crop (or re-mix) to a fixed length, mask the padding
      -> [shard_index::shard_count] -> batch -> to_iter_dataset -> mp_prefetch

Every random choice is keyed on (seed, position in the global stream), so the
stream is the same whatever the number of workers, each process of a multi-host
job takes its own interleaved share of every epoch (nothing is dropped between
processes), and the iterator's `get_state()` is a small dict that orbax saves
with the training checkpoint (`grain.checkpoint.CheckpointSave`) and
`set_state()` resumes exactly.

Evaluation (`evaluation_batches`) reads whole utterances, never cropped: one per
batch, or several of similar length padded to a common length with a mask.
"""

import functools
import logging
import math
import warnings

from absl import flags
import grain
import numpy as np

from eesep_jax.data import augment
from eesep_jax.data import mixing
from eesep_jax.data import readers


def _segment(segment_length, segment_seconds, sample_rate):
  if (segment_length is None) == (segment_seconds is None):
    raise ValueError("give exactly one of segment_length and segment_seconds")
  if segment_length is None:
    if sample_rate is None:
      raise ValueError("segment_seconds needs a source with a sample_rate")
    segment_length = round(segment_seconds * sample_rate)
  if segment_length <= 0:
    raise ValueError(f"segment length {segment_length} is not positive")
  return int(segment_length)


def _crop_or_pad(signal, segment_length, rng):
  """A random `segment_length` window of `signal` `[..., time]`, zero-padded if shorter.

  Returns the window and how many of its samples are real.
  """
  length = signal.shape[-1]
  if length >= segment_length:
    start = int(rng.integers(length - segment_length + 1))
    return signal[..., start : start + segment_length], segment_length
  padding = [(0, 0)] * (signal.ndim - 1) + [(0, segment_length - length)]
  return np.pad(signal, padding), length


def _training_example(mixture, sources, valid, segment_length):
  mask = (np.arange(segment_length) < valid).astype(np.float32)
  return {
    "mixture": mixture.astype(np.float32),
    "sources": sources.astype(np.float32),
    "mask": mask,
    "length": np.int32(valid),
  }


class CropTransform(grain.transforms.RandomMap):
  """Example index -> a random fixed-length crop of that example, with its mask.

  Output: `mixture` `[time]`, `sources` `[sources, time]`, `mask` `[time]` (1 on
  real samples, 0 on padding) and `length` (real samples).
  """

  def __init__(self, source, segment_length):
    self.source = source
    self.segment_length = segment_length

  def random_map(self, element, rng):
    example = self.source[int(element)]
    # One window for mixture and sources, so they stay aligned.
    stacked = np.concatenate([example["mixture"][None], example["sources"]])
    window, valid = _crop_or_pad(stacked, self.segment_length, rng)
    return _training_example(window[0], window[1:], valid, self.segment_length)


class DynamicMixTransform(grain.transforms.RandomMap):
  """Example index -> a new mixture of sources taken from different examples.

  Source 1 is a random track of the indexed example (so each epoch still visits
  every example); the others are random tracks of other random examples. Each is
  cropped on its own, then set to WSJ0-2mix relative levels around the first
  track's level (`mixing.wsj0_levels_db`: source 1 is 0-5 dB louder than source
  2), and the mixture is their sum. With an `augment.Augmentation`, each track's
  voice is warped and tilted first, and the mixture gets a room, a band and a noise
  floor (`augment.augment_sources`). Output as `CropTransform`'s.
  """

  def __init__(self, source, segment_length, num_sources, augmentation=None):
    if num_sources < 2:
      raise ValueError(
        f"dynamic mixing re-mixes speakers; it needs 2 or more sources, "
        f"the source has {num_sources}"
      )
    if len(source) < num_sources:
      raise ValueError(
        f"dynamic mixing of {num_sources} sources needs as many examples; "
        f"the source has {len(source)}"
      )
    self.source = source
    self.segment_length = segment_length
    self.num_sources = num_sources
    self.augmentation = augmentation

  def _read_track(self, index, track):
    # A `MixtureSource` reads the one file needed; any other source reads the example.
    if hasattr(self.source, "read_source"):
      return self.source.read_source(index, track)
    return self.source[index]["sources"][track]

  def random_map(self, element, rng):
    anchor = int(element)
    others = rng.choice(len(self.source) - 1, size=self.num_sources - 1, replace=False)
    indices = [anchor] + [int(k) + (k >= anchor) for k in others]  # Skips the anchor.
    tracks, valid = [], []
    for index in indices:
      track = self._read_track(index, int(rng.integers(self.num_sources)))
      if self.augmentation:
        track = augment.warp_track(track, rng, self.augmentation)
      track, length = _crop_or_pad(track, self.segment_length, rng)
      tracks.append(track)
      valid.append(length)
    reference = mixing.rms(tracks[0][: valid[0]])
    tracks = mixing.apply_levels(
      tracks, mixing.wsj0_levels_db(rng, self.num_sources), reference_rms=reference
    )
    sources = np.stack(tracks)
    if not self.augmentation:
      return _training_example(sources.sum(axis=0), sources, max(valid), self.segment_length)
    mixture, sources = augment.augment_sources(
      sources, max(valid), rng, self.augmentation, self.source.sample_rate
    )
    return _training_example(mixture, sources, max(valid), self.segment_length)


def _stream_seeds(seed):
  """Independent 32-bit seeds for the shuffle and the per-example randomness."""
  shuffle_seed, map_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(shuffle_seed), int(map_seed)


def training_loader(
  source,
  *,
  batch_size,
  seed,
  segment_length=None,
  segment_seconds=None,
  shard_index=0,
  shard_count=1,
  num_workers=0,
  dynamic_mixing=False,
  augmentation=None,
  num_epochs=None,
  read_threads=4,
  prefetch_batches=4,
):
  """Batches of fixed-length training segments, as a grain `IterDataset`.

  Args:
    source: a random-access source of examples (`open_dataset`'s `MixtureSource`).
    batch_size: examples per batch on this process.
    seed: the stream's seed: shuffles (a new order each epoch), crops, re-mixes.
    segment_length, segment_seconds: the segment, in samples or in seconds (one of).
    shard_index, shard_count: this process's share; process `i` of `n` takes stream
      elements `i, i + n, i + 2n, ...` (e.g. `jax.process_index(), jax.process_count()`).
    num_workers: grain worker processes reading and cropping ahead (0: in-process).
    read_threads: threads reading examples in each process.
    prefetch_batches: batches each process prepares ahead (grain's default of 500
      would hold gigabytes of audio).
    dynamic_mixing: re-mix sources of different examples (`DynamicMixTransform`).
    augmentation: an `augment.Augmentation` that varies each dynamic mixture's voices
      and channel (needs `dynamic_mixing`), or None.
    num_epochs: None repeats forever; else the stream ends after that many epochs
      (less the tail that does not fill one batch on every process, with a warning).

  Returns:
    An iterable whose `iter()` is a grain `DatasetIterator` (`get_state`, `set_state`)
    of numpy batches: `mixture` `[batch, time]`, `sources` `[batch, sources, time]`,
    `mask` `[batch, time]` float32 (1 on real samples) and `length` `[batch]`.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")
  segment = _segment(segment_length, segment_seconds, getattr(source, "sample_rate", None))
  shuffle_seed, map_seed = _stream_seeds(seed)
  if augmentation and not dynamic_mixing:
    raise ValueError("augmentation varies dynamic mixtures; it needs dynamic_mixing=True")
  if dynamic_mixing:
    num_sources = getattr(source, "num_sources", None) or source[0]["sources"].shape[0]
    transform = DynamicMixTransform(source, segment, num_sources, augmentation)
  else:
    transform = CropTransform(source, segment)
  dataset = grain.MapDataset.range(len(source)).shuffle(seed=shuffle_seed).repeat(num_epochs)
  dataset = dataset.random_map(transform, seed=map_seed)
  if num_epochs is not None:
    global_batch = batch_size * shard_count
    usable = len(dataset) // global_batch * global_batch
    if usable < len(dataset):
      warnings.warn(
        f"training_loader: the last {len(dataset) - usable} of {len(dataset)} "
        f"examples ({num_epochs} epochs) do not fill a batch of {batch_size} on "
        f"each of {shard_count} processes and are not used",
        stacklevel=2,
      )
    dataset = dataset[:usable]
  dataset = dataset[shard_index::shard_count].batch(batch_size, drop_remainder=True)
  iterable = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
  )
  if num_workers:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18's workers read absl flags, unparsed outside an absl app (grain#1355).
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch_batches)
    )
  return iterable


def pad_batch(examples, multiple, min_length=0):
  """Stacks full-length `examples` (`mixture`, `sources`, `id`), zero-padded to a common
  length (a multiple of `multiple`, at least `min_length`): `mixture` `[batch, time]`,
  `sources` `[batch, sources, time]`, `mask` `[batch, time]`, `length` `[batch]` and `id`."""
  lengths = [example["mixture"].shape[-1] for example in examples]
  padded = math.ceil(max(*lengths, min_length) / multiple) * multiple

  def pad(signal):
    return np.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, padded - signal.shape[-1])])

  return {
    "mixture": np.stack([pad(e["mixture"]) for e in examples]).astype(np.float32),
    "sources": np.stack([pad(e["sources"]) for e in examples]).astype(np.float32),
    "mask": (np.arange(padded)[None] < np.array(lengths)[:, None]).astype(np.float32),
    "length": np.array(lengths, np.int32),
    "id": np.array([e["id"] for e in examples]),
  }


def evaluation_batches(
  source,
  *,
  batch_size=1,
  pad_multiple=1,
  max_examples=None,
  num_threads=2,
  equal_batches=False,
  shard_index=0,
  shard_count=1,
):
  """Whole utterances for evaluation, never cropped, as a grain `IterDataset`.

  With `batch_size=1` and `pad_multiple=1` every batch is one utterance, unpadded.
  With `batch_size > 1` the utterances are sorted by length (from the headers read at
  open time) and grouped, so each batch is padded only to its longest member;
  `pad_multiple` rounds the padded length up (fewer distinct shapes, fewer jit
  compilations). Padding is zeros and `mask` marks it.

  With `equal_batches` (batches sharded over devices, each process of a multi-host
  job reading its share of one global batch), every group of `batch_size` (a multiple
  of `shard_count`) is filled up to `batch_size` with copies of its last utterance
  (`weight` 0, where the others have 1) and padded to one length for the whole group
  (from the lengths read at open time), and process `shard_index` reads its
  `batch_size / shard_count` rows.

  Args:
    source: a random-access source of examples.
    batch_size: utterances per batch.
    pad_multiple: padded lengths are multiples of this many samples.
    max_examples: evaluate this many utterances, evenly spread over the split.
    num_threads: reading threads.
    equal_batches: fill every batch up to `batch_size`, with `weight`.
    shard_index, shard_count: this process's share of each batch (`equal_batches`).

  Returns:
    Batches with `mixture` `[batch, time]`, `sources` `[batch, sources, time]`,
    `mask` `[batch, time]`, `length` `[batch]`, `id` `[batch]` and, with
    `equal_batches`, `weight` `[batch]`.
  """
  indices = np.arange(len(source))
  if max_examples and max_examples < len(source):
    indices = np.unique(np.linspace(0, len(source) - 1, max_examples).round().astype(int))
  lengths = getattr(source, "lengths", None)
  if batch_size > 1 and lengths is not None:
    indices = indices[np.argsort([lengths[i] for i in indices], kind="stable")]
  groups = [indices[i : i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
  if not equal_batches:
    dataset = grain.MapDataset.source(groups).map(
      lambda group: pad_batch([source[i] for i in group], pad_multiple)
    )
  else:
    if batch_size % shard_count or lengths is None:
      raise ValueError(
        f"a batch of {batch_size} cannot be split into {shard_count} equal "
        "shares (or the source has no lengths)"
      )
    dataset = grain.MapDataset.source(groups).map(
      functools.partial(
        _shard_of_group,
        source,
        batch_size=batch_size,
        pad_multiple=pad_multiple,
        shard_index=shard_index,
        shard_count=shard_count,
      )
    )
  return dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  )


def _shard_of_group(source, group, *, batch_size, pad_multiple, shard_index, shard_count):
  """This process's rows of `group` filled up to `batch_size` (see `evaluation_batches`)."""
  weights = [1.0] * len(group) + [0.0] * (batch_size - len(group))
  group = group + group[-1:] * (batch_size - len(group))
  share = slice(
    shard_index * batch_size // shard_count, (shard_index + 1) * batch_size // shard_count
  )
  # The lengths read at open time can miss a resampled file's by a sample: one more
  # keeps every process's padded length the same.
  longest = max(source.lengths[i] for i in group) + 1
  batch = pad_batch([source[i] for i in group[share]], pad_multiple, min_length=longest)
  batch["weight"] = np.asarray(weights[share], np.float32)
  return batch


# ----------------------------------------------------------------------------------------
# From an experiment config (`config_lib.base_config`): what `train.py` calls.


def open_split(config, split):
  """Opens `split` of the dataset `config.data` describes, at the model's rate.

  Unusable examples raise, or with `config.data.strict` False are skipped with a
  warning (`readers.open_dataset`). Nothing is synthesised here: only training makes
  the demo corpus, when its config asks (`train.train_and_evaluate`), so that reading
  a run's data elsewhere never fills the working directory with a corpus.
  """
  data = config.data
  options = data.options.to_dict() if data.get("options") else {}
  source = readers.open_dataset(
    data.kind,
    data.root,
    split,
    sample_rate=int(config.model.sample_rate),
    num_sources=int(config.model.num_sources),
    strict=data.get("strict", True),
    **options,
  )
  logging.info("opened %s", source)
  return source


def training_source(config):
  """The training split of `config`'s dataset."""
  return open_split(config, config.data.train_split)


def validation_batches(
  config, *, source=None, pad_seconds=0.5, batch_size=1, shard_index=0, shard_count=1
):
  """Full-length validation utterances in batches of `batch_size` of similar length
  (`evaluation_batches`' length buckets, filled up, with `weight`), zero-padded to a
  multiple of `pad_seconds` (with `mask`) so that jit compiles a few shapes, not one
  per length; this process's share of each with `shard_count > 1`.

  At most `config.eval_max_utterances` utterances (0: all), evenly spread, of
  `source` (default: the validation split, opened here).
  """
  if source is None:
    source = open_split(config, config.data.valid_split)
  return evaluation_batches(
    source,
    batch_size=batch_size,
    pad_multiple=max(1, round(pad_seconds * source.sample_rate)),
    max_examples=config.get("eval_max_utterances") or None,
    equal_batches=True,
    shard_index=shard_index,
    shard_count=shard_count,
  )
