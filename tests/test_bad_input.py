"""The catalogue of bad input: one row per kind, fed to the command a user would run.

Each row sets up one bad input next to a good one, runs `eesep` in this process, and
checks the exit code (2: usage error, 1: data error, 0: handled with a note), the one
line that names what is wrong, and that nothing else suffered: the good file's outputs
are those of a clean run, the user's files are intact, and nothing was written that
should not have been.

The checkpoint is the demo config's random model saved as a training run (no training), and
every separation is `--exit-index last` on `LENGTH` samples, so the stopping loop
compiles once for the module. Then come the behaviours a table row cannot show: a
SIGKILLed `eesep separate` and its rerun, a training loop that fails, skips steps and
sums up (with a stand-in step, so nothing is compiled but the initialisation), and
inference reading the parameters alone.
"""

import contextlib
import dataclasses
import errno
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile

from conftest import DEMO_CONFIG
from conftest import REPO
from conftest import write_speech_mixtures
from eesep_jax import config_lib
from eesep_jax import models
from eesep_jax.app import cli
from eesep_jax.app import separate_files
from eesep_jax.data import audio
from eesep_jax.training import checkpoints
from eesep_jax.training import train

RATE = 8000
LENGTH = 3000  # Samples of every separated file: one compilation.
STEP = 2  # The step the random model is saved at.
# What the training runs here read: short segments of the small corpus.
TRAIN_FLAGS = ("--config.data.segment_seconds=0.25", "--config.batch_size=2")


def _noise(seed, length=LENGTH, level=0.3):
  return level * np.random.default_rng(seed).standard_normal(length)


def _run_config(corpus):
  return config_lib.load_config(
    DEMO_CONFIG, [f"data.root={corpus}", *(flag.removeprefix("--config.") for flag in TRAIN_FLAGS)]
  )


def _save_run(workdir, corpus, params):
  """A training workdir holding `params` as its checkpoint at `STEP`, untrained."""
  config = _run_config(corpus)
  optimizer = train.make_optimizer(config.optimizer, config.steps)
  state = train.TrainState(
    step=jnp.int32(STEP),
    params=params,
    opt_state=optimizer.init(params),
    rng=jax.random.key_data(jax.random.key(0)),
  )
  workdir.mkdir(parents=True)
  checkpoints.write_config(config, workdir)
  manager = checkpoints.open_manager(workdir, config)
  manager.save(STEP, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir


def _run(argv, cwd=None, env=None):
  """`eesep ARGV` in this process: `(exit code, stdout lines, stderr lines)`."""
  stdout, stderr = io.StringIO(), io.StringIO()
  with (
    pytest.MonkeyPatch.context() as patch,
    contextlib.redirect_stdout(stdout),
    contextlib.redirect_stderr(stderr),
  ):
    if cwd:
      patch.chdir(cwd)
    for name, value in (env or {}).items():
      patch.setenv(name, value)
    try:
      code = cli.main([str(arg) for arg in argv])
    except SystemExit as exit_:
      code = exit_.code
  code = 0 if code is None else code  # Commands without failing files return None.

  # tqdm redraws its bars after carriage returns: each redraw is a line here.
  def lines(text):
    return [
      part for line in text.getvalue().splitlines() for part in line.split("\r") if part.strip()
    ]

  return code, lines(stdout), lines(stderr)


def _samples(path):
  return soundfile.read(path, dtype="int16")[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The corpus, the saved random model (and one with NaN weights), the good input and
  its outputs from a clean run."""
  root = tmp_path_factory.mktemp("bad_input")
  corpus = root / "corpus"
  for split, count in (("tr", 4), ("cv", 2), ("tt", 2)):
    write_speech_mixtures(corpus, split, [f"{split}{k}" for k in range(count)], length=2000)
  # Jitted: the un-jitted init runs the stage scan op by op, several times slower.
  variables = jax.jit(models.PressNet(config_lib.model_config(_run_config(corpus))).init)(
    jax.random.key(0), jnp.zeros((1, 1600))
  )
  run = _save_run(root / "run", corpus, variables["params"])
  broken = _save_run(
    root / "nan_run", corpus, jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), variables["params"])
  )
  good = root / "good.wav"
  soundfile.write(good, _noise(0), RATE, subtype="PCM_16")
  code, _, stderr = _run(
    ["separate", good, "--checkpoint", run, "--out-dir", root / "clean", "--exit-index", "last"]
  )
  assert code == 0, stderr
  reference = {k: _samples(root / "clean" / f"good_s{k}.wav") for k in (1, 2)}
  return dataclasses.make_dataclass(
    "World", ["root", "corpus", "run", "broken", "good", "reference"]
  )(root, corpus, run, broken, good, reference)


@dataclasses.dataclass
class Setting:
  """One row's folders, and what it asks the checks to hold."""

  world: object
  tmp: pathlib.Path
  inputs: pathlib.Path  # Holds good.wav.
  out: pathlib.Path
  cwd: pathlib.Path | None = None
  env: dict = dataclasses.field(default_factory=dict)
  good_separated: bool = True  # The good file's outputs are the clean run's.
  intact: dict = dataclasses.field(default_factory=dict)  # Path -> bytes it must keep.
  absent: list = dataclasses.field(default_factory=list)  # Paths that must not appear.
  patch: pytest.MonkeyPatch | None = None  # Undone after the row.

  def separate(self, *inputs, flags=("--exit-index", "last"), checkpoint=None):
    return [
      "separate",
      *inputs,
      "--checkpoint",
      checkpoint or self.world.run,
      "--out-dir",
      self.out,
      *flags,
    ]

  def keep(self, path):
    self.intact[path] = path.read_bytes()

  def corpus_with(self, change):
    """A copy of the corpus, `change(root)` applied."""
    root = self.tmp / "corpus"
    shutil.copytree(self.world.corpus, root)
    change(root)
    return root

  def train(self, *flags, workdir=None):
    workdir = workdir or self.tmp / "workdir"
    self.absent.append(workdir)
    self.good_separated = False
    return ["train", "--config", DEMO_CONFIG, "--workdir", workdir, *TRAIN_FLAGS, *flags]

  def usage(self, argv):
    """A row that must stop before any work: nothing at all written."""
    self.good_separated = False
    self.absent.append(self.out)
    return argv


CASES = {}


def case(code, *patterns):
  """Registers a row: `setup(setting) -> argv`; the run must exit with `code` and
  print one line matching each of `patterns` (one `error: ...` for codes 1 and 2)."""

  def register(setup):
    CASES[setup.__name__] = (setup, code, patterns)
    return setup

  return register


# ------------------------------------------------------------------ eesep separate


@case(1, r"^error: .*nan\.wav: 4 of 3000 samples are NaN or infinite$")
def nan_and_inf_samples(s):
  signal = _noise(1)
  signal[[10, 20, 30]] = np.nan
  signal[40] = np.inf
  soundfile.write(s.inputs / "nan.wav", signal, RATE, subtype="FLOAT")
  s.absent += [s.out / "nan_s1.wav", s.out / "nan_s2.wav"]
  return s.separate(s.inputs)


@case(1, r"^error: .*one_hertz\.wav: the header gives a sample rate of 1 Hz")
def one_hertz_header(s):
  soundfile.write(s.inputs / "one_hertz.wav", _noise(2, 100), 1, subtype="PCM_16")
  return s.separate(s.inputs)


@case(1, r"^error: .*x{20}\.wav: its output name is 258 bytes long, more than the 255")
def output_name_over_255_bytes(s):
  soundfile.write(s.inputs / ("x" * 251 + ".wav"), _noise(3), RATE, subtype="PCM_16")
  return s.separate(s.inputs)


@case(
  1,
  r"^error: .*take\.wav: .*take_s1\.wav exists and is not this file's output: "
  r"--overwrite replaces it$",
)
def a_user_file_at_an_output_name(s):
  soundfile.write(s.inputs / "take.wav", _noise(4), RATE, subtype="PCM_16")
  s.out.mkdir()
  soundfile.write(s.out / "take_s1.wav", _noise(5), RATE, subtype="PCM_16")
  s.keep(s.out / "take_s1.wav")
  s.absent.append(s.out / "take_s2.wav")
  return s.separate(s.inputs)


@case(
  1,
  r"^error: .*good\.wav: .*good_s1\.wav was separated from another input, or from "
  r"this one before it changed: --overwrite replaces it$",
)
def an_input_changed_since_its_separation(s):
  first = _run(s.separate(s.inputs))
  assert first[0] == 0, first[2]
  for k in (1, 2):
    s.keep(s.out / f"good_s{k}.wav")
  status = os.stat(s.inputs / "good.wav")
  os.utime(s.inputs / "good.wav", ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
  return s.separate(s.inputs)


@case(1, r"^error: .*take\.wav: its output .*take_s1\.wav is one of this run's inputs")
def out_dir_is_the_input_folder_with_a_user_file_at_an_output_name(s):
  soundfile.write(s.inputs / "take.wav", _noise(4), RATE, subtype="PCM_16")
  soundfile.write(s.inputs / "take_s1.wav", _noise(5), RATE, subtype="PCM_16")
  s.keep(s.inputs / "take_s1.wav")
  s.keep(s.inputs / "take.wav")
  s.out = s.inputs
  return s.separate(s.inputs, "--overwrite")


@case(0, r"^warning: .*good\.wav: given twice.*: separated once$")
def the_same_file_twice(s):
  return s.separate(s.inputs, s.inputs / "good.wav")


@case(0, r"^warning: .*inputs: left out 2 files that eesep separate wrote")
def a_second_run_into_the_input_folder(s):
  s.out = s.inputs
  first = _run(s.separate(s.inputs))
  assert first[0] == 0, first[2]
  for k in (1, 2):
    s.keep(s.inputs / f"good_s{k}.wav")
  s.absent += [s.inputs / "good_s1_s1.wav", s.inputs / "good_s2_s1.wav"]
  return s.separate(s.inputs)


@case(
  1,
  r"^error: .*good\.wav: the separated sources hold \d+ NaN or infinite samples "
  r"\(a damaged checkpoint\?\): nothing written$",
)
def a_model_that_outputs_nan(s):
  s.good_separated = False
  s.absent += [s.out / "good_s1.wav"]
  return s.separate(s.inputs, checkpoint=s.world.broken)


@case(2, r"^error: .*not_a_folder/out: cannot write the outputs there \(Not a directory\)$")
def out_dir_under_a_file(s):
  (s.tmp / "not_a_folder").write_text("a file\n")
  s.keep(s.tmp / "not_a_folder")
  s.out = s.tmp / "not_a_folder" / "out"
  return s.usage(s.separate(s.inputs))


@case(2, r"^error: --confidence: '1\.5' is not a probability in \(0, 1\]")
def confidence_above_one(s):
  return s.usage(s.separate(s.inputs, flags=("--confidence", "1.5")))


@case(2, r"^error: --confidence: 'nan' is not a probability in \(0, 1\]")
def confidence_nan(s):
  return s.usage(s.separate(s.inputs, flags=("--confidence", "nan")))


@case(2, r"^error: --target-snr: 'nan' is not a finite number of dB")
def target_snr_nan(s):
  return s.usage(s.separate(s.inputs, flags=("--target-snr", "nan")))


@case(2, r"^error: --target-snr: '-inf' is not a finite number of dB")
def target_snr_minus_inf(s):
  return s.usage(s.separate(s.inputs, flags=("--target-snr=-inf",)))


@case(2, r"^error: --chunk-seconds: 'nan' is not a positive number of seconds")
def chunk_seconds_nan(s):
  return s.usage(s.separate(s.inputs, flags=("--chunk-seconds", "nan")))


@case(2, r"^error: --chunk-seconds: '0' is not a positive number of seconds")
def chunk_seconds_zero(s):
  return s.usage(s.separate(s.inputs, flags=("--chunk-seconds", "0")))


@case(2, r"^error: .*nowhere: holds no config\.json: is it a training workdir\?$")
def separate_with_a_missing_checkpoint(s):
  return s.usage(s.separate(s.inputs, checkpoint=s.tmp / "nowhere"))


@case(1, r"^error: .*config\.json: damaged, not a JSON config \(Expecting")
def a_corrupt_config_json(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  (run / checkpoints.CONFIG_FILE).write_text('{"model": ')
  return s.usage(s.separate(s.inputs, checkpoint=run))


@case(
  1,
  r"^error: .*run/checkpoints/2: the checkpoint cannot be read, damaged or "
  r"truncated\? \(.+\)$",
)
def a_truncated_checkpoint(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  largest = max(
    (path for path in (run / "checkpoints").rglob("*") if path.is_file()),
    key=lambda path: path.stat().st_size,
  )
  os.truncate(largest, 100)
  return s.usage(s.separate(s.inputs, checkpoint=run))


@case(1, r"^error: .*pipe\.wav: a FIFO \(named pipe\), not a regular file: not read$")
def a_fifo_in_the_input_folder(s):
  """Opening a FIFO blocks until a writer comes: it must be refused unopened."""
  os.mkfifo(s.inputs / "pipe.wav")
  s.absent += [s.out / "pipe_s1.wav"]
  return s.separate(s.inputs)


@case(
  1,
  r"^error: .*tick\.wav: 1 samples at 48000 Hz are too short: none remain at the "
  r"model's 8000 Hz$",
)
def one_sample_at_48_khz(s):
  soundfile.write(s.inputs / "tick.wav", [0.5], 48000, subtype="PCM_16")
  s.absent += [s.out / "tick_s1.wav"]
  return s.separate(s.inputs)


@case(
  1,
  r"^error: .*full\.wav: .*full_s2\.wav cannot be written \(System error\.\): none "
  r"of its outputs written$",
)
def a_full_disk(s):
  """The disk fills while the second source is written: libsndfile's own error, for
  that file only; its first source goes too."""
  soundfile.write(s.inputs / "full.wav", _noise(7), RATE, subtype="PCM_16")
  write = soundfile.SoundFile.write

  def fail_on_full_s2(file, data):
    if "source 2 of 2 of full.wav" in str(file.comment):  # Its name is a random one.
      raise soundfile.LibsndfileError(2, "System error.")
    return write(file, data)

  s.patch.setattr(soundfile.SoundFile, "write", fail_on_full_s2)
  s.absent += [s.out / "full_s1.wav", s.out / "full_s2.wav"]
  return s.separate(s.inputs)


@case(
  1,
  r"^error: .*x\.wav: .*x_s2\.wav appeared while it was separated \(another run "
  r"writing into the same folder\?\): not replaced, none of its outputs written$",
)
def another_run_writes_the_same_outputs_meanwhile(s):
  """Another `eesep separate` puts its `x_s2.wav` into the folder after this run has
  checked it: its file stays, this run's `x_s1.wav` is not left alone."""
  soundfile.write(s.inputs / "x.wav", _noise(8), RATE, subtype="PCM_16")
  other = s.tmp / "other.wav"
  soundfile.write(other, _noise(9), RATE, subtype="PCM_16")
  place = audio.place

  def race(partial, path, replace=False):
    if pathlib.Path(path).name == "x_s2.wav" and not pathlib.Path(path).exists():
      place(
        audio.write_partial(
          path, _noise(9) * 0.5, RATE, comment=separate_files.output_mark(other, 2, 2)
        ),
        path,
      )
      s.keep(pathlib.Path(path))
    return place(partial, path, replace)

  s.patch.setattr(audio, "place", race)
  s.absent.append(s.out / "x_s1.wav")
  return s.separate(s.inputs)


@case(
  1,
  r"^error: .*posthoc_calibration\.json: damaged post-hoc calibration, beta_scale "
  r"holds \[1\.0, nan, -2\.0\]: every value must be finite",
)
def a_posthoc_file_with_nan_and_negative_scales(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  (run / "posthoc_calibration.json").write_text('{"beta_scale": [1.0, NaN, -2.0]}')
  s.keep(run / "posthoc_calibration.json")
  return s.usage(s.separate(s.inputs, checkpoint=run))


@case(
  1,
  r"^error: .*posthoc_calibration\.json: damaged post-hoc calibration, beta_scale "
  r"holds \[1\.0, 1\.0, -2\.0\]: every scale must be positive",
)
def a_posthoc_file_with_a_negative_scale(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  # A negative cross-talk slope is a valid one (the variance narrows with cross-talk).
  (run / "posthoc_calibration.json").write_text(
    '{"beta_scale": [1.0, 1.0, -2.0], "crosstalk_slope": [-1.0, -1.0, -1.0]}'
  )
  s.keep(run / "posthoc_calibration.json")
  return s.usage(s.separate(s.inputs, checkpoint=run))


@case(1, r"^error: .*posthoc_calibration\.json: damaged post-hoc calibration, not JSON")
def a_truncated_posthoc_file(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  (run / "posthoc_calibration.json").write_text('{"beta_scale": [1.0, ')
  return s.usage(["evaluate", "--checkpoint", run, "--out", s.out])


@case(
  1,
  r"^error: .*posthoc_calibration\.json: damaged post-hoc calibration, unknown keys "
  r"\['gamma'\]",
)
def a_posthoc_file_with_an_unknown_key(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  (run / "posthoc_calibration.json").write_text('{"gamma": [1, 1, 1]}')
  return s.usage(s.separate(s.inputs, checkpoint=run))


@case(
  1,
  r"^error: .*posthoc_calibration\.json: damaged post-hoc calibration, its regime is "
  r"not",
)
def a_posthoc_regime_without_its_keys(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  (run / "posthoc_calibration.json").write_text(
    '{"beta_scale": [1, 1, 1], "regime": {"chunk_seconds": "4"}}'
  )
  return s.usage(s.separate(s.inputs, checkpoint=run))


@case(
  2,
  r"^error: --chunk-seconds 0\.004: 0\.004 s is shorter than the model's 8 encoder "
  r"kernels",
)
def chunk_seconds_shorter_than_the_encoder(s):
  return s.usage(
    s.separate(s.inputs, flags=("--chunk-seconds", "0.004", "--overlap-seconds", "0.001"))
  )


@case(
  2,
  r"^error: --chunk-seconds 1e\+09: 8 chunks that long at once would not fit in this "
  r"device's memory; at most \d+ s",
)
def chunk_seconds_beyond_memory(s):
  return s.usage(s.separate(s.inputs, flags=("--chunk-seconds", "1e9")))


@case(
  2,
  r"^error: --overlap-seconds 0\.0001: 0\.0001 s is shorter than the model's 2 "
  r"encoder kernels",
)
def overlap_seconds_shorter_than_the_encoder(s):
  return s.usage(s.separate(s.inputs, flags=("--overlap-seconds", "0.0001")))


@case(
  2,
  r"^error: --overlap-seconds 0\.3: 0\.3 s is more than half of the 0\.5 s chunk "
  r"\(2400 of 4000 samples at 8000 Hz\): at most 0\.25 s$",
)
def overlap_seconds_over_half_a_chunk(s):
  return s.usage(s.separate(s.inputs, flags=("--chunk-seconds", "0.5", "--overlap-seconds", "0.3")))


@case(0)
def an_out_dir_without_hard_links(s):
  """Some network file systems refuse hard links: outputs are placed all the same."""

  def refuse(*unused_args, **unused_kwargs):
    raise OSError(errno.EPERM, os.strerror(errno.EPERM))

  s.patch.setattr(os, "link", refuse)
  return s.separate(s.inputs)


# ------------------------------------------------------------- info, evaluate, calibrate


@case(2, r"^error: --preset foo: no such preset; presets: tiny, press-4, press-12$")
def info_with_an_unknown_preset(s):
  return s.usage(["info", "--preset", "foo"])


@case(2, r"^error: .*nowhere: holds no config\.json")
def evaluate_with_a_missing_checkpoint(s):
  return s.usage(["evaluate", "--checkpoint", s.tmp / "nowhere", "--out", s.out])


@case(2, r"^error: --data-root .*elsewhere: does not exist$")
def evaluate_with_a_missing_data_root(s):
  return s.usage(
    ["evaluate", "--checkpoint", s.world.run, "--out", s.out, "--data-root", s.tmp / "elsewhere"]
  )


@case(
  1,
  r"^error: data/demo: the training data's root does not exist here .* pass "
  r"--data-root$",
)
def evaluate_outside_the_repository(s):
  """The demo run's config names `data/demo`, relative, with synthesis on: run
  elsewhere, evaluate must say so, not make a corpus there."""
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  config = json.loads((run / checkpoints.CONFIG_FILE).read_text())
  config["data"].update(root="data/demo", synthesize_if_missing=True)
  (run / checkpoints.CONFIG_FILE).write_text(json.dumps(config))
  s.cwd = s.tmp / "elsewhere"
  s.cwd.mkdir()
  s.absent.append(s.cwd / "data")
  return s.usage(["evaluate", "--checkpoint", run, "--out", s.out])


@case(2, r"^error: --target-snr: 'inf' is not a finite number of dB")
def calibrate_with_an_infinite_target(s):
  return s.usage(["calibrate", "--checkpoint", s.world.run, "--out", s.out, "--target-snr", "inf"])


@case(2, r"^error: --confidences: '1\.5' is not a probability in \(0, 1\]$")
def evaluate_with_a_confidence_above_one(s):
  return s.usage(
    ["evaluate", "--checkpoint", s.world.run, "--out", s.out, "--confidences", "1.5,0,-2,nan"]
  )


@case(2, r"^error: --targets: 'nan' is not a finite number of dB$")
def evaluate_with_nan_targets(s):
  return s.usage(["evaluate", "--checkpoint", s.world.run, "--out", s.out, "--targets", "nan,inf"])


@case(2, r"^error: --confidences: '0' is not a probability in \(0, 1\]$")
def calibrate_with_a_zero_confidence(s):
  return s.usage(
    ["calibrate", "--checkpoint", s.world.run, "--out", s.out, "--confidences", "0.9,0"]
  )


@case(
  1,
  r"^error: wsj0-mix 'cv' at .*corpus: 1 utterance: calibrate needs at least 2 "
  r"\(the scales are fitted on one half, the threshold certified on the other\)",
)
def calibrate_with_one_validation_utterance(s):
  """Refused before any work: nothing written in the run's folder."""

  def keep_one(root):
    for folder in ("mix", "s1", "s2"):
      (root / "cv" / folder / "cv1.wav").unlink()

  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  for path in run.rglob("*"):
    if path.is_file():
      s.keep(path)
  s.absent.append(run / "posthoc_calibration.json")
  return s.usage(
    ["calibrate", "--checkpoint", run, "--out", s.out, "--data-root", s.corpus_with(keep_one)]
  )


@case(2, r"^error: --max-utterances 1: calibrate needs at least 2 \(the scales")
def calibrate_on_one_utterance(s):
  return s.usage(
    ["calibrate", "--checkpoint", s.world.run, "--out", s.out, "--max-utterances", "1"]
  )


@case(2, r"^error: --num-train, --num-valid, --num-test: all zero: nothing to synthesise$")
def synthesising_nothing(s):
  s.absent.append(s.tmp / "corpus")
  return s.usage(
    [
      "data",
      "synth",
      "--out",
      s.tmp / "corpus",
      "--num-train",
      "0",
      "--num-valid",
      "0",
      "--num-test",
      "0",
    ]
  )


@case(2, r"^error: --num-workers: '-2' is not an integer of at least 1")
def negative_synthesis_workers(s):
  """Refused before the folder is made: the corrected rerun finds nothing in its way."""
  s.absent.append(s.tmp / "corpus")
  return s.usage(["data", "synth", "--out", s.tmp / "corpus", "--num-workers", "-2"])


# ---------------------------------------------------------------------- eesep train


@case(2, r"^error: config\.steps: -3: must be a positive integer$")
def negative_steps(s):
  return s.train("--config.steps=-3")


@case(2, r"^error: config\.batch_size: 0: must be a positive integer$")
def zero_batch_size(s):
  return s.train("--config.batch_size=0")


@case(2, r"^error: config\.data\.segment_seconds: -1\.0: must be a positive number$")
def negative_segment_seconds(s):
  return s.train("--config.data.segment_seconds=-1.0")


@case(2, r"^error: config\.data\.kind: 'wsj0mix': must be one of wsj0-mix, librimix")
def a_dataset_kind_typo(s):
  return s.train("--config.data.kind=wsj0mix")


@case(2, r"^error: config\.model: unknown variance parameterisation 'studnet-snr'")
def a_parameterisation_typo(s):
  return s.train("--config.model.variance.parameterisation=studnet-snr")


@case(
  2,
  r"^error: --config\.no_such_key=1: cannot apply it to .*demo\.py: 'no_such_key' "
  r"is not a field of this config$",
)
def an_unknown_config_key(s):
  return s.train("--config.no_such_key=1")


@case(1, r"^error: wsj0-mix: the root folder .*typo does not exist$")
def a_mistyped_data_root(s):
  """The demo config synthesises its corpus, but only at its own root."""
  s.absent.append(s.tmp / "typo")
  return s.train(f"--config.data.root={s.tmp / 'typo'}")


@case(1, r"^  .*tr/mix/tr1\.wav: 1 of 2000 samples are NaN or infinite$")
def nan_in_a_training_file(s):
  def poison(root):
    signal, _ = soundfile.read(root / "tr" / "mix" / "tr1.wav")
    signal[7] = np.nan
    soundfile.write(root / "tr" / "mix" / "tr1.wav", signal, RATE, subtype="FLOAT")

  return s.train(f"--config.data.root={s.corpus_with(poison)}")


@case(
  1,
  r"^  .*cv/s2/cv1\.wav: truncated: the header declares 2000 frames but the file "
  r"holds \d+$",
  r"^\(strict=False skips these examples instead: --config\.data\.strict=False",
)
def a_truncated_validation_file(s):
  """Found before step 1 (every split's headers are read), with the flag that skips it."""

  def cut(root):
    path = root / "cv" / "s2" / "cv1.wav"
    os.truncate(path, os.path.getsize(path) // 2)

  return s.train(f"--config.data.root={s.corpus_with(cut)}")


@case(
  2,
  r"^error: .*run: cannot resume the run there with this config, which differs from "
  r"its config\.json in model\.width 32 -> 48\. Train in a new --workdir",
)
def resuming_with_a_changed_model(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  for path in run.rglob("*"):
    if path.is_file():
      s.keep(path)
  argv = s.train("--config.model.width=48", f"--config.data.root={s.world.corpus}", workdir=run)
  s.absent.remove(run)
  return argv


@case(1, r"^error: .*run/config\.json: damaged, not a JSON config")
def resuming_a_run_whose_config_is_corrupt(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  (run / checkpoints.CONFIG_FILE).write_text("not json")
  s.keep(run / checkpoints.CONFIG_FILE)
  argv = s.train(f"--config.data.root={s.world.corpus}", workdir=run)
  s.absent.remove(run)
  return argv


@case(
  2,
  r"^error: .*workdir: holds files that are no eesep train run \(config\.json, "
  r"metrics\.jsonl\): train in a new or empty --workdir$",
)
def a_workdir_with_a_users_config_and_metrics(s):
  workdir = s.tmp / "workdir"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"foo": 1}')
  (workdir / "metrics.jsonl").write_text('{"mine": 2}\n')
  argv = s.train(f"--config.data.root={s.world.corpus}", workdir=workdir)
  s.absent.remove(workdir)
  for path in workdir.iterdir():
    s.keep(path)
  s.absent += [workdir / "checkpoints", workdir / checkpoints.RUN_FILE]
  return argv


@case(2, r"^error: .*run: holds a run whose checkpoints are gone: --fresh starts it over")
def a_run_whose_checkpoints_are_gone(s):
  run = s.tmp / "run"
  shutil.copytree(s.world.run, run)
  (run / checkpoints.RUN_FILE).write_text('{"run_id": "0123"}')
  (run / "metrics.jsonl").write_text('{"step": 2, "train_loss": 1.0}\n')
  shutil.rmtree(run / "checkpoints")
  for path in run.iterdir():
    s.keep(path)
  argv = s.train(f"--config.data.root={s.world.corpus}", workdir=run)
  s.absent.remove(run)
  s.absent.append(run / "checkpoints")
  return argv


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, world, tmp_path, monkeypatch):
  setup, code, patterns = CASES[name]
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  shutil.copy(world.good, inputs / "good.wav")
  setting = Setting(
    world=world, tmp=tmp_path, inputs=inputs, out=tmp_path / "out", patch=monkeypatch
  )
  argv = setup(setting)

  got, stdout, stderr = _run(argv, cwd=setting.cwd, env=setting.env)
  assert got == code, (stdout, stderr)
  for pattern in patterns:
    assert len([line for line in stderr if re.search(pattern, line)]) == 1, (pattern, stderr)
  if code:
    assert len([line for line in stderr if line.startswith("error: ")]) == 1, stderr
  assert not any(line.startswith("Traceback") for line in stderr)
  if setting.good_separated:
    for k, samples in world.reference.items():
      np.testing.assert_array_equal(_samples(setting.out / f"good_s{k}.wav"), samples)
  for path, content in setting.intact.items():
    assert path.read_bytes() == content, path
  for path in setting.absent:
    assert not path.exists(), path
  assert not list(tmp_path.rglob(f"*{audio.PARTIAL_SUFFIX}*"))  # Audio, files.atomic_writes.


def test_the_debug_flag_and_variable_show_the_traceback(world, tmp_path):
  argv = ["evaluate", "--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "out"]
  for extra, env in (([], {"EESEP_DEBUG": "1"}), (["--debug"], {})):
    code, _, stderr = _run([*argv, *extra], env=env)
    assert code == 2 and stderr[0] == "Traceback (most recent call last):", stderr
    assert stderr[-1].startswith("error: ") and "holds no config.json" in stderr[-1]


# ------------------------------------------------------------------- writes and reads


def test_nothing_out_of_range_or_non_finite_is_ever_written(tmp_path):
  """The last line of defence, whatever computed the samples."""
  for samples, problem in (
    (np.array([0.1, np.nan, np.inf]), "2 of 3 samples to write are NaN or infinite"),
    (np.array([0.5, -1.5]), "beyond full scale"),
  ):
    with pytest.raises(audio.AudioError, match=re.escape(problem)):
      audio.write_audio(tmp_path / "x.wav", samples, RATE)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.ENOTSUP])
def test_without_hard_links_placing_still_never_replaces_a_file(tmp_path, monkeypatch, refusal):
  """`audio.place`'s fallback where `os.link` is refused: an exclusive create claims
  the name, so an existing file is kept and reported; otherwise the file moves in."""

  def refuse(*unused_args, **unused_kwargs):
    raise OSError(refusal, os.strerror(refusal))

  monkeypatch.setattr(os, "link", refuse)
  signal = _noise(30, level=0.1)
  partial = audio.write_partial(tmp_path / "x.wav", signal, RATE, comment="new")
  taken = tmp_path / "taken.wav"
  taken.write_bytes(b"another run's file")
  with pytest.raises(FileExistsError):
    audio.place(partial, taken)
  assert taken.read_bytes() == b"another run's file" and os.path.exists(partial)
  audio.place(partial, tmp_path / "x.wav")
  assert not os.path.exists(partial)
  assert audio.read_comment(tmp_path / "x.wav") == "new"
  np.testing.assert_allclose(soundfile.read(tmp_path / "x.wav")[0], signal, atol=2.0**-15)


def test_inference_restores_the_parameters_alone(world, monkeypatch):
  requested = []
  restore = ocp.CheckpointManager.restore

  def spy(self, step, args=None):
    requested.append(args)
    return restore(self, step, args=args)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
  _, variables = checkpoints.restore_params(world.run)
  [args] = requested
  assert set(args["state"].item) == {"params"} and args["state"].partial_restore
  assert set(variables) == {"params"}


def test_a_long_file_is_announced_and_shows_a_bar_over_its_chunks(world, tmp_path, monkeypatch):
  monkeypatch.setattr(separate_files, "LONG_INPUT_SECONDS", 1.0)
  path = tmp_path / "long.wav"
  soundfile.write(path, _noise(6, 4 * LENGTH), RATE, subtype="PCM_16")
  code, _, stderr = _run(
    [
      "separate",
      path,
      "--checkpoint",
      world.run,
      "--out-dir",
      tmp_path / "out",
      "--exit-index",
      "last",
      "--chunk-batch",
      "1",
      "--chunk-seconds",
      str(LENGTH / RATE),
      "--overlap-seconds",
      "0.1",
    ]
  )
  assert code == 0, stderr
  assert any(
    re.fullmatch(
      rf"warning: {path}: [\d.]+ hours of audio at 8000 Hz: separating "
      "it takes a while",
      line,
    )
    for line in stderr
  ), stderr
  assert any(re.search(r"long\.wav: +\d+%.*\| \d/6 ", line) for line in stderr), stderr


# ------------------------------------------------------------------- a killed separation


def test_a_killed_separation_leaves_no_partial_file_and_a_rerun_completes_it(
  world, tmp_path, compile_cache
):
  from conftest import train_env

  inputs, out = tmp_path / "inputs", tmp_path / "out"
  inputs.mkdir()
  # Each file a few chunks long (`inference.CHUNK_SECONDS`), so the kill lands mid-folder.
  seconds = 10
  names = [f"take{k:02d}" for k in range(6)]
  for k, name in enumerate(names):
    soundfile.write(inputs / f"{name}.wav", _noise(10 + k, seconds * RATE), RATE, subtype="PCM_16")
  command = [
    sys.executable,
    "-m",
    "eesep_jax.app.cli",
    "separate",
    str(inputs),
    "--checkpoint",
    str(world.run),
    "--out-dir",
    str(out),
    "--exit-index",
    "last",
    "--quiet",
  ]
  env = train_env(compile_cache)

  process = subprocess.Popen(
    command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  deadline = time.monotonic() + 600
  while not (out / f"{names[0]}_s2.wav").exists():
    assert process.poll() is None, process.stderr.read()[-4000:]
    assert time.monotonic() < deadline
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  written = sorted(out.glob("*.wav"))
  for path in written:  # Every WAV under its real name is whole.
    assert soundfile.info(path).frames == seconds * RATE and separate_files.is_output(path)
  # A kill between a file's two renames leaves its first output alone: it is redone.
  complete = [name for name in names if all((out / f"{name}_s{k}.wav").exists() for k in (1, 2))]
  assert 1 <= len(complete) < len(names), "the run was not killed mid-folder"
  finished = {out / f"{name}_s{k}.wav": None for name in complete for k in (1, 2)}
  for path in finished:
    finished[path] = (path.stat().st_mtime_ns, path.read_bytes())

  rerun = subprocess.run(
    command[:-1], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  assert sorted(path.name for path in out.iterdir()) == sorted(
    f"{name}_s{k}.wav" for name in names for k in (1, 2)
  )
  for path, (mtime, content) in finished.items():
    assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, content), path
  kept = [line for line in rerun.stdout.splitlines() if "separated by an earlier run" in line]
  assert len(kept) == len(complete)


# -------------------------------------------------------- a training loop that fails


@pytest.fixture
def stand_in_training(monkeypatch):
  """`train.make_train_step` and `train.evaluate_exits` replaced by stand-ins: a step
  that counts (and skips the updates of the steps in `skips`), validation numbers
  that rise with the step. `fail_at` makes that step raise."""
  plan = {"skips": set(), "fail_at": None}

  def make_train_step(config, model, optimizer):
    def step(state, batch):
      del batch
      number = int(state.step) + 1
      if number == plan["fail_at"]:
        raise RuntimeError(f"the stand-in step fails at step {number}")
      # Counted where `optax.apply_if_finite` counts them.
      opt_state = state.opt_state._replace(
        total_notfinite=jnp.int32(sum(1 for s in plan["skips"] if s <= number))
      )
      metrics = {
        "train_loss": jnp.float32(np.nan if number in plan["skips"] else 1.0),
        "train_loss_per_exit": jnp.ones(3),
        "grad_norm": jnp.float32(1.0),
        "skipped_steps": train.skipped_steps(opt_state),
      }
      return state.replace(step=state.step + 1, opt_state=opt_state), metrics

    return step

  validations = []

  def evaluate_exits(params, model, batches, sharding=None):
    del sharding
    validations.append(len(list(batches)))
    return {"si_snri": [1.0, 2.0, 4.0 - len(validations)], "nll": [0.0, 0.0, 0.0]}

  monkeypatch.setattr(train, "make_train_step", make_train_step)
  monkeypatch.setattr(train, "evaluate_exits", evaluate_exits)
  return plan


def test_an_exception_in_training_saves_a_checkpoint_first(world, tmp_path, stand_in_training):
  stand_in_training["fail_at"] = 4
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError, match="fails at step 4"):
    _run(
      [
        "train",
        "--config",
        DEMO_CONFIG,
        "--workdir",
        workdir,
        *TRAIN_FLAGS,
        f"--config.data.root={world.corpus}",
        "--config.steps=10",
        "--config.checkpoint_every=100",
        "--config.eval_every=100",
      ]
    )
  assert checkpoints.latest_step(workdir) == 3
  assert checkpoints.restore_params(workdir, step=3)[0] == config_lib.model_config(
    checkpoints.read_config(workdir)
  )


def test_training_warns_about_skipped_steps_validates_aloud_and_sums_up(
  world, tmp_path, stand_in_training
):
  stand_in_training["skips"] = {2, 3, 7}
  workdir = tmp_path / "run"
  code, stdout, stderr = _run(
    [
      "train",
      "--config",
      DEMO_CONFIG,
      "--workdir",
      workdir,
      *TRAIN_FLAGS,
      f"--config.data.root={world.corpus}",
      "--config.steps=8",
      "--config.log_every=4",
      "--config.eval_every=4",
      "--config.checkpoint_every=4",
    ]
  )
  assert code == 0, stderr
  warnings_ = [line for line in stderr if line.startswith("warning: steps")]
  assert warnings_ == [
    "warning: steps 1-4: 2 skipped, their loss or gradient was not finite (2 in all)",
    "warning: steps 5-8: 1 skipped, their loss or gradient was not finite (3 in all)",
  ]
  assert stdout[0].startswith(f"checking the data: wsj0-mix at {world.corpus}")
  assert f"step 4: validating on 2 utterances of wsj0-mix 'cv' at {world.corpus}" in stdout
  assert "step 8: validation SI-SNRi per exit 1.00, 2.00, 2.00 dB" in stdout
  summary = stdout[-3:]
  assert re.fullmatch(
    r"trained to step 8 of 8 \(8 steps in [\d.]+ min\); 3 steps skipped "
    r"in all \(non-finite loss or gradient\)",
    summary[0],
  ), summary
  assert summary[1] == (
    "best validation SI-SNRi (step 4): exit 1 1.00 dB, exit 2 2.00 dB, exit 3 3.00 dB"
  )
  assert summary[2].startswith(f"checkpoints: {workdir / 'checkpoints'} (latest step 8, best 4)")


def test_a_resumed_run_may_change_when_it_stops_and_how_it_logs(world):
  saved = checkpoints.read_config(world.run)
  changed = config_lib.load_config(
    DEMO_CONFIG,
    [
      f"data.root={world.corpus}",
      *(flag.removeprefix("--config.") for flag in TRAIN_FLAGS),
      "steps=20000",
      "log_every=1",
      "eval_every=7",
      "checkpoint_every=3",
      "data.strict=False",
    ],
  )
  assert config_lib.resume_differences(saved, changed) == []
  changed.optimizer.learning_rate = 0.5
  assert config_lib.resume_differences(saved, changed) == [
    ("optimizer.learning_rate", saved.optimizer.learning_rate, 0.5)
  ]


def test_strict_false_from_the_command_line_skips_a_bad_validation_file(
  world, tmp_path, stand_in_training
):
  corpus = tmp_path / "corpus"
  shutil.copytree(world.corpus, corpus)
  path = corpus / "cv" / "mix" / "cv0.wav"
  os.truncate(path, os.path.getsize(path) // 2)
  code, stdout, stderr = _run(
    [
      "train",
      "--config",
      DEMO_CONFIG,
      "--workdir",
      tmp_path / "run",
      *TRAIN_FLAGS,
      f"--config.data.root={corpus}",
      "--config.data.strict=False",
      "--config.steps=1",
    ]
  )
  assert code == 0, stderr
  assert f"warning: wsj0-mix 'cv' at {corpus}: 1 of 2 examples are unusable:" in stderr
  assert f"step 1: validating on 1 utterances of wsj0-mix 'cv' at {corpus}" in stdout


def test_a_diverged_run_exits_1_and_recommends_no_checkpoint(
  world, tmp_path, stand_in_training, monkeypatch
):
  monkeypatch.setattr(
    train,
    "evaluate_exits",
    lambda params, model, batches, sharding=None: {"si_snri": [float("nan")] * 3, "nll": [0.0] * 3},
  )
  code, stdout, stderr = _run(
    [
      "train",
      "--config",
      DEMO_CONFIG,
      "--workdir",
      tmp_path / "run",
      *TRAIN_FLAGS,
      f"--config.data.root={world.corpus}",
      "--config.steps=2",
    ]
  )
  assert code == 1, stderr
  assert [line for line in stderr if line.startswith("error: ")] == [
    f"error: {tmp_path / 'run'}: training diverged: the validation SI-SNRi at step 2 is "
    "not finite; no checkpoint is fit to use (lower config.optimizer.learning_rate and "
    "train in a new --workdir)"
  ]
  assert not any("eesep separate --checkpoint" in line for line in stdout), stdout


def test_every_step_skipped_exits_1(world, tmp_path, stand_in_training):
  stand_in_training["skips"] = {1, 2}
  code, _, stderr = _run(
    [
      "train",
      "--config",
      DEMO_CONFIG,
      "--workdir",
      tmp_path / "run",
      *TRAIN_FLAGS,
      f"--config.data.root={world.corpus}",
      "--config.steps=2",
    ]
  )
  assert code == 1, stderr
  assert stderr[-1].endswith(
    "every one of its 2 steps was skipped (non-finite loss or gradient): nothing was trained"
  ), stderr


def test_fresh_starts_a_run_whose_checkpoints_are_gone_over(world, tmp_path, stand_in_training):
  argv = [
    "train",
    "--config",
    DEMO_CONFIG,
    "--workdir",
    tmp_path / "run",
    *TRAIN_FLAGS,
    f"--config.data.root={world.corpus}",
    "--config.steps=2",
  ]
  assert _run(argv)[0] == 0
  first_id = checkpoints.run_id(tmp_path / "run")
  metrics = tmp_path / "run" / train.METRICS_FILE
  one_run = metrics.read_text().splitlines()
  shutil.rmtree(tmp_path / "run" / "checkpoints")
  assert _run(argv)[0] == 2
  code, _, stderr = _run([*argv, "--fresh"])
  assert code == 0, stderr
  assert checkpoints.run_id(tmp_path / "run") not in (None, first_id)
  assert len(metrics.read_text().splitlines()) == len(one_run)  # One run's log, not two.


def _interrupt(command, started, compile_cache):
  """Runs `command` (an `eesep` command line) in a subprocess, sends it SIGINT (Ctrl-C)
  once `started()` is true, and checks that it ends with one line and exit code 130
  and no traceback; returns its stdout and stderr."""
  from conftest import train_env

  # A command started from a shell in the foreground, as Ctrl-C reaches it: a suite run
  # in the background (`make test &`) has SIGINT ignored, which the child would inherit.
  process = subprocess.Popen(
    [sys.executable, "-m", "eesep_jax.app.cli", *map(str, command)],
    cwd=REPO,
    env=train_env(compile_cache),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  deadline = time.monotonic() + 600
  while not started():
    if process.poll() is not None:
      pytest.fail(
        f"exited {process.returncode} before the interrupt: {process.stderr.read()[-4000:]}"
      )
    assert time.monotonic() < deadline
    time.sleep(0.01)
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr[-4000:]
  assert stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C)", stderr[-4000:]
  assert "Traceback" not in stderr
  return stdout, stderr


def test_in_a_multi_process_run_only_the_lead_prepares_the_workdir_and_the_others_wait(
  world, tmp_path, monkeypatch
):
  """Every process checks the workdir, they all meet, the lead alone marks it (and
  empties it for --fresh), and they meet again before any reads what is in it."""
  from jax.experimental import multihost_utils

  class Stop(Exception):
    """Raised at the second barrier: where the workdir is read."""

  events = []
  check, start = checkpoints.check_workdir, checkpoints.start_run
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(
    checkpoints, "check_workdir", lambda *args: events.append("check") or check(*args)
  )
  monkeypatch.setattr(
    checkpoints, "start_run", lambda *args: events.append("start") or start(*args)
  )

  def barrier(name):
    events.append("barrier")
    if events.count("barrier") == 2:
      raise Stop(name)

  monkeypatch.setattr(multihost_utils, "sync_global_devices", barrier)
  for index, expected in (
    (1, ["check", "barrier", "barrier"]),
    (0, ["check", "barrier", "start", "barrier"]),
  ):
    events.clear()
    monkeypatch.setattr(jax, "process_index", lambda: index)
    with pytest.raises(Stop):
      train.train_and_evaluate(_run_config(world.corpus), tmp_path / f"run{index}")
    assert events == expected, index
    assert (checkpoints.run_id(tmp_path / f"run{index}") is None) == (index == 1)


def test_ctrl_c_during_separate_is_one_line_and_exit_130(world, tmp_path, compile_cache):
  inputs, out = tmp_path / "inputs", tmp_path / "out"
  inputs.mkdir()
  for k in range(6):
    soundfile.write(inputs / f"take{k}.wav", _noise(20 + k, 10 * RATE), RATE, subtype="PCM_16")
  _interrupt(
    [
      "separate",
      inputs,
      "--checkpoint",
      world.run,
      "--out-dir",
      out,
      "--exit-index",
      "last",
      "--quiet",
    ],
    lambda: (out / "take0_s2.wav").exists(),
    compile_cache,
  )
  assert not [path for path in out.iterdir() if not path.name.endswith(".wav")]
  for k in range(6):  # Whole source sets only.
    assert (out / f"take{k}_s1.wav").exists() == (out / f"take{k}_s2.wav").exists()


def test_ctrl_c_during_train_saves_the_step_it_reached_and_exit_130(world, tmp_path, compile_cache):
  """Interrupted between checkpoints, the run saves the step it reached (orbax writes
  a checkpoint under a temporary name first), its log holds whole lines, and it
  resumes from there."""
  workdir = tmp_path / "run"
  # The schedule's length is fixed (`decay_steps`) so that many steps compile as few do.
  _interrupt(
    [
      "train",
      "--config",
      DEMO_CONFIG,
      "--workdir",
      workdir,
      *TRAIN_FLAGS,
      f"--config.data.root={world.corpus}",
      "--config.steps=100000",
      "--config.optimizer.decay_steps=100",
      "--config.checkpoint_every=3",
      "--config.eval_every=100000",
      "--config.log_every=1",
    ],
    lambda: (workdir / "checkpoints" / "3").is_dir(),
    compile_cache,
  )
  saved = sorted(path.name for path in (workdir / "checkpoints").iterdir())
  assert saved and all(name.isdigit() for name in saved), saved  # No temporary folder.
  step = checkpoints.latest_step(workdir)
  assert step >= 3
  records = [json.loads(line) for line in (workdir / train.METRICS_FILE).read_text().splitlines()]
  assert records and records[-1]["step"] <= step
  assert checkpoints.check_workdir(workdir) == "resume"


def test_ctrl_c_during_evaluate_leaves_no_report_and_exit_130(world, tmp_path, compile_cache):
  corpus = tmp_path / "corpus"
  shutil.copytree(world.corpus, corpus)
  # Enough utterances that the evaluation outlasts the interrupt.
  write_speech_mixtures(corpus, "tt", [f"long{k}" for k in range(20)], length=2 * RATE)
  out = tmp_path / "out"
  _interrupt(
    ["evaluate", "--checkpoint", world.run, "--data-root", corpus, "--out", out],
    out.exists,
    compile_cache,
  )
  assert not out.exists()  # Made by the run, and left empty: removed.
