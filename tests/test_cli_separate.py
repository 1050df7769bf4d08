"""`eesep separate`: outputs named after their inputs at their rates and lengths, one
error line per bad input, the flags and the run's defaults on their way to
`separate_files`, and a trained run end to end.

The random `tiny` model separates `[1, LENGTH]` at 8 kHz with a fixed exit, as in
test_separate_files.py, so that the stopping loop compiles once.
"""

import contextlib
import io
import os
import re
import types

import numpy as np
import pytest
import soundfile

from conftest import noise
from conftest import run_config
from conftest import si_snri_reference
from conftest import write_wav
from eesep_jax import inference
from eesep_jax.app import cli
from eesep_jax.app import separate_files
from eesep_jax.training import checkpoints

RATE = 8000
LENGTH = 3000  # Samples of every separated signal at RATE, whole or per chunk.
GOOD = {"wideband.wav": (2 * RATE, 1), "stereo.wav": (RATE, 2)}  # Rate, channels.
BAD = (
  "empty.wav",
  "corrupt.wav",
  "truncated.wav",
  "silent.wav",
  "missing.wav",
  "notes.txt",
  "nothing",
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """`root/inputs/` with the good and (most) bad files, and the bad inputs outside it."""
  root = tmp_path_factory.mktemp("separate")
  folder = root / "inputs"
  folder.mkdir()
  for seed, (name, (rate, channels)) in enumerate(GOOD.items()):
    write_wav(folder / name, noise(seed, LENGTH * rate // RATE, channels), rate)
  write_wav(folder / "empty.wav", np.zeros(0))
  (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
  truncated = write_wav(folder / "truncated.wav", noise(9, LENGTH))
  os.truncate(truncated, os.path.getsize(truncated) // 2)
  write_wav(folder / "silent.wav", np.zeros(LENGTH))
  (root / "notes.txt").write_text("not audio\n")
  (root / "nothing").mkdir()
  return root


def _run_cli(argv, model, saved_config=None):
  """`eesep ARGV` with the random model as the checkpoint, trained by `saved_config`
  (`run_config()` by default): `(code, stdout, stderr)`."""
  stdout, stderr = io.StringIO(), io.StringIO()
  saved_config = saved_config or run_config()
  with (
    pytest.MonkeyPatch.context() as patch,
    contextlib.redirect_stdout(stdout),
    contextlib.redirect_stderr(stderr),
  ):
    patch.setattr(checkpoints, "restore_params", lambda workdir, step: model)
    patch.setattr(checkpoints, "read_config", lambda workdir: saved_config)
    code = cli.main(argv)

  # tqdm redraws its bar with carriage returns around each line it writes.
  def lines(text):
    return [line.split("\r")[-1] for line in text.getvalue().splitlines()]

  return code, lines(stdout), lines(stderr)


@pytest.fixture(scope="module")
def cli_run(model, inputs):
  out_dir = inputs / "out"
  argv = [
    "separate",
    str(inputs / "inputs"),
    *(str(inputs / name) for name in BAD[-3:]),
    "--checkpoint",
    "runs/random",
    "--out-dir",
    str(out_dir),
    "--exit-index",
    "last",
  ]
  code, stdout, stderr = _run_cli(argv, model)
  return types.SimpleNamespace(code=code, stdout=stdout, stderr=stderr, out_dir=out_dir)


def test_outputs_have_the_inputs_names_rates_and_lengths(cli_run):
  out_dir = cli_run.out_dir
  for name, (rate, _) in GOOD.items():
    stem = os.path.splitext(name)[0]
    for k in (1, 2):
      info = soundfile.info(out_dir / f"{stem}_s{k}.wav")
      assert (info.samplerate, info.frames, info.channels) == (rate, LENGTH * rate // RATE, 1)
      assert info.subtype == "PCM_16"
    [line] = [
      line for line in cli_run.stdout if line.startswith(str(out_dir.parent / "inputs" / name))
    ]
    assert ": exit 3 of 3, P(SNR >= 15 dB) = " in line
    assert " GMAC, 0% of the FLOPs saved -> " in line
  assert sorted(os.listdir(out_dir)) == sorted(
    f"{os.path.splitext(name)[0]}_s{k}.wav" for name in GOOD for k in (1, 2)
  )


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


@pytest.mark.parametrize("exit_index,expected", [("1", "exit 1 of 3"), ("last", "exit 3 of 3")])
def test_a_fixed_exit_index(model, inputs, tmp_path, exit_index, expected):
  path = str(inputs / "inputs" / "wideband.wav")
  code, stdout, stderr = _run_cli(
    [
      "separate",
      path,
      "--checkpoint",
      "runs/random",
      "--out-dir",
      str(tmp_path),
      "--exit-index",
      exit_index,
    ],
    model,
  )
  assert code == 0 and not stderr
  [line] = stdout
  assert line.startswith(f"{path}: {expected},")
  assert (" 0% of the FLOPs saved" in line) == (exit_index == "last")


@pytest.mark.parametrize(
  "flags",
  [
    ["--exit-index", "4"],
    ["--exit-index", "0"],
    ["--exit-index", "1", "--confidence", "0.5"],
    ["--exit-index", "1", "--policy", "expected-snr"],
    ["--policy", "fixed"],
    ["--overlap-seconds", "3"],
    ["--overlap-seconds", "0"],
  ],
)
def test_impossible_flags_are_usage_errors(model, tmp_path, flags):
  with pytest.raises(SystemExit) as raised:
    _run_cli(
      ["separate", "x.wav", "--checkpoint", "runs/random", "--out-dir", str(tmp_path), *flags],
      model,
    )
  assert raised.value.code == 2


# The demo's run stops at 5 dB with p = 0.5: a flag not given takes the run's value.
DEMO_LIKE = {"target_snr_db": 5.0, "confidence": 0.5, "chunk_batch": 2}


@pytest.mark.parametrize(
  "flags,run,expected",
  [
    (
      [],
      {},
      {
        "policy": "probabilistic",
        "target_snr_db": 15.0,
        "confidence": 0.9,
        "exit_index": None,
        "chunk_seconds": inference.CHUNK_SECONDS,
        "overlap_seconds": inference.OVERLAP_SECONDS,
        "chunk_batch": inference.CHUNK_BATCH,
      },
    ),
    (
      [],
      DEMO_LIKE,
      {
        "policy": "probabilistic",
        "target_snr_db": 5.0,
        "confidence": 0.5,
        "chunk_seconds": inference.CHUNK_SECONDS,
        "chunk_batch": 2,
      },
    ),
    (
      [
        "--policy",
        "expected-snr",
        "--target-snr",
        "10",
        "--chunk-seconds",
        "2",
        "--overlap-seconds",
        "0.25",
        "--chunk-batch",
        "4",
      ],
      DEMO_LIKE,
      {
        "policy": "expected-snr",
        "target_snr_db": 10.0,
        "chunk_seconds": 2.0,
        "overlap_seconds": 0.25,
        "chunk_batch": 4,
      },
    ),
  ],
)
def test_the_cli_passes_its_choices_on(model, monkeypatch, tmp_path, flags, run, expected):
  calls = []
  monkeypatch.setattr(
    separate_files, "separate_files", lambda paths, **kwargs: calls.append(kwargs) or []
  )
  code, _, _ = _run_cli(
    ["separate", "x.wav", "--checkpoint", "runs/random", "--out-dir", str(tmp_path), *flags],
    model,
    run_config(**run),
  )
  assert code == 0
  assert {name: calls[0][name] for name in expected} == expected


# ------------------------------------------------------------- a trained run, end to end


def test_a_trained_run_separates_a_mixture_alike_at_any_level(
  trained_workdir, tiny_corpus, tmp_path
):
  """The same mixture as float WAV at -60 and 0 dBFS peak: SI-SNRi within 0.5 dB through
  `eesep separate`; the quiet one's sources, at its level, are too quiet for 16-bit
  steps and come out as float WAV with a warning naming it."""
  name = sorted((tiny_corpus / "tt" / "mix").iterdir())[0].name
  mixture, rate = soundfile.read(tiny_corpus / "tt" / "mix" / name)
  references = np.stack([soundfile.read(tiny_corpus / "tt" / f"s{k}" / name)[0] for k in (1, 2)])
  inputs, out = tmp_path / "inputs", tmp_path / "out"
  inputs.mkdir()
  peak = np.abs(mixture).max()
  levels = {"quiet": 10 ** (-60 / 20), "loud": 1.0}
  for name, level in levels.items():
    soundfile.write(inputs / f"{name}.wav", mixture * level / peak, rate, subtype="FLOAT")
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    code = cli.main(
      [
        "separate",
        str(inputs),
        "--checkpoint",
        str(trained_workdir),
        "--out-dir",
        str(out),
        "--exit-index",
        "last",
        "--no-posthoc",
      ]
    )
  assert not code, stderr.getvalue()
  si_snri = {}
  for name in levels:
    estimates = np.stack([soundfile.read(out / f"{name}_s{k}.wav")[0] for k in (1, 2)])
    si_snri[name] = si_snri_reference(references, estimates, mixture)
  assert abs(si_snri["quiet"] - si_snri["loud"]) < 0.5, si_snri
  assert [soundfile.info(out / f"{name}_s1.wav").subtype for name in levels] == ["FLOAT", "PCM_16"]
  warned = [line for line in stderr.getvalue().splitlines() if "too quiet" in line]
  assert len(warned) == 1 and re.fullmatch(
    rf"warning: {re.escape(str(inputs / 'quiet.wav'))}: its sources peak at -\d+ dBFS, "
    "too quiet for 16-bit steps: written as 32-bit float WAV",
    warned[0],
  ), warned
