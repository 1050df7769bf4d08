"""Shared fixtures: a tiny synthetic corpus and one short real training run.

Training runs happen in subprocesses through the `eesep train` command (as users run
it), sharing a persistent compilation cache so later runs of the same step reuse the
first run's executable.
"""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "experiments" / "configs" / "demo.py"

# Small enough for CI (2 cores) yet a real run: tiny preset, 0.25 s segments.
TRAIN_STEPS = 6
TRAIN_OVERRIDES = (
    f"--config.steps={TRAIN_STEPS}", "--config.batch_size=8",
    "--config.data.segment_seconds=0.25", "--config.data.synthesize_if_missing=False",
    "--config.checkpoint_every=2", "--config.log_every=1", "--config.eval_every=1000",
    "--config.eval_max_utterances=2", "--config.optimizer.warmup_steps=2",
)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
  """A wsj0-2mix-layout corpus of 16/4/4 two-speaker mixtures at 8 kHz."""
  from eesep_jax import data

  root = tmp_path_factory.mktemp("corpus") / "demo"
  data.synthesize_corpus(root, num_train=16, num_valid=4, num_test=4, progress=False)
  return root


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


def train_env(compile_cache, devices=1):
  """Environment for a training subprocess: `devices` forced CPU devices, shared cache."""
  env = dict(os.environ)
  env.update({
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": str(compile_cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  return env


def train_command(workdir, corpus, *extra):
  return [sys.executable, "-m", "eesep_jax.cli", "train", "--config", str(DEMO_CONFIG),
          "--workdir", str(workdir), f"--config.data.root={corpus}", *TRAIN_OVERRIDES,
          *extra]


def run_training(workdir, corpus, compile_cache, *extra, devices=1):
  """Runs `eesep train` to completion; fails the test with its output if it fails."""
  result = subprocess.run(train_command(workdir, corpus, *extra), cwd=REPO,
                          env=train_env(compile_cache, devices), capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, tiny_corpus, compile_cache):
  """A workdir trained for `TRAIN_STEPS` steps on `tiny_corpus` (1 device)."""
  workdir = tmp_path_factory.mktemp("runs") / "reference"
  run_training(workdir, tiny_corpus, compile_cache)
  return workdir
