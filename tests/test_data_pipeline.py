"""Training and evaluation pipelines: crops, masks, epochs, shards, checkpoints, re-mixing."""

import json

import ml_collections
import numpy as np
import pytest
import scipy.stats
import soundfile

from eesep_jax import data
from eesep_jax.data import mixing


class CountingSource:
  """Example k: `mixture[t] = 1000 k + t`, `sources[c] = mixture + 0.25 (c + 1)`.

  Every sample says which example and which position it came from.
  """

  sample_rate = 100
  num_sources = 2

  def __init__(self, lengths):
    self.lengths = list(lengths)

  def __len__(self):
    return len(self.lengths)

  def __getitem__(self, k):
    mixture = (1000 * k + np.arange(self.lengths[k])).astype(np.float32)
    sources = np.stack([mixture + 0.25 * (c + 1) for c in range(self.num_sources)])
    return {
      "mixture": mixture,
      "sources": sources,
      "sample_rate": self.sample_rate,
      "id": f"utt{k}",
    }


def _example_ids(batch):
  return [int(m[0] // 1000) for m in batch["mixture"]]


def _take(loader, count):
  iterator = iter(loader)
  return [next(iterator) for _ in range(count)]


def test_crops_pads_and_masks():
  source = CountingSource([40, 100, 250, 100, 7])
  segment = 100
  loader = data.training_loader(source, batch_size=5, segment_length=segment, seed=3)
  batches = _take(loader, 4)
  starts = []
  for batch in batches:
    assert batch["mixture"].shape == (5, segment) and batch["sources"].shape == (5, 2, segment)
    assert batch["mask"].dtype == np.float32
    for mixture, sources, mask, length in zip(
      batch["mixture"], batch["sources"], batch["mask"], batch["length"]
    ):
      k = int(mixture[0] // 1000)
      valid = min(source.lengths[k], segment)
      assert length == valid and mask.sum() == valid and np.all(mask[:valid] == 1)
      # A contiguous window of example k, the sources aligned with it, zeros after it.
      window = mixture[:valid] - 1000 * k
      assert np.all(np.diff(window) == 1) and 0 <= window[0] <= source.lengths[k] - valid
      np.testing.assert_array_equal(
        sources[:, :valid] - mixture[:valid], [[0.25] * valid, [0.5] * valid]
      )
      assert not np.any(mixture[valid:]) and not np.any(sources[:, valid:])
      if k == 2:
        starts.append(window[0])
  assert len(set(starts)) > 1  # The long example is cropped at different places.


def test_segment_seconds_uses_the_source_rate():
  batch = _take(
    data.training_loader(CountingSource([300] * 4), batch_size=2, segment_seconds=0.5, seed=0), 1
  )[0]
  assert batch["mixture"].shape == (2, 50)
  with pytest.raises(ValueError, match="exactly one"):
    data.training_loader(CountingSource([3]), batch_size=1, seed=0)


def test_each_epoch_is_a_new_permutation_and_seeded():
  source = CountingSource([5] * 12)

  def epochs(seed):
    batches = _take(data.training_loader(source, batch_size=4, segment_length=5, seed=seed), 12)
    ids = [k for batch in batches for k in _example_ids(batch)]
    return [ids[12 * e : 12 * (e + 1)] for e in range(4)]

  first = epochs(seed=0)
  assert all(sorted(epoch) == list(range(12)) for epoch in first)
  assert len({tuple(epoch) for epoch in first}) == 4
  assert epochs(seed=0) == first
  assert epochs(seed=1) != first


@pytest.mark.parametrize("num_examples", [12, 10])
def test_shards_interleave_the_global_stream(num_examples):
  source = CountingSource([30 + k for k in range(num_examples)])
  stream = [
    b["mixture"][0]
    for b in _take(data.training_loader(source, batch_size=1, segment_length=20, seed=5), 36)
  ]
  shards = []
  for index in range(3):
    batches = _take(
      data.training_loader(
        source, batch_size=2, segment_length=20, seed=5, shard_index=index, shard_count=3
      ),
      6,
    )
    shard = [mixture for batch in batches for mixture in batch["mixture"]]
    # Elements index, index + 3, ... of the global stream, crops included.
    np.testing.assert_array_equal(shard, stream[index::3])
    shards.append([int(m[0] // 1000) for m in shard])
  if num_examples == 12:  # Together the shards cover every epoch once, disjointly.
    first_epoch = [k for shard in shards for k in shard[:4]]
    assert sorted(first_epoch) == list(range(12))
  with pytest.raises(ValueError, match="shard_index"):
    data.training_loader(
      source, batch_size=1, segment_length=5, seed=0, shard_index=3, shard_count=3
    )


def test_finite_epochs_warn_about_the_unused_tail():
  source = CountingSource([5] * 10)
  with pytest.warns(UserWarning, match="last 6 of 20 examples"):
    loader = data.training_loader(source, batch_size=7, segment_length=5, seed=0, num_epochs=2)
  assert len(list(loader)) == 2


def test_iterator_state_restores_exactly():
  source = CountingSource([30, 80, 120, 60, 90, 45, 100])
  loader = data.training_loader(
    source, batch_size=3, segment_length=50, seed=11, dynamic_mixing=True
  )
  iterator = iter(loader)
  for _ in range(4):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))  # As the checkpoint stores it.
  expected = [next(iterator) for _ in range(5)]
  resumed = iter(loader)
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(5))):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


class ToneSource:
  """Example k's source c is a sinusoid at FFT bin `2k + c + 1` of a 128-sample window,
  so a window of it (at any offset) says where it came from."""

  sample_rate = 128
  num_sources = 2

  def __init__(self, num_examples, length=200):
    self.num_examples, self.length = num_examples, length

  def __len__(self):
    return self.num_examples

  def __getitem__(self, k):
    t = np.arange(self.length)
    sources = np.stack([np.sin(2 * np.pi * (2 * k + c + 1) * t / 128) for c in range(2)])
    return {
      "mixture": sources.sum(0).astype(np.float32),
      "sources": sources.astype(np.float32),
      "sample_rate": 128,
      "id": str(k),
    }


def _tone_origin(track):
  bin_ = int(np.argmax(np.abs(np.fft.rfft(track))))
  return (bin_ - 1) // 2, (bin_ - 1) % 2  # (example, source)


def test_dynamic_mixing_remixes_other_examples_at_wsj0_levels():
  source = ToneSource(20)
  loader = data.training_loader(
    source, batch_size=10, segment_length=128, seed=4, dynamic_mixing=True
  )
  batches = _take(loader, 20)  # Ten epochs.
  anchors, differences = [], []
  for batch in batches:
    np.testing.assert_allclose(batch["mixture"], batch["sources"].sum(axis=1), atol=1e-5)
    assert np.all(batch["mask"] == 1)
    for sources in batch["sources"]:
      (k1, _), (k2, _) = _tone_origin(sources[0]), _tone_origin(sources[1])
      assert k1 != k2
      anchors.append(k1)
      rms = np.sqrt(np.mean(sources.astype(np.float64) ** 2, axis=1))
      differences.append(20 * np.log10(rms[0] / rms[1]))
  for epoch in range(10):  # Every example leads one re-mix per epoch.
    assert sorted(anchors[20 * epoch : 20 * (epoch + 1)]) == list(range(20))
  assert min(differences) >= 0 and max(differences) <= 5
  assert scipy.stats.kstest(differences, scipy.stats.uniform(0, 5).cdf).pvalue > 0.01
  # Reproducible from the seed, different with another.
  again = _take(
    data.training_loader(source, batch_size=10, segment_length=128, seed=4, dynamic_mixing=True), 2
  )
  np.testing.assert_array_equal(again[1]["sources"], batches[1]["sources"])
  other = _take(
    data.training_loader(source, batch_size=10, segment_length=128, seed=5, dynamic_mixing=True), 1
  )
  assert not np.allclose(other[0]["sources"], batches[0]["sources"])


def test_dynamic_mixing_needs_several_sources():
  source = CountingSource([10] * 4)
  source.num_sources = 1
  with pytest.raises(ValueError, match="needs 2 or more sources"):
    data.training_loader(source, batch_size=1, segment_length=5, seed=0, dynamic_mixing=True)


def test_wsj0_levels_distribution():
  rng = np.random.default_rng(0)
  levels = np.array([mixing.wsj0_levels_db(rng, 3) for _ in range(4000)])
  difference = levels[:, 0] - levels[:, 1]
  assert scipy.stats.kstest(difference, scipy.stats.uniform(0, 5).cdf).pvalue > 0.01
  assert scipy.stats.kstest(levels[:, 2], scipy.stats.uniform(-2.5, 5).cdf).pvalue > 0.01


def test_evaluation_is_never_cropped():
  source = CountingSource([50, 120, 80, 300, 30])
  singles = list(data.evaluation_batches(source))
  assert [b["mixture"].shape for b in singles] == [(1, n) for n in source.lengths]
  for k, batch in enumerate(singles):
    np.testing.assert_array_equal(batch["mixture"][0], source[k]["mixture"])
    assert batch["id"][0] == f"utt{k}" and np.all(batch["mask"] == 1)

  bucketed = list(data.evaluation_batches(source, batch_size=2, pad_multiple=64))
  seen = []
  for batch in bucketed:
    width = batch["mixture"].shape[1]
    assert width % 64 == 0 and width >= max(batch["length"])
    for mixture, sources, mask, length, name in zip(
      batch["mixture"], batch["sources"], batch["mask"], batch["length"], batch["id"]
    ):
      original = source[int(name[3:])]
      assert length == len(original["mixture"]) and mask.sum() == length
      np.testing.assert_array_equal(mixture[:length], original["mixture"])
      np.testing.assert_array_equal(sources[:, :length], original["sources"])
      assert not np.any(mixture[length:])
      seen.append(int(name[3:]))
  assert sorted(seen) == [0, 1, 2, 3, 4]
  # Sorted by length, so similar lengths share a batch.
  assert [list(b["length"]) for b in bucketed] == [[30, 50], [80, 120], [300]]
  spread = list(data.evaluation_batches(source, max_examples=3))
  assert [b["id"][0] for b in spread] == ["utt0", "utt2", "utt4"]


def _wsj0_fixture(root, lengths=(900, 1700, 2500, 1300)):
  rng = np.random.default_rng(0)
  for split in ("tr", "cv"):
    for k, length in enumerate(lengths):
      for folder in ("mix", "s1", "s2"):
        path = root / split / folder / f"utt{k}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, 0.1 * rng.standard_normal(length), 8000, subtype="PCM_16")
  return root


def test_worker_processes_give_the_same_stream_and_restore(tmp_path):
  source = data.open_dataset("wsj0-mix", _wsj0_fixture(tmp_path), "tr", sample_rate=8000)
  kwargs = dict(batch_size=2, segment_length=1000, seed=2)
  reference = _take(data.training_loader(source, **kwargs), 6)
  loader = data.training_loader(source, num_workers=1, **kwargs)
  iterator = iter(loader)
  first = [next(iterator) for _ in range(3)]
  state = iterator.get_state()
  rest = [next(iterator) for _ in range(3)]
  iterator.close()
  resumed = iter(loader)
  resumed.set_state(state)
  again = [next(resumed) for _ in range(3)]
  resumed.close()
  for want, got in zip(reference, first + rest):
    np.testing.assert_array_equal(want["mixture"], got["mixture"])
  for want, got in zip(rest, again):
    np.testing.assert_array_equal(want["sources"], got["sources"])


class _ExamplesOnly:
  """`source`'s examples through `[]` alone, without `MixtureSource.read_source`."""

  def __init__(self, source):
    self.source, self.num_sources = source, source.num_sources

  def __len__(self):
    return len(self.source)

  def __getitem__(self, k):
    return self.source[k]


def test_dynamic_mixing_reads_one_file_per_track_with_the_same_stream(tmp_path, monkeypatch):
  root = _wsj0_fixture(tmp_path)
  kwargs = dict(batch_size=2, segment_length=1000, seed=5, dynamic_mixing=True)
  examples = _ExamplesOnly(data.open_dataset("wsj0-mix", root, "tr", sample_rate=8000))
  reference = _take(data.training_loader(examples, **kwargs), 6)
  source = data.open_dataset("wsj0-mix", root, "tr", sample_rate=8000)
  reads = []
  read = source._read
  monkeypatch.setattr(source, "_read", lambda path: reads.append(path) or read(path))
  for want, got in zip(reference, _take(data.training_loader(source, **kwargs), 6)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  # Two tracks per re-mix, each read alone: never a mixture, never a whole example.
  assert reads and not any("/mix/" in path for path in reads)


def test_config_helpers_on_a_real_layout(tmp_path):
  config = ml_collections.ConfigDict(
    {
      "model": {"sample_rate": 8000, "num_sources": 2},
      "eval_max_utterances": 0,
      "data": {
        "kind": "wsj0-mix",
        "root": str(_wsj0_fixture(tmp_path)),
        "train_split": "tr",
        "valid_split": "cv",
        "synthesize_if_missing": False,
        "options": {},
      },
    }
  )
  source = data.training_source(config)
  batch = _take(data.training_loader(source, batch_size=4, segment_seconds=0.2, seed=0), 1)[0]
  assert batch["mixture"].shape == (4, 1600)
  assert sorted(batch["mask"].sum(axis=1)) == [900, 1300, 1600, 1600]
  batches = list(data.validation_batches(config, pad_seconds=0.125))
  assert sorted(b["length"][0] for b in batches) == [900, 1300, 1700, 2500]
  assert all(b["mixture"].shape[1] % 1000 == 0 for b in batches)
  config.data.kind = "librimix"
  with pytest.raises(data.DatasetError, match="metadata"):
    data.training_source(config)
