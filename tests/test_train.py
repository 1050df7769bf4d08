"""Training: logs, checkpoints, exact resume after SIGKILL, SIGTERM saves. Runs on
several devices and processes are the pod's (`test_pod.py`)."""

import json
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import DEMO_CONFIG
from conftest import REPO
from conftest import run_training
from conftest import train_command
from conftest import TRAIN_CONFIG_OVERRIDES
from conftest import train_env
from conftest import TRAIN_STEPS
from eesep_jax import config_lib
from eesep_jax import errors
from eesep_jax import models
from eesep_jax.training import checkpoints
from eesep_jax.training import preemption
from eesep_jax.training import train


def _metrics(workdir):
  lines = (workdir / train.METRICS_FILE).read_text().splitlines()
  return [json.loads(line) for line in lines]


def _train_losses(workdir):
  return {r["step"]: r["train_loss"] for r in _metrics(workdir) if "train_loss" in r}


def _flat_params(workdir, step):
  _, variables = checkpoints.restore_params(workdir, step=step)
  return {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
  }


def _wait_for_step(workdir, process, step, timeout=600):
  """Blocks until `metrics.jsonl` logs `step` (the run is then past it)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, process.stderr.read()[-4000:]
    if (workdir / train.METRICS_FILE).exists() and any(
      r["step"] >= step for r in _metrics(workdir)
    ):
      return
    time.sleep(0.2)
  raise TimeoutError(f"no step {step} in {workdir} after {timeout} s")


def test_run_logs_metrics_tensorboard_config_and_checkpoints(trained_workdir):
  records = _metrics(trained_workdir)
  losses = _train_losses(trained_workdir)
  assert sorted(losses) == list(range(1, TRAIN_STEPS + 1))
  assert all(np.isfinite(v) for v in losses.values())
  training = [r for r in records if "train_loss" in r]
  assert all(len(r["train_loss_per_exit"]) == 3 and r["skipped_steps"] == 0 for r in training)
  validation = [r for r in records if "valid_si_snri" in r]
  assert [r["step"] for r in validation] == [TRAIN_STEPS]
  assert len(validation[0]["valid_si_snri"]) == 3
  assert 0 < validation[0]["train_seconds"]  # What time_to_quality.py plots against.
  assert list((trained_workdir / "tensorboard").glob("events.out.tfevents.*"))
  config = checkpoints.read_config(trained_workdir)
  assert config.steps == TRAIN_STEPS and config.batch_size == 8


def test_restore_params_gives_the_init_structure(trained_workdir):
  model_config, variables = checkpoints.restore_params(trained_workdir)
  assert model_config == config_lib.model_config(
    config_lib.load_config(DEMO_CONFIG, TRAIN_CONFIG_OVERRIDES)
  )
  fresh = jax.eval_shape(models.PressNet(model_config).init, jax.random.key(0), jnp.zeros((1, 800)))
  assert jax.tree.structure(variables) == jax.tree.structure(fresh)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, fresh)


def test_the_tests_of_a_shared_run_share_one_worker(request, trained_workdir):
  """Under pytest-xdist's `--dist loadgroup` (`make test`), conftest groups the tests of
  each expensive session fixture, so one worker builds it once. pytest 9.2 broke the
  grouping of pytest-xdist 3.8 without a word: each worker built its own."""
  if not getattr(request.config.option, "loadgroup", False):
    pytest.skip("not run by an xdist worker with --dist loadgroup")
  assert request.node.nodeid.endswith("@trained_workdir")


def test_restore_params_names_a_workdir_without_config(tmp_path):
  with pytest.raises(errors.UsageError, match=f"{tmp_path}: holds no config.json"):
    checkpoints.restore_params(tmp_path)


def test_sigkill_then_restart_ends_with_the_uninterrupted_parameters(
  tmp_path, tiny_corpus, compile_cache, trained_workdir
):
  workdir = tmp_path / "killed"
  process = subprocess.Popen(
    train_command(workdir, tiny_corpus),
    cwd=REPO,
    env=train_env(compile_cache),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    _wait_for_step(workdir, process, 4)
  finally:
    process.kill()
    process.wait()
  assert _train_losses(workdir), "the run was killed before it logged anything"
  run_training(workdir, tiny_corpus, compile_cache)

  resumed, reference = (_flat_params(w, TRAIN_STEPS) for w in (workdir, trained_workdir))
  assert resumed.keys() == reference.keys()
  for name in reference:
    np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
  # Steps after the restart see the same batches as the uninterrupted run.
  assert _train_losses(workdir)[TRAIN_STEPS] == _train_losses(trained_workdir)[TRAIN_STEPS]


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path, tiny_corpus, compile_cache):
  workdir = tmp_path / "preempted"
  process = subprocess.Popen(
    train_command(workdir, tiny_corpus, "--config.steps=1000"),
    cwd=REPO,
    env=train_env(compile_cache),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for_step(workdir, process, 3)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=300) == 0, process.stderr.read()[-4000:]
  last_logged = max(_train_losses(workdir))
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert last_logged < 1000 and saved[-1] == last_logged


def test_a_run_preempted_before_its_last_step_raises_preempted(tmp_path, tiny_corpus, monkeypatch):
  """So that what goes on from a trained run (the demo, an ablation) never uses a
  half-trained one; `eesep train` itself exits 0 on it (above)."""
  reached = preemption.Preemption.reached

  def sigterm_at_step_2(self, step):
    if step == 2:
      self._handle(signal.SIGTERM, None)  # What SIGTERM does to a single process.
    return reached(self, step)

  monkeypatch.setattr(preemption.Preemption, "reached", sigterm_at_step_2)
  config = config_lib.load_config(
    DEMO_CONFIG, [*TRAIN_CONFIG_OVERRIDES, f"data.root={tiny_corpus}"]
  )
  workdir = tmp_path / "run"
  with pytest.raises(errors.Preempted, match="at step 2, which is saved"):
    train.train_and_evaluate(config, workdir)
  assert checkpoints.latest_step(workdir) == 2 < config.steps


def test_optimizer_skips_and_counts_non_finite_updates():
  config = config_lib.base_config(preset="tiny", dataset="folder", data_root="x")
  optimizer = train.make_optimizer(config.optimizer, total_steps=10)
  params = {"w": jnp.ones(3)}
  state = optimizer.init(params)
  updates, state = optimizer.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
  assert np.all(np.asarray(optax.apply_updates(params, updates)["w"]) == 1.0)
  assert int(train.skipped_steps(state)) == 1
  updates, state = optimizer.update({"w": jnp.ones(3)}, state, params)
  assert int(train.skipped_steps(state)) == 1


def test_loss_counts_only_the_valid_samples_of_padded_utterances(model):
  """`_loss_fn` runs the network and the loss with each utterance's valid length (the
  mask's sum), so padding counts neither as error nor as error-free samples."""
  from eesep_jax.core import losses

  model_config, variables = model
  config = config_lib.base_config(preset="tiny", dataset="folder", data_root="x")
  rng = np.random.default_rng(0)
  mask = (np.arange(1600) < np.array([[1600], [900]])).astype(np.float32)
  sources = rng.standard_normal((2, 2, 1600)).astype(np.float32) * mask[:, None]
  batch = {
    "mixture": jnp.asarray(sources.sum(1)),
    "sources": jnp.asarray(sources),
    "mask": jnp.asarray(mask),
  }
  network = models.PressNet(model_config)
  dropout = jax.random.key(1)
  loss, _ = train._loss_fn(variables["params"], batch, dropout, model=network, config=config)
  outputs = network.apply(
    variables,
    batch["mixture"],
    train=True,
    rngs={"dropout": dropout},
    lengths=jnp.array([1600, 900]),
  )

  def expected(lengths):
    return losses.separation_loss(
      outputs,
      batch["sources"],
      lengths=lengths,
      variance_config=model_config.variance,
      objective=config.loss.objective,
      mean_loss=config.loss.mean_loss,
    )[0]

  np.testing.assert_allclose(loss, expected(jnp.array([1600, 900])), rtol=1e-6)
  assert not np.isclose(loss, expected(None), rtol=1e-4)
