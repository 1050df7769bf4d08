"""Separating files (`app/separate_files`): chunking, cross-fades, resampling, scaling.

Every real separation here runs the random `tiny` model with a fixed exit on
`[1, LENGTH]` at 8 kHz (the long signal is cut into chunks of that length), so that the
stopping loop compiles once for the whole file: on this project's shared 2-core machine
a compilation takes 10 to 20 s. The stopping policies are `test_inference`'s subject;
`eesep separate`, its defaults and its bad-input lines are test_cli_separate.py's.
"""

import jax
import numpy as np
import pytest
import soundfile

from conftest import noise
from conftest import write_wav
from eesep_jax import inference
from eesep_jax.app import separate_files

RATE = 8000
LENGTH = 3000  # Samples of every separated signal at RATE, whole or per chunk.
CHUNK = {"chunk_seconds": LENGTH / RATE, "overlap_seconds": 500 / RATE}
LAST = {"policy": "fixed", "exit_index": 3}


@pytest.fixture(scope="module")
def long_run(model):
  """A 4 s stationary noise separated in `LENGTH` chunks, with the loop's cache size."""
  config, variables = model
  inference._stopping_loop.clear_cache()
  mixture = noise(0, 4 * RATE).astype(np.float32)
  result = inference.separate_long(variables, config, mixture, chunk_batch=1, **CHUNK, **LAST)
  return result, inference._stopping_loop._cache_size()


def test_the_loop_compiles_once_across_chunks(long_run):
  result, cache_size = long_run
  assert result.exits.starts.size > 10
  assert cache_size == 1


def test_a_stationary_input_has_no_level_step_at_chunk_seams(long_run):
  result, _ = long_run
  overlap = round(CHUNK["overlap_seconds"] * RATE)

  def power(starts):
    return np.mean(
      [np.mean(result.estimates[:, s : s + overlap] ** 2, axis=-1) for s in starts], axis=0
    )

  typical = power(range(0, 4 * RATE - overlap, overlap))
  seam_ends = result.exits.starts[:-1] + LENGTH
  # Just before the cross-fades, across them, and just after them. A window's level
  # varies by about a dB; the mean over a dozen seams, by a few tenths.
  for offset in (-2 * overlap, -overlap, 0):
    np.testing.assert_allclose(10 * np.log10(power(seam_ends + offset) / typical), 0.0, atol=0.5)


def test_chunks_are_matched_and_cross_faded_back_exactly(model, monkeypatch):
  """With a stand-in network whose sources are the mixture at two gains, coming out in
  a random order per chunk, the output is the two gains everywhere, seams included."""
  config, variables = model
  shapes, swaps = set(), []

  def fake_separate(variables, config, mixture, **kwargs):
    shapes.add(mixture.shape)
    swap = mixture[:, 0] > 0
    swaps.extend(swap)
    sources = np.stack([mixture, 0.5 * mixture], axis=1)
    sources[swap] = sources[swap, ::-1]
    batch = mixture.shape[0]
    return inference.SeparationResult(
      estimates=sources,
      exit_index=np.ones(batch, np.int32),
      probability=np.ones(batch, np.float32),
      gmacs=np.ones(batch, np.float32),
    )

  monkeypatch.setattr(inference, "separate", fake_separate)
  # Five chunks in two batches of three: the last one is padded.
  mixture = noise(3, 4 * LENGTH + 123).astype(np.float32)
  result = inference.separate_long(variables, config, mixture, chunk_batch=3, **CHUNK)
  assert shapes == {(3, LENGTH)} and any(swaps) and not all(swaps)
  louder, quieter = sorted(result.estimates, key=lambda source: -np.abs(source).max())
  np.testing.assert_allclose(louder, mixture, atol=1e-6)
  np.testing.assert_allclose(quieter, 0.5 * mixture, atol=1e-6)
  assert result.exits.exit_index.size == result.exits.starts.size == 5


@pytest.mark.parametrize("order", [[1, 0], [2, 0, 1]])
def test_align_sources_undoes_a_permutation(order):
  reference = np.random.default_rng(0).standard_normal((len(order), 500))
  estimates = 0.7 * reference[order] + 0.1 * np.random.default_rng(1).standard_normal(
    reference.shape
  )
  np.testing.assert_allclose(
    estimates[inference.align_sources(reference, estimates)], 0.7 * reference, atol=0.5
  )


def test_files_shorter_than_a_chunk_are_separated_whole_by_one_compiled_loop(model):
  """Padded to the chunk with their lengths, short files give what `separate` gives
  each alone, and share one compiled loop whatever their lengths."""
  config, variables = model
  mixtures = [noise(4, LENGTH).astype(np.float32), noise(5, LENGTH // 2 + 7).astype(np.float32)]
  before = inference._stopping_loop._cache_size()
  chunked = [inference.separate_long(variables, config, m, **LAST) for m in mixtures]
  assert inference._stopping_loop._cache_size() - before <= 1
  for mixture, result in zip(mixtures, chunked):
    whole = inference.separate(variables, config, mixture[None], **LAST)
    np.testing.assert_allclose(result.estimates, whole.estimates[0], atol=1e-5)
    np.testing.assert_array_equal(result.exits.exit_index, whole.exit_index)
    # Its length's share of the chunk's compute: cost is linear in time, up to the
    # frames the encoder adds at the ends.
    np.testing.assert_allclose(result.exits.gmacs, whole.gmacs, rtol=1e-2)


@pytest.mark.parametrize(
  "overlap_seconds, problem",
  [
    (0.0, "0 s is shorter than the model's 2 encoder kernels"),
    (
      0.6,
      "0.6 s is more than half of the 1 s chunk (4800 of 8000 samples at 8000 Hz): at most 0.5 s",
    ),
  ],
)
def test_the_overlap_must_fit_in_half_a_chunk(model, overlap_seconds, problem):
  """The field is named once, as the CLI names its flag once (`--overlap-seconds 0.6`)."""
  with pytest.raises(inference.ChunkingError) as raised:
    inference.chunk_lengths(model[0], 1.0, overlap_seconds)
  assert str(raised.value).startswith(f"overlap_seconds: {problem}"), raised.value
  assert str(raised.value).count("overlap_seconds") == 1


def test_outputs_are_scaled_together_so_nothing_clips(model, tmp_path):
  config, variables = model
  # A decoder 100 times louder: its estimates are far beyond full scale.
  loud = jax.tree_util.tree_map_with_path(
    lambda path, x: 100 * x if "decoder" in jax.tree_util.keystr(path) else x, variables
  )
  path = write_wav(tmp_path / "stereo.wav", noise(1, LENGTH, channels=2))
  with pytest.warns(UserWarning, match="downmixed"):
    quiet = separate_files.separate_file(
      path, variables=variables, config=config, out_dir=tmp_path / "quiet", **LAST
    )
    scaled = separate_files.separate_file(
      path, variables=loud, config=config, out_dir=tmp_path / "loud", **LAST
    )
  assert scaled.gain < 0.1 and quiet.gain == 1.0
  sources = np.stack([soundfile.read(output)[0] for output in scaled.outputs])
  assert np.max(np.abs(sources)) == pytest.approx(separate_files.PEAK, abs=1e-4)
  estimates = inference.separate_long(loud, config, soundfile.read(path)[0].mean(-1), **LAST)
  np.testing.assert_allclose(sources, scaled.gain * estimates.estimates, atol=1e-4)


def test_clipping_gain_only_ever_scales_down():
  loud = [np.array([0.5, -3.0]), np.array([1.0])]
  assert separate_files.clipping_gain(loud) == pytest.approx(separate_files.PEAK / 3.0)
  assert separate_files.clipping_gain([np.array([0.5, -0.2])]) == 1.0
