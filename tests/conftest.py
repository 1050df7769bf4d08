"""Shared fixtures: a tiny synthetic corpus and one short real training run.

Training runs happen in subprocesses through the `eesep train` command (as users run
it), sharing a persistent compilation cache so later runs of the same step reuse the
first run's executable.
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import soundfile

REPO = pathlib.Path(__file__).resolve().parents[1]

# Most of the suite's time is XLA compiling. One persistent compilation cache, set
# before JAX is imported, lets the xdist workers and the training subprocesses read
# the programs another of them compiled, and a rerun read this run's.
COMPILE_CACHE = pathlib.Path(tempfile.gettempdir()) / f"eesep-jax-test-cache-{os.getuid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(COMPILE_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The suite's programs are small, so LLVM's optimisation passes and XLA:CPU's fusion
# emitters cost more compile time than they save in run time. Level 0 took the training
# subprocess's train step from 14 s to 9 s to compile, with the same validation SI-SNRi
# per exit to the printed 0.01 dB; the older emitters then take the tiny preset's
# gradient from 4.2 s to 2.4 s.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# Neural speech (`data.neural_tts`) is cached here, not in the user's cache, and kept
# between runs as the compilation cache is.
os.environ.setdefault(
  "EESEP_CACHE", str(pathlib.Path(tempfile.gettempdir()) / f"eesep-jax-test-speech-{os.getuid()}")
)
DEMO_CONFIG = REPO / "eesep_jax" / "configs" / "demo.py"

# Small enough for CI (2 cores) yet a real run: the demo's three exits, one block each
# and one shared block, 0.25 s segments.
TRAIN_STEPS = 6
TRAIN_OVERRIDES = (
  f"--config.steps={TRAIN_STEPS}",
  "--config.batch_size=8",
  "--config.model.num_shared_blocks=1",
  "--config.model.num_exit_blocks=3",
  "--config.data.segment_seconds=0.25",
  "--config.data.synthesize_if_missing=False",
  "--config.checkpoint_every=2",
  "--config.log_every=1",
  "--config.eval_every=1000",
  "--config.eval_max_utterances=2",
  "--config.optimizer.warmup_steps=2",
  # A schedule that does not depend on `steps`: the pod's runs, which stop where SIGTERM
  # lands, take the same learning rates at every step as this run.
  "--config.optimizer.decay_steps=20",
)
# The same, as `config_lib.load_config` overrides.
TRAIN_CONFIG_OVERRIDES = tuple(flag.removeprefix("--config.") for flag in TRAIN_OVERRIDES)


# Session fixtures that take minutes to build, and the xdist group of the tests that use
# them. `make test` spreads tests over CPU cores with pytest-xdist, where each worker
# builds its own session fixtures: keeping every test that needs one of these on one
# worker (`--dist loadgroup`) builds each once. The pod's runs are compared with the
# one-device run, so they share its group.
EXPENSIVE_FIXTURES = {
  "trained_workdir": "trained_workdir",
  "pod_runs": "trained_workdir",
  "smoke_ablation": "smoke_ablation",
}


@pytest.hookimpl(tryfirst=True)  # Before xdist's own hook reads the groups.
def pytest_collection_modifyitems(items):
  for item in items:
    for name, group in EXPENSIVE_FIXTURES.items():
      if name in item.fixturenames:
        item.add_marker(pytest.mark.xdist_group(group))
        break


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
  """A wsj0-2mix-layout corpus of 16/4/4 two-speaker mixtures at 8 kHz."""
  from eesep_jax import data

  root = tmp_path_factory.mktemp("corpus") / "demo"
  data.synthesize_corpus(root, num_train=16, num_valid=4, num_test=4, progress=False)
  return root


def write_speech_mixtures(root, split, names, *, length, rate=8000, silent_s2=()):
  """Writes two-speaker wsj0-mix-layout mixtures `root/split/{mix,s1,s2}/<name>.wav`.

  Sources are harmonic tones under a 4 Hz envelope, different for every name; the
  second source of the names in `silent_s2` is silent.
  """

  def speech_like(seed, pitch):
    rng = np.random.default_rng(seed)
    t = np.arange(length) / rate
    voiced = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi)))
    return 0.2 * envelope * voiced + 1e-3 * rng.standard_normal(length)

  for k, name in enumerate(names):
    s1 = speech_like(k, 120 + 20 * k)
    s2 = np.zeros(length) if name in silent_s2 else speech_like(10 + k, 210 + 15 * k)
    for folder, signal in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
      os.makedirs(root / split / folder, exist_ok=True)
      soundfile.write(root / split / folder / f"{name}.wav", signal, rate, subtype="PCM_16")


def noise(seed, length, channels=1, level=0.3):
  """White noise `[length]` (`[length, channels]` for several channels) at `level` RMS."""
  return level * np.random.default_rng(seed).standard_normal((length, channels)).squeeze()


def write_wav(path, signal, rate=8000):
  """Writes `signal` to `path` as 16-bit PCM WAV; returns the path as a string."""
  soundfile.write(path, signal, rate, subtype="PCM_16")
  return str(path)


def si_snri_reference(references, estimates, mixture):
  """Mean SI-SNR improvement `[sources, time]` of two sources under the best
  permutation, in float64 numpy (the tests' own reference, not the library's metric)."""

  def si_snr(reference, estimate):
    reference, estimate = reference - reference.mean(), estimate - estimate.mean()
    target = reference * (estimate @ reference) / (reference @ reference)
    return 10 * np.log10((target @ target) / np.sum((estimate - target) ** 2))

  references, estimates = np.asarray(references, np.float64), np.asarray(estimates, np.float64)
  best = max(
    np.mean([si_snr(r, e) for r, e in zip(references, order)])
    for order in (estimates, estimates[::-1])
  )
  return best - np.mean([si_snr(r, np.asarray(mixture, np.float64)) for r in references])


def make_exit_table(utterances, exits, sources, **fields):
  """An `exit_table.ExitTable` of `fields`, the others NaN: ids `u0, u1, ...`, 8000
  samples each, one target (0 dB), one block of Student-t parameters."""
  from eesep_jax.analysis import exit_table

  def nan(*shape):
    return np.full(shape, np.nan)

  ids = np.array([f"u{i}" for i in range(utterances)])
  defaults = {
    "ids": ids,
    "utterance": ids,
    "num_samples": np.full(utterances, 8000),
    "targets_db": np.array([0.0]),
    "probability": nan(utterances, exits, 1),
    **{
      name: nan(utterances, exits)
      for name in ("si_snr", "si_snri", "snr", "snri", "sdr", "sdri", "snr_min", "expected_snr_db")
    },
    **{
      name: nan(utterances, exits, sources)
      for name in ("source_snr", "error_energy", "estimate_energy")
    },
    "variance": {name: nan(utterances, exits, sources, 1) for name in ("alpha", "beta")},
  }
  return exit_table.ExitTable(**{**defaults, **fields})


def run_config(**inference):
  """A run's saved config, as `checkpoints.read_config` returns it: the `tiny` base
  config on a folder corpus, its `inference` section updated with `inference`."""
  from eesep_jax import config_lib

  config = config_lib.base_config(preset="tiny", dataset="folder", data_root="x")
  config.inference.update(inference)
  return config


@pytest.fixture(scope="session")
def model():
  """`(config, variables)`: the tiny preset with random weights."""
  import jax
  import jax.numpy as jnp

  from eesep_jax import models

  config = models.preset("tiny")
  # Jitted: the un-jitted init runs the stage scan op by op, several times slower.
  variables = jax.jit(models.PressNet(config).init)(jax.random.key(0), jnp.zeros((1, 1600)))
  return config, variables


@pytest.fixture(scope="session")
def compile_cache():
  return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])


def train_env(compile_cache, devices=1):
  """Environment for a training subprocess: `devices` forced CPU devices, shared cache."""
  env = dict(os.environ)
  env.update(
    {
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": str(compile_cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
  )
  return env


def train_command(workdir, corpus, *extra):
  return [
    sys.executable,
    "-m",
    "eesep_jax.app.cli",
    "train",
    "--config",
    str(DEMO_CONFIG),
    "--workdir",
    str(workdir),
    f"--config.data.root={corpus}",
    *TRAIN_OVERRIDES,
    *extra,
  ]


def run_training(workdir, corpus, compile_cache, *extra, devices=1):
  """Runs `eesep train` to completion; fails the test with its output if it fails."""
  result = subprocess.run(
    train_command(workdir, corpus, *extra),
    cwd=REPO,
    env=train_env(compile_cache, devices),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tiny_corpus, compile_cache):
  """A workdir trained for `TRAIN_STEPS` steps on `tiny_corpus` (1 device)."""
  workdir = tmp_path_factory.mktemp("runs") / "reference"
  run_training(workdir, tiny_corpus, compile_cache)
  return workdir


@pytest.fixture(scope="session")
def smoke_ablation(tmp_path_factory):
  """`(out, comparison)` of the ablation at smoke size on `driver.SMOKE_SUBSET`.

  Notebook 02 makes the same call, so given `out` it loads these variants instead of
  training them, and notebooks 01 and 03 reuse the reference run in `out`.
  """
  from experiments.ablations import driver

  out = tmp_path_factory.mktemp("ablation")
  comparison = driver.run_ablation(
    DEMO_CONFIG, out, names=driver.SMOKE_SUBSET, smoke=True, progress=False
  )
  return out, comparison
