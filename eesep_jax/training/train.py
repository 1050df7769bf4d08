"""Training: state, the jit-compiled step over every exit, the loop, validation, logs.

`train_and_evaluate(config, workdir)` is the entry point the CLI and notebooks call.
Restarting it with the same `workdir` resumes from the latest checkpoint exactly: the
parameters, optimizer state, step and the data iterator's position are restored, and
dropout keys are derived from `(seed, step)`, so a resumed run ends with the same
parameters as an uninterrupted one.
"""

import functools
import json
import logging
import signal
import sys
import threading
import time

from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import optax
import tqdm

from eesep_jax import config_lib
from eesep_jax import data as data_lib
from eesep_jax import errors
from eesep_jax import models
from eesep_jax.core import losses
from eesep_jax.core import metrics
from eesep_jax.training import checkpoints

METRICS_FILE = "metrics.jsonl"


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes. `rng` is raw key data so checkpoints hold it."""
  step: jax.Array
  params: flax.core.FrozenDict
  opt_state: optax.OptState
  rng: jax.Array


def make_optimizer(optimizer_config, total_steps):
  """AdamW with gradient clipping and warm-up-then-cosine decay; non-finite updates skipped.

  `optax.apply_if_finite` drops any update whose gradient holds a NaN or inf and counts
  it in its state (`total_notfinite`), which the loop logs as `skipped_steps`. The
  inner transformations run on the parameters raveled into one vector
  (`optax.flatten`): the same arithmetic as per leaf, in a smaller program to
  compile.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optimizer_config.learning_rate,
      warmup_steps=optimizer_config.warmup_steps,
      decay_steps=max(total_steps, optimizer_config.warmup_steps + 1),
      end_value=optimizer_config.learning_rate * optimizer_config.end_learning_rate_fraction)
  return optax.apply_if_finite(
      optax.flatten(optax.chain(
          optax.clip_by_global_norm(optimizer_config.clip_norm),
          optax.adamw(schedule, weight_decay=optimizer_config.weight_decay))),
      max_consecutive_errors=optimizer_config.max_consecutive_nonfinite)


def skipped_steps(opt_state):
  """How many updates `optax.apply_if_finite` has dropped so far."""
  return opt_state.total_notfinite


def make_mesh(devices=None):
  """A 1-D data-parallel mesh over `devices` (default: every device of every process)."""
  return jax.sharding.Mesh(np.asarray(devices or jax.devices()), ("data",))


def _loss_fn(params, batch, dropout_rng, *, model, config):
  # Padding beyond an example's valid length must count neither as error nor as
  # error-free samples: the network sees each example as if alone (its estimates are
  # zero beyond its length), and the likelihood counts (and SI-SNR averages over) the
  # valid samples only.
  lengths = batch["mask"].sum(-1).astype(jnp.int32)
  outputs = model.apply({"params": params}, batch["mixture"], train=True, lengths=lengths,
                        rngs={"dropout": dropout_rng})
  return losses.separation_loss(
      outputs, batch["sources"], variance_config=model.config.variance,
      objective=config.loss.objective, mean_loss=config.loss.mean_loss,
      permutation=config.loss.permutation, exit_weights=config.loss.exit_weights,
      lengths=lengths)


def make_train_step(config, model, optimizer):
  """The jit-compiled step: every exit (one scan) and the joint objective, one update.

  Returns `step(state, batch) -> (state, metrics)`, where `batch` holds `mixture`
  `[batch, time]`, `sources` `[batch, sources, time]` and `mask` `[batch, time]`.
  """
  loss_fn = functools.partial(_loss_fn, model=model, config=config)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, batch):
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, dropout_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {"train_loss": loss, "train_loss_per_exit": aux["per_exit"],
                    "grad_norm": optax.tree.norm(grads),
                    "skipped_steps": skipped_steps(opt_state)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_metrics

  return train_step


def init_train_state(config, model, optimizer, example_mixture, sharding=None):
  """Fresh parameters and optimizer state from `config.seed`, placed with `sharding`."""

  def init(example_mixture):
    params_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    params = model.init(params_rng, example_mixture)["params"]
    return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.key_data(dropout_rng))

  # One compiled program instead of hundreds of small dispatches.
  return jax.jit(init, out_shardings=sharding)(example_mixture)


@functools.partial(jax.jit, static_argnames="config")
def eval_step(params, batch, *, config):
  """Per-exit validation metrics of one zero-padded batch, under one `jit`.

  The metrics evaluation reports, from the same core functions: the SI-SNR improvement
  under each exit's best permutation (`losses.separation_loss` with `"per-exit"`, which
  searches `core.permutation`) and the NLL per sample, each example at its valid length.

  Args:
    params: the model parameters.
    batch: `{"mixture" [batch, time], "sources" [batch, sources, time], "mask"
      [batch, time]}`, as `data.validation_batches` yields them.
    config: the model's `PressNetConfig`.

  Returns:
    `{"si_snri": [exits], "nll": [exits]}`, means over the batch.
  """
  mixture, sources = batch["mixture"], batch["sources"]
  lengths = batch["mask"].sum(-1).astype(jnp.int32)
  outputs = models.PressNet(config).apply({"params": params}, mixture, lengths=lengths)

  def per_exit(**objective):
    return losses.separation_loss(outputs, sources, permutation="per-exit", lengths=lengths,
                                  variance_config=config.variance, **objective)[1]["per_exit"]

  baseline = metrics.si_snr(sources, jnp.broadcast_to(mixture[:, None], sources.shape),
                            lengths[:, None]).mean()
  return {"si_snri": -per_exit(objective="si-snr") - baseline, "nll": per_exit()}


def evaluate_exits(params, model, batches):
  """Mean per-exit validation metrics over `batches` of full-length utterances
  (`eval_step` on each; weighted by batch size).

  Batches are zero-padded to a few lengths (so jit compiles a few shapes), with each
  utterance's valid length: the network and the losses see it as if alone.
  `analysis.evaluate` computes the full report; these monitor training.

  Returns a dict of `[exits]` lists: `si_snri` (dB, best permutation per exit) and
  `nll` (per sample).
  """
  totals, count = 0.0, 0
  for batch in batches:
    arrays = {name: jnp.asarray(batch[name]) for name in ("mixture", "sources", "mask")}
    result = eval_step(params, arrays, config=model.config)
    size = batch["mixture"].shape[0]
    totals = totals + size * np.stack([np.asarray(result["si_snri"]),
                                       np.asarray(result["nll"])])
    count += size
  si_snri, nll = np.asarray(totals) / max(count, 1)
  return {"si_snri": si_snri.tolist(), "nll": nll.tolist()}


class MetricsWriter:
  """Writes scalars to `metrics.jsonl` (one JSON object per line) and TensorBoard."""

  def __init__(self, workdir, enabled):
    self._enabled = enabled
    if enabled:
      import tensorboardX  # Heavy import kept out of `import eesep_jax.training.train`.
      self._jsonl = (epath.Path(workdir) / METRICS_FILE).open("a")
      self._tensorboard = tensorboardX.SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step, scalars):
    if not self._enabled:
      return
    record = {"step": int(step), **scalars}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      values = value if isinstance(value, list) else [value]
      for index, item in enumerate(values, start=1):
        tag = f"{name}/exit_{index}" if isinstance(value, list) else name
        self._tensorboard.add_scalar(tag, item, step)
    self._tensorboard.flush()

  def close(self):
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()


class _Preemption:
  """Turns SIGTERM into a flag the loop checks, so it can save before exiting.

  Signal handlers can only be installed from the main thread; elsewhere (a
  notebook's worker thread) the loop still honours orbax's preemption sync point.
  """

  def __init__(self):
    self.requested = False
    self._installed = threading.current_thread() is threading.main_thread()
    if self._installed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
  """Joins a multi-host job (`jax.distributed.initialize`) before any JAX computation.

  On Cloud TPU pods every argument is discovered automatically; elsewhere (several
  processes on one machine or a GPU cluster) pass all three, e.g.
  `initialize_distributed("127.0.0.1:1234", 2, 0)` in the first of two processes.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _global_batch(local_batch, sharding):
  """Assembles each process's slice of the batch into one globally sharded array."""
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items() if name in ("mixture", "sources", "mask")}


def _check_resume(config, workdir):
  """Refuses, before anything is written, to resume the run in `workdir` with a config
  that differs from the saved one in a field its checkpoint fixes
  (`config_lib.resume_differences`)."""
  if checkpoints.latest_step(workdir) is None:
    return
  differences = config_lib.resume_differences(checkpoints.read_config(workdir), config)
  if differences:
    listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in differences)
    raise errors.UsageError(
        workdir, f"cannot resume the run there with this config, which differs from its "
                 f"{checkpoints.CONFIG_FILE} in {listed}. Train in a new --workdir; a resumed run may "
                 f"change only {', '.join(config_lib.RESUMABLE_FIELDS)}")


def _open_data(config, say):
  """Every split the run reads, opened (each file's header read) before step 1:
  `(training source, validation source)`. Makes the demo corpus first when the config
  asks for it (`data.synthesize_if_missing`)."""
  data = config.data
  if data.synthesize_if_missing:
    data_lib.ensure_demo_corpus(data.root, sample_rate=config.model.sample_rate,
                                num_sources=config.model.num_sources)
  say(f"checking the data: {data.kind} at {data.root}, splits {data.train_split!r} and "
      f"{data.valid_split!r} (every file's header)")
  train_source = data_lib.training_source(config)
  valid_source = data_lib.open_split(config, data.valid_split)
  say(f"  {train_source!r}\n  {valid_source!r}")
  return train_source, valid_source


def _save_before_raising(manager, state, iterator, say):
  """Saves `state` as the loop dies of an exception, so that no finished step is lost;
  nothing when its step is saved already (or is 0: nothing trained). A failure to save
  is reported, never raised over the exception that stopped the loop."""
  try:
    step = int(state.step)
    if step == 0 or step in manager.all_steps():
      return
    checkpoints.save_state(manager, step, state, iterator, force=True)
    manager.wait_until_finished()
    say(f"saved a checkpoint at step {step} before stopping on the error")
  except Exception as error:  # The state may be gone with the failure (donated buffers).
    say(f"warning: could not save a checkpoint before stopping: {error}")


def _best_validation(workdir):
  """`(step, [SI-SNRi per exit])` of the best validation in `metrics.jsonl` (by the last
  exit, as the best checkpoint is kept); None when there was none."""
  path = epath.Path(workdir) / METRICS_FILE
  records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  validations = [r for r in records if "valid_si_snri" in r]
  if not validations:
    return None
  best = max(validations, key=lambda r: r["valid_si_snri"][-1])
  return best["step"], best["valid_si_snri"]


def _summary(workdir, *, config, start_step, end_step, seconds, skipped, manager):
  """The lines `train_and_evaluate` ends with: steps, time, skipped steps, the best
  validation per exit, and where the checkpoints are."""
  lines = [f"trained to step {end_step} of {config.steps} ({end_step - start_step} steps "
           f"in {seconds / 60:.1f} min); {skipped} steps skipped in all (non-finite loss "
           "or gradient)"]
  best = _best_validation(workdir)
  if best is None:
    lines.append("no validation yet (every config.eval_every steps, and at the last)")
  else:
    step, si_snri = best
    lines.append(f"best validation SI-SNRi (step {step}): " + ", ".join(
        f"exit {k} {value:.2f} dB" for k, value in enumerate(si_snri, start=1)))
  lines.append(f"checkpoints: {workdir / 'checkpoints'} (latest step {manager.latest_step()}"
               f", best {manager.best_step()}); `eesep separate --checkpoint {workdir}` "
               "uses the best")
  return "\n".join(lines)


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Nothing is written before the config is validated (`config_lib.validate_config`),
  checked against a run it resumes (`_check_resume`) and every split's files checked.
  An exception in the loop saves a checkpoint of the last finished step before it
  propagates. The console shows the progress, a warning for skipped steps (at most
  one per `log_every` steps), each validation, and a summary at the end.

  Args:
    config: an experiment `ConfigDict` (see `config_lib.base_config`).
    workdir: where the config, checkpoints, `metrics.jsonl` and TensorBoard events go.

  Returns:
    The final `TrainState`.

  Raises:
    errors.UsageError: for a config error, or a resume the checkpoint cannot take.
    errors.DataError: for data that cannot be used.
  """
  config_lib.validate_config(config)
  if config.batch_size % jax.process_count():
    raise errors.UsageError("config.batch_size", f"{config.batch_size} is not divisible by "
                                                 f"the {jax.process_count()} processes")
  workdir = checkpoints.absolute(workdir)
  is_lead = jax.process_index() == 0
  say = functools.partial(tqdm.tqdm.write, file=sys.stdout) if is_lead else (
      lambda *args, **kwargs: None)
  _check_resume(config, workdir)
  train_source, valid_source = _open_data(config, say)
  workdir.mkdir(parents=True, exist_ok=True)
  if is_lead:
    checkpoints.write_config(config, workdir)
  model_config = config_lib.model_config(config)
  model = models.PressNet(model_config)

  loader = data_lib.training_loader(
      train_source, batch_size=config.batch_size // jax.process_count(),
      segment_length=int(config.data.segment_seconds * model_config.sample_rate),
      seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_workers=config.data.num_workers, dynamic_mixing=config.data.dynamic_mixing,
      augmentation=data_lib.Augmentation() if config.data.get("augment") else None)
  iterator = iter(loader)

  optimizer = make_optimizer(config.optimizer, config.steps)
  mesh = make_mesh()
  data_sharding = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  segment = int(config.data.segment_seconds * model_config.sample_rate)
  state = init_train_state(config, model, optimizer, jnp.zeros((1, segment)), replicated)

  manager = checkpoints.open_manager(workdir, config)
  latest = manager.latest_step()
  if latest is not None:
    state = checkpoints.restore_state(manager, workdir, latest, state, iterator)
  say(f"resuming {workdir} from step {latest}" if latest is not None
      else f"training {workdir} from scratch")

  train_step = make_train_step(config, model, optimizer)
  writer = MetricsWriter(workdir, enabled=is_lead)
  preemption = _Preemption()
  start_step = int(state.step)
  skipped = _SkipWarnings(int(skipped_steps(state.opt_state)), start_step, say)
  start_time, validating = time.monotonic(), 0.0
  progress = tqdm.tqdm(total=config.steps, initial=start_step, disable=not is_lead,
                       desc="train", unit="step", dynamic_ncols=True)
  try:
    try:
      for step in range(start_step + 1, config.steps + 1):
        batch = _global_batch(next(iterator), data_sharding)
        state, step_metrics = train_step(state, batch)
        progress.update(1)
        if step % config.log_every == 0 or step == config.steps:
          record = _train_record(step_metrics)
          writer.write(step, record)
          skipped.update(step, record["skipped_steps"])
          progress.set_postfix(loss=f"{record['train_loss']:.3f}", skipped=skipped.total)
        valid_metrics = {}
        if step % config.eval_every == 0 or step == config.steps:
          began = time.monotonic()
          valid_metrics = _validate(state, model, config, valid_source, step, writer, say,
                                    train_seconds=began - start_time - validating)
          validating += time.monotonic() - began
        preempted = preemption.requested or manager.reached_preemption(step)
        # A validated step is always saved, so the best checkpoint holds the
        # parameters its metric was measured on.
        checkpoints.save_state(manager, step, state, iterator, metrics=valid_metrics or None,
                               force=preempted or bool(valid_metrics) or step == config.steps)
        if preempted:
          logging.warning("preempted at step %d: checkpoint saved, exiting", step)
          break
    except BaseException:
      progress.close()
      _save_before_raising(manager, state, iterator, say)
      raise
    finally:
      progress.close()
      manager.wait_until_finished()
      writer.close()
      preemption.restore()
    if is_lead:
      print(_summary(workdir, config=config, start_step=start_step, end_step=int(state.step),
                     seconds=time.monotonic() - start_time,
                     skipped=int(skipped_steps(state.opt_state)), manager=manager))
  finally:
    manager.close()
  return state


def _train_record(step_metrics):
  """The training scalars `metrics.jsonl` logs, from one step's metrics."""
  scalars = jax.device_get(step_metrics)
  return {"train_loss": float(scalars["train_loss"]),
          "train_loss_per_exit": np.asarray(scalars["train_loss_per_exit"]).tolist(),
          "grad_norm": float(scalars["grad_norm"]),
          "skipped_steps": int(scalars["skipped_steps"])}


class _SkipWarnings:
  """Warns on the console when updates were skipped (`optax.apply_if_finite`).

  The count is read at logged steps only, so there is at most one warning per
  `log_every` steps (a diverging run must not flood the console) and no step waits
  for the device just to be counted.
  """

  def __init__(self, total, step, say):
    self.total, self._step, self._say = total, step, say

  def update(self, step, total):
    if total > self.total:
      self._say(f"warning: steps {self._step + 1}-{step}: {total - self.total} skipped, "
                f"their loss or gradient was not finite ({total} in all)", file=sys.stderr)
    self.total, self._step = total, step


def _validate(state, model, config, source, step, writer, say, train_seconds):
  """Validates `state` on `source`, says so before and after, logs it with
  `train_seconds` (this process's time in training so far, validation excluded: what
  `experiments/benchmarks/time_to_quality.py` plots); returns the metrics the
  checkpoint manager ranks checkpoints by."""
  count = min(config.eval_max_utterances or len(source), len(source))
  say(f"step {step}: validating on {count} utterances of {source.name}")
  evaluation = evaluate_exits(state.params, model,
                              data_lib.validation_batches(config, source=source))
  say(f"step {step}: validation SI-SNRi per exit " + ", ".join(
      f"{value:.2f}" for value in evaluation["si_snri"]) + " dB")
  writer.write(step, {"valid_si_snri": evaluation["si_snri"], "valid_nll": evaluation["nll"],
                      "train_seconds": round(train_seconds, 3)})
  return {checkpoints.BEST_METRIC: evaluation["si_snri"][-1]}
