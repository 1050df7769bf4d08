"""Separating files: chunking, cross-fades, resampling, scaling, bad input, the CLI.

Every real separation here runs the random `tiny` model with a fixed exit on
`[1, LENGTH]` at 8 kHz (the long signal is cut into chunks of that length), so that the
stopping loop compiles once for the whole file: on this project's shared 2-core machine
a compilation takes 10 to 20 s. The stopping policies are `test_inference`'s subject;
here the CLI's defaults are checked on their way to `separate_files`.
"""

import contextlib
import io
import os
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from eesep_jax import inference
from eesep_jax import models
from eesep_jax.app import cli
from eesep_jax.app import separate_files
from eesep_jax.training import checkpoints

from conftest import run_config
from conftest import si_snri_reference

RATE = 8000
LENGTH = 3000  # Samples of every separated signal at RATE, whole or per chunk.
CHUNK = {"chunk_seconds": LENGTH / RATE, "overlap_seconds": 500 / RATE}
LAST = {"policy": "fixed", "exit_index": 3}
GOOD = {"wideband.wav": (2 * RATE, 1), "stereo.wav": (RATE, 2)}  # Rate, channels.
BAD = ("empty.wav", "corrupt.wav", "truncated.wav", "silent.wav", "missing.wav",
       "notes.txt", "nothing")


def _noise(seed, length, channels=1, level=0.3):
  return level * np.random.default_rng(seed).standard_normal((length, channels)).squeeze()


def _write(path, signal, rate=RATE):
  soundfile.write(path, signal, rate, subtype="PCM_16")
  return str(path)


@pytest.fixture(scope="module")
def model():
  config = models.preset("tiny")
  # Jitted: initialising op by op takes twice as long.
  return config, jax.jit(models.PressNet(config).init)(jax.random.key(0), jnp.zeros((1, 1600)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """`root/inputs/` with the good and (most) bad files, and the bad inputs outside it."""
  root = tmp_path_factory.mktemp("separate")
  folder = root / "inputs"
  folder.mkdir()
  for seed, (name, (rate, channels)) in enumerate(GOOD.items()):
    _write(folder / name, _noise(seed, LENGTH * rate // RATE, channels), rate)
  _write(folder / "empty.wav", np.zeros(0))
  (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
  truncated = _write(folder / "truncated.wav", _noise(9, LENGTH))
  os.truncate(truncated, os.path.getsize(truncated) // 2)
  _write(folder / "silent.wav", np.zeros(LENGTH))
  (root / "notes.txt").write_text("not audio\n")
  (root / "nothing").mkdir()
  return root


def _run_cli(argv, model, saved_config=None):
  """`eesep ARGV` with the random model as the checkpoint, trained by `saved_config`
  (`run_config()` by default): `(code, stdout, stderr)`."""
  stdout, stderr = io.StringIO(), io.StringIO()
  saved_config = saved_config or run_config()
  with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), \
       contextlib.redirect_stderr(stderr):
    patch.setattr(checkpoints, "restore_params", lambda workdir: model)
    patch.setattr(checkpoints, "read_config", lambda workdir: saved_config)
    code = cli.main(argv)
  # tqdm redraws its bar with carriage returns around each line it writes.
  lines = lambda text: [line.split("\r")[-1] for line in text.getvalue().splitlines()]
  return code, lines(stdout), lines(stderr)


@pytest.fixture(scope="module")
def long_run(model):
  """A 4 s stationary noise separated in `LENGTH` chunks, with the loop's cache size."""
  config, variables = model
  inference._stopping_loop.clear_cache()
  mixture = _noise(0, 4 * RATE).astype(np.float32)
  result = inference.separate_long(variables, config, mixture, chunk_batch=1, **CHUNK, **LAST)
  return result, inference._stopping_loop._cache_size()


@pytest.fixture(scope="module")
def cli_run(model, inputs):
  out_dir = inputs / "out"
  argv = ["separate", str(inputs / "inputs"), *(str(inputs / name) for name in BAD[-3:]),
          "--checkpoint", "runs/random", "--out-dir", str(out_dir), "--exit-index", "last"]
  code, stdout, stderr = _run_cli(argv, model)
  return types.SimpleNamespace(code=code, stdout=stdout, stderr=stderr, out_dir=out_dir)


def test_the_loop_compiles_once_across_chunks(long_run):
  result, cache_size = long_run
  assert result.exits.starts.size > 10
  assert cache_size == 1


def test_a_stationary_input_has_no_level_step_at_chunk_seams(long_run):
  result, _ = long_run
  overlap = round(CHUNK["overlap_seconds"] * RATE)
  power = lambda starts: np.mean(
      [np.mean(result.estimates[:, s:s + overlap] ** 2, axis=-1) for s in starts], axis=0)
  typical = power(range(0, 4 * RATE - overlap, overlap))
  seam_ends = result.exits.starts[:-1] + LENGTH
  # Just before the cross-fades, across them, and just after them. A window's level
  # varies by about a dB; the mean over a dozen seams, by a few tenths.
  for offset in (-2 * overlap, -overlap, 0):
    np.testing.assert_allclose(10 * np.log10(power(seam_ends + offset) / typical), 0.0,
                               atol=0.5)


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
        estimates=sources, exit_index=np.ones(batch, np.int32),
        probability=np.ones(batch, np.float32), gmacs=np.ones(batch, np.float32))

  monkeypatch.setattr(inference, "separate", fake_separate)
  # Five chunks in two batches of three: the last one is padded.
  mixture = _noise(3, 4 * LENGTH + 123).astype(np.float32)
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
      reference.shape)
  np.testing.assert_allclose(estimates[inference.align_sources(reference, estimates)],
                             0.7 * reference, atol=0.5)


def test_files_shorter_than_a_chunk_are_separated_whole_by_one_compiled_loop(model):
  """Padded to the chunk with their lengths, short files give what `separate` gives
  each alone, and share one compiled loop whatever their lengths."""
  config, variables = model
  mixtures = [_noise(4, LENGTH).astype(np.float32),
              _noise(5, LENGTH // 2 + 7).astype(np.float32)]
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


@pytest.mark.parametrize("overlap_seconds, problem", [
    (0.0, "0 s is shorter than the model's 2 encoder kernels"),
    (0.6, "0.6 s is more than half of the 1 s chunk (4800 of 8000 samples at 8000 Hz): at "
          "most 0.5 s")])
def test_the_overlap_must_fit_in_half_a_chunk(model, overlap_seconds, problem):
  """The field is named once, as the CLI names its flag once (`--overlap-seconds 0.6`)."""
  with pytest.raises(inference.ChunkingError) as raised:
    inference.chunk_lengths(model[0], 1.0, overlap_seconds)
  assert str(raised.value).startswith(f"overlap_seconds: {problem}"), raised.value
  assert str(raised.value).count("overlap_seconds") == 1


def test_outputs_have_the_inputs_names_rates_and_lengths(cli_run):
  out_dir = cli_run.out_dir
  for name, (rate, _) in GOOD.items():
    stem = os.path.splitext(name)[0]
    for k in (1, 2):
      info = soundfile.info(out_dir / f"{stem}_s{k}.wav")
      assert (info.samplerate, info.frames, info.channels) == (rate, LENGTH * rate // RATE, 1)
      assert info.subtype == "PCM_16"
    [line] = [line for line in cli_run.stdout
              if line.startswith(str(out_dir.parent / "inputs" / name))]
    assert ": exit 3 of 3, P(SNR >= 15 dB) = " in line
    assert " GMAC, 0% of the FLOPs saved -> " in line
  assert sorted(os.listdir(out_dir)) == sorted(
      f"{os.path.splitext(name)[0]}_s{k}.wav" for name in GOOD for k in (1, 2))


def test_multichannel_input_is_downmixed_with_a_warning(cli_run):
  warned = [line for line in cli_run.stderr if line.startswith("warning: ")]
  stereo = cli_run.out_dir.parent / "inputs" / "stereo.wav"
  assert warned == [f"warning: {stereo}: 2 channels, downmixed to mono by averaging them"]


def test_each_bad_input_gets_one_error_line_and_a_failing_exit_code(cli_run):
  assert cli_run.code == 1
  errors = [line for line in cli_run.stderr if line.startswith("error: ")]
  assert len(errors) == len(BAD)
  for name in BAD:
    assert len([line for line in errors if f"{os.sep}{name}: " in line]) == 1, name
  assert any("silent" in line for line in errors if "silent.wav" in line)
  assert any("truncated" in line for line in errors if "truncated.wav" in line)


def test_outputs_are_scaled_together_so_nothing_clips(model, inputs, tmp_path):
  config, variables = model
  # A decoder 100 times louder: its estimates are far beyond full scale.
  loud = jax.tree_util.tree_map_with_path(
      lambda path, x: 100 * x if "decoder" in jax.tree_util.keystr(path) else x, variables)
  path = str(inputs / "inputs" / "stereo.wav")
  with pytest.warns(UserWarning, match="downmixed"):
    quiet = separate_files.separate_file(path, variables=variables, config=config,
                                         out_dir=tmp_path / "quiet", **LAST)
    scaled = separate_files.separate_file(path, variables=loud, config=config,
                                          out_dir=tmp_path / "loud", **LAST)
  assert scaled.gain < 0.1 and quiet.gain == 1.0
  sources = np.stack([soundfile.read(output)[0] for output in scaled.outputs])
  assert np.max(np.abs(sources)) == pytest.approx(separate_files.PEAK, abs=1e-4)
  estimates = inference.separate_long(loud, config, soundfile.read(path)[0].mean(-1), **LAST)
  np.testing.assert_allclose(sources, scaled.gain * estimates.estimates, atol=1e-4)


def test_clipping_gain_only_ever_scales_down():
  loud = [np.array([0.5, -3.0]), np.array([1.0])]
  assert separate_files.clipping_gain(loud) == pytest.approx(separate_files.PEAK / 3.0)
  assert separate_files.clipping_gain([np.array([0.5, -0.2])]) == 1.0


@pytest.mark.parametrize("exit_index,expected", [("1", "exit 1 of 3"), ("last", "exit 3 of 3")])
def test_a_fixed_exit_index(model, inputs, tmp_path, exit_index, expected):
  path = str(inputs / "inputs" / "wideband.wav")
  code, stdout, stderr = _run_cli(
      ["separate", path, "--checkpoint", "runs/random", "--out-dir", str(tmp_path),
       "--exit-index", exit_index], model)
  assert code == 0 and not stderr
  [line] = stdout
  assert line.startswith(f"{path}: {expected},")
  assert (" 0% of the FLOPs saved" in line) == (exit_index == "last")


@pytest.mark.parametrize("flags", [
    ["--exit-index", "4"], ["--exit-index", "0"], ["--exit-index", "1", "--confidence", "0.5"],
    ["--exit-index", "1", "--policy", "expected-snr"], ["--policy", "fixed"],
    ["--overlap-seconds", "3"], ["--overlap-seconds", "0"],
])
def test_impossible_flags_are_usage_errors(model, tmp_path, flags):
  with pytest.raises(SystemExit) as raised:
    _run_cli(["separate", "x.wav", "--checkpoint", "runs/random", "--out-dir",
              str(tmp_path), *flags], model)
  assert raised.value.code == 2


# The demo's run stops at 5 dB with p = 0.5: a flag not given takes the run's value.
DEMO_LIKE = {"target_snr_db": 5.0, "confidence": 0.5, "chunk_batch": 2}


@pytest.mark.parametrize("flags,run,expected", [
    ([], {}, {"policy": "probabilistic", "target_snr_db": 15.0, "confidence": 0.9,
              "exit_index": None, "chunk_seconds": inference.CHUNK_SECONDS,
              "overlap_seconds": inference.OVERLAP_SECONDS,
              "chunk_batch": inference.CHUNK_BATCH}),
    ([], DEMO_LIKE, {"policy": "probabilistic", "target_snr_db": 5.0, "confidence": 0.5,
                     "chunk_seconds": inference.CHUNK_SECONDS, "chunk_batch": 2}),
    (["--policy", "expected-snr", "--target-snr", "10", "--chunk-seconds", "2",
      "--overlap-seconds", "0.25", "--chunk-batch", "4"], DEMO_LIKE,
     {"policy": "expected-snr", "target_snr_db": 10.0, "chunk_seconds": 2.0,
      "overlap_seconds": 0.25, "chunk_batch": 4}),
])
def test_the_cli_passes_its_choices_on(model, monkeypatch, tmp_path, flags, run, expected):
  calls = []
  monkeypatch.setattr(separate_files, "separate_files",
                      lambda paths, **kwargs: calls.append(kwargs) or [])
  code, _, _ = _run_cli(["separate", "x.wav", "--checkpoint", "runs/random", "--out-dir",
                         str(tmp_path), *flags], model, run_config(**run))
  assert code == 0
  assert {name: calls[0][name] for name in expected} == expected


# ------------------------------------------------------------- a trained run, end to end


def test_a_trained_run_separates_a_mixture_alike_at_any_level(trained_workdir, tiny_corpus,
                                                              tmp_path):
  """The same mixture as float WAV at -60 and 0 dBFS peak: SI-SNRi within 0.5 dB through
  `eesep separate`; the quiet one's sources, at its level, are too quiet for 16-bit
  steps and come out as float WAV with a warning naming it."""
  name = sorted((tiny_corpus / "tt" / "mix").iterdir())[0].name
  mixture, rate = soundfile.read(tiny_corpus / "tt" / "mix" / name)
  references = np.stack([soundfile.read(tiny_corpus / "tt" / f"s{k}" / name)[0]
                         for k in (1, 2)])
  inputs, out = tmp_path / "inputs", tmp_path / "out"
  inputs.mkdir()
  peak = np.abs(mixture).max()
  levels = {"quiet": 10 ** (-60 / 20), "loud": 1.0}
  for name, level in levels.items():
    soundfile.write(inputs / f"{name}.wav", mixture * level / peak, rate, subtype="FLOAT")
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    code = cli.main(["separate", str(inputs), "--checkpoint", str(trained_workdir),
                     "--out-dir", str(out), "--exit-index", "last", "--no-posthoc"])
  assert not code, stderr.getvalue()
  si_snri = {}
  for name, level in levels.items():
    estimates = np.stack([soundfile.read(out / f"{name}_s{k}.wav")[0] for k in (1, 2)])
    si_snri[name] = si_snri_reference(references, estimates, mixture)
  assert abs(si_snri["quiet"] - si_snri["loud"]) < 0.5, si_snri
  assert [soundfile.info(out / f"{name}_s1.wav").subtype for name in levels] == [
      "FLOAT", "PCM_16"]
  warned = [line for line in stderr.getvalue().splitlines() if "too quiet" in line]
  assert len(warned) == 1 and re.fullmatch(
      rf"warning: {re.escape(str(inputs / 'quiet.wav'))}: its sources peak at -\d+ dBFS, "
      "too quiet for 16-bit steps: written as 32-bit float WAV", warned[0]), warned
