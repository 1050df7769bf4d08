"""The paper's recipes: every dataset config of `experiments/configs/` trains for 2 steps
on a tiny synthetic corpus written in its dataset's own layout, with its own optimiser;
and a resumed run never moves the learning rate without being told."""

import csv
import json
import pathlib

import numpy as np
import optax
import pytest
import soundfile

from eesep_jax import config_lib
from eesep_jax import errors
from eesep_jax import models
from eesep_jax.training import throughput
from eesep_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
PAPER_CONFIGS = (
  "wsj0_2mix_press4",
  "wsj0_2mix_press12",
  "libri2mix_press4",
  "libri2mix_press12",
  "wham_press4",
  "wham_press12",
  "whamr_press4",
  "whamr_press12",
  "voicebank_demand_press4",
)
SECONDS = 0.5  # Each synthetic utterance.
# Small enough for 2 CPU cores: the config's exits, one block each, a narrow network,
# short segments, in float32 (a CPU emulates bfloat16 slowly; the bfloat16 path has its
# own test). The dataset, its options and the optimiser stay the config's.
FAST = (
  "model.width=16",
  "model.encoder_features=32",
  "model.num_shared_blocks=1",
  "model.num_heads=2",
  "batch_size=2",
  "data.segment_seconds=0.25",
  "steps=2",
  "log_every=1",
  "eval_every=1000",
  "eval_max_utterances=1",
  "checkpoint_every=2",
  "peak_flops=1e12",
  "model.dtype=float32",
)


def _write(path, rate, seed):
  path.parent.mkdir(parents=True, exist_ok=True)
  signal = 0.1 * np.random.default_rng(seed).standard_normal(int(SECONDS * rate))
  soundfile.write(path, signal.astype(np.float32), rate, subtype="PCM_16")


def _folders(directory, folders, names, rate):
  for index, folder in enumerate(folders):
    for number, name in enumerate(names):
      _write(directory / folder / f"{name}.wav", rate, seed=100 * index + number)


NAMES = ("a", "b", "c", "d")
WHAM = ("mix_clean", "mix_both", "mix_single", "s1", "s2", "noise")
WHAMR = tuple(
  f"{kind}_{room}"
  for room in ("anechoic", "reverb")
  for kind in ("mix_clean", "mix_both", "mix_single", "s1", "s2")
) + ("noise",)


def write_layout(config, root):
  """A tiny corpus in `config.data.kind`'s layout at `root`, with its config's splits."""
  rate, data = config.model.sample_rate, config.data
  splits = (data.train_split, data.valid_split, data.test_split)
  if data.kind in ("wsj0-mix", "wham", "whamr"):
    folders = {"wsj0-mix": ("mix", "s1", "s2"), "wham": WHAM, "whamr": WHAMR}[data.kind]
    for split in splits:
      _folders(root / split, folders, NAMES, rate)
  elif data.kind == "librimix":
    for split in splits:
      _folders(root / split, ("mix_clean", "s1", "s2"), NAMES, rate)
      (root / "metadata").mkdir(exist_ok=True)
      with open(root / "metadata" / f"mixture_{split}_mix_clean.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"])
        for name in NAMES:
          writer.writerow(
            [
              name,
              *(str(root / split / folder / f"{name}.wav") for folder in ("mix_clean", "s1", "s2")),
              int(SECONDS * rate),
            ]
          )
  elif data.kind == "voicebank-demand":
    # Speakers p226 and p287 are the validation split; the others train.
    train_names = ("p230_001", "p230_002", "p231_001", "p226_001", "p287_001")
    _folders(root, ("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav"), train_names, rate)
    _folders(root, ("noisy_testset_wav", "clean_testset_wav"), ("p232_001", "p257_001"), rate)
  else:
    raise AssertionError(f"no layout writer for {data.kind}")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_trains_two_steps_in_its_own_layout(name, tmp_path):
  path = CONFIGS / f"{name}.py"
  paper = config_lib.load_config(path)
  # The recipe, as the paper trains every network.
  assert (
    paper.optimizer.learning_rate,
    paper.optimizer.warmup_steps,
    paper.data.segment_seconds,
    paper.model.dtype,
  ) == (5e-4, 5000, 4.0, "bfloat16")
  assert config_lib.decay_steps(paper) == paper.steps  # Cosine decay over the whole run.
  root = tmp_path / "corpus"
  write_layout(paper, root)
  model = config_lib.model_config(paper)
  fast = (*FAST, f"model.num_exit_blocks={model.num_exits}", f"data.root={root}")
  config = config_lib.load_config(path, fast)
  train.train_and_evaluate(config, tmp_path / "run")

  records = [
    json.loads(line) for line in (tmp_path / "run" / train.METRICS_FILE).read_text().splitlines()
  ]
  steps = {r["step"]: r for r in records if "train_loss" in r}
  assert sorted(steps) == [1, 2]
  assert all(
    np.isfinite(r["train_loss"]) and len(r["train_loss_per_exit"]) == model.num_exits
    for r in steps.values()
  )
  # The config's own warm-up: from 0, 5e-4 / 5000 per step.
  np.testing.assert_allclose(
    [steps[1]["learning_rate"], steps[2]["learning_rate"]], [0.0, 5e-4 / 5000], rtol=1e-5
  )
  # The speed of step 2 (step 1's interval holds the compilation): audio seconds are
  # the global batch's, MFU the model's FLOPs over the given peak of one device.
  speed = steps[2]
  assert speed["steps_per_second"] > 0 and "steps_per_second" not in steps[1]
  assert speed["audio_seconds_per_second"] == pytest.approx(speed["steps_per_second"] * 2 * 0.25)
  trained = config_lib.model_config(config)
  # Forward and backward, 2 x 0.25 s.
  step_flops = 3 * 2 * 2e9 * models.gmacs_by_exit(trained, trained.sample_rate // 4)[-1]
  assert speed["mfu"] == pytest.approx(speed["steps_per_second"] * step_flops / 1e12)
  [validation] = [r for r in records if "valid_si_snri" in r]
  assert len(validation["valid_si_snri"]) == model.num_exits


# ----------------------------------------------------------------------------------
# Changing `steps` on resume.

TINY = (
  "model.width=16",
  "model.encoder_features=32",
  "model.num_shared_blocks=1",
  "model.num_exit_blocks=4",
  "model.num_heads=2",
  "batch_size=2",
  "data.segment_seconds=0.25",
  "log_every=1",
  "eval_every=1000",
  "eval_max_utterances=2",
  "checkpoint_every=100",
  "optimizer.warmup_steps=1",
  "model.dtype=float32",
)


def _tiny_config(root, *overrides):
  return config_lib.load_config(
    CONFIGS / "wsj0_2mix_press4.py", (*TINY, f"data.root={root}", *overrides)
  )


def _learning_rates(workdir):
  lines = (workdir / train.METRICS_FILE).read_text().splitlines()
  return {r["step"]: r["learning_rate"] for r in map(json.loads, lines) if "learning_rate" in r}


@pytest.mark.slow
def test_raising_steps_on_resume_is_refused_or_keeps_the_schedule(tmp_path):
  root = tmp_path / "corpus"
  write_layout(config_lib.load_config(CONFIGS / "wsj0_2mix_press4.py"), root)
  workdir = tmp_path / "run"
  train.train_and_evaluate(_tiny_config(root, "steps=4"), workdir)

  # Raised alone, `steps` would stretch the cosine: refused, in one line that says what
  # to do, before anything is written.
  with pytest.raises(errors.UsageError) as refused:
    train.train_and_evaluate(_tiny_config(root, "steps=6"), workdir)
  message = str(refused.value)
  assert "\n" not in message
  assert "the rate would jump mid-run" in message
  assert "--config.optimizer.decay_steps=4" in message
  assert sorted(_learning_rates(workdir)) == [1, 2, 3, 4]

  # As told: the schedule continues where it was, and stays at its end value.
  train.train_and_evaluate(
    _tiny_config(root, "steps=6", "optimizer.decay_steps=4"), workdir, profile_steps=(5, 6)
  )
  assert list((workdir / throughput.PROFILE_DIR).rglob("*.xplane.pb"))
  rates = _learning_rates(workdir)
  # optax's own schedule, independently of the code under test: warm-up 1, decay to 4.
  expected = optax.warmup_cosine_decay_schedule(0.0, 5e-4, 1, 4, 5e-4 * 0.01)
  np.testing.assert_allclose(
    [rates[s] for s in range(1, 7)], [float(expected(s - 1)) for s in range(1, 7)], rtol=1e-6
  )
  assert rates[5] == rates[6] == pytest.approx(5e-6)


@pytest.mark.parametrize("text", ["5", "a:b", "0:3", "4:2", "3:"])
def test_profile_steps_must_be_a_range_of_steps(text):
  with pytest.raises(errors.UsageError, match=r"--profile-steps .*: must be A:B"):
    throughput.parse_profile_steps(text)
  assert throughput.parse_profile_steps("10:15") == (10, 15)
