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
import sys
import time

from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
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
from eesep_jax.analysis import evaluate
from eesep_jax.core import losses
from eesep_jax.core import metrics
from eesep_jax.training import checkpoints
from eesep_jax.training import preemption
from eesep_jax.training import storage
from eesep_jax.training import throughput

METRICS_FILE = "metrics.jsonl"


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes. `rng` is raw key data so checkpoints hold it."""

  step: jax.Array
  params: flax.core.FrozenDict
  opt_state: optax.OptState
  rng: jax.Array


def learning_rate_schedule(optimizer_config, decay_steps):
  """Linear warm-up to `learning_rate`, then cosine decay to its
  `end_learning_rate_fraction` at step `decay_steps` (`config_lib.decay_steps`), and
  constant after."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=optimizer_config.learning_rate,
    warmup_steps=optimizer_config.warmup_steps,
    decay_steps=max(decay_steps, optimizer_config.warmup_steps + 1),
    end_value=optimizer_config.learning_rate * optimizer_config.end_learning_rate_fraction,
  )


def make_optimizer(optimizer_config, total_steps):
  """AdamW with gradient clipping and `learning_rate_schedule` decaying over
  `total_steps` (`config_lib.decay_steps`); non-finite updates skipped.

  `optax.apply_if_finite` drops any update whose gradient holds a NaN or inf and counts
  it in its state (`total_notfinite`), which the loop logs as `skipped_steps`. The
  inner transformations run on the parameters raveled into one vector
  (`optax.flatten`): the same arithmetic as per leaf, in a smaller program to
  compile.
  """
  schedule = learning_rate_schedule(optimizer_config, total_steps)
  return optax.apply_if_finite(
    optax.flatten(
      optax.chain(
        optax.clip_by_global_norm(optimizer_config.clip_norm),
        optax.adamw(schedule, weight_decay=optimizer_config.weight_decay),
      )
    ),
    max_consecutive_errors=optimizer_config.max_consecutive_nonfinite,
  )


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
  outputs = model.apply(
    {"params": params}, batch["mixture"], train=True, lengths=lengths, rngs={"dropout": dropout_rng}
  )
  return losses.separation_loss(
    outputs,
    batch["sources"],
    variance_config=model.config.variance,
    objective=config.loss.objective,
    mean_loss=config.loss.mean_loss,
    permutation=config.loss.permutation,
    exit_weights=config.loss.exit_weights,
    lengths=lengths,
  )


def make_train_step(config, model, optimizer):
  """The jit-compiled step: every exit (one scan) and the joint objective, one update.

  Returns `step(state, batch) -> (state, metrics)`, where `batch` holds `mixture`
  `[batch, time]`, `sources` `[batch, sources, time]` and `mask` `[batch, time]`.
  """
  loss_fn = functools.partial(_loss_fn, model=model, config=config)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, batch):
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, dropout_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {
      "train_loss": loss,
      "train_loss_per_exit": aux["per_exit"],
      "grad_norm": optax.tree.norm(grads),
      "skipped_steps": skipped_steps(opt_state),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_metrics

  return train_step


def init_train_state(config, model, optimizer, example_mixture, sharding=None):
  """Fresh parameters and optimizer state from `config.seed`, placed with `sharding`."""

  def init(example_mixture):
    params_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    params = model.init(params_rng, example_mixture)["params"]
    return TrainState(
      step=jnp.int32(0),
      params=params,
      opt_state=optimizer.init(params),
      rng=jax.random.key_data(dropout_rng),
    )

  # One compiled program instead of hundreds of small dispatches.
  return jax.jit(init, out_shardings=sharding)(example_mixture)


@functools.partial(jax.jit, static_argnames="config")
def eval_step(params, batch, *, config):
  """Per-exit validation metrics of one zero-padded batch, under one `jit`, summed over
  its examples with their `weight`s.

  The metrics evaluation reports, from the same core functions: the SI-SNR improvement
  under each exit's best permutation (`losses.separation_loss` with `"per-exit"`, which
  searches `core.permutation`) and the NLL per sample, each example at its valid length.

  Args:
    params: the model parameters.
    batch: `{"mixture" [batch, time], "sources" [batch, sources, time], "mask"
      [batch, time], "weight" [batch]}`, as `data.validation_batches` yields them
      (`weight` 0 for the copies that fill up a batch).
    config: the model's `PressNetConfig`.

  Returns:
    `{"si_snri": [exits], "nll": [exits], "weight": []}`: weighted sums over the batch,
    and the sum of the weights.
  """
  mixture, sources, weight = batch["mixture"], batch["sources"], batch["weight"]
  lengths = batch["mask"].sum(-1).astype(jnp.int32)
  outputs = models.PressNet(config).apply({"params": params}, mixture, lengths=lengths)

  def per_example(**objective):  # [exits, batch]
    return losses.separation_loss(
      outputs,
      sources,
      permutation="per-exit",
      lengths=lengths,
      variance_config=config.variance,
      **objective,
    )[1]["per_example"]

  baseline = metrics.si_snr(
    sources, jnp.broadcast_to(mixture[:, None], sources.shape), lengths[:, None]
  ).mean(-1)
  return {
    "si_snri": (-per_example(objective="si-snr") - baseline) @ weight,
    "nll": per_example() @ weight,
    "weight": weight.sum(),
  }


def validation_batch_size(device_count):
  """Utterances per validation batch: `analysis.evaluate`'s batch (its length buckets),
  rounded up to a multiple of the devices, over which each batch is sharded."""
  return -(-evaluate.EVAL_BATCH // device_count) * device_count


def evaluate_exits(params, model, batches, sharding=None):
  """Mean per-exit validation metrics over `batches` of full-length utterances
  (`eval_step` on each, weighted by their examples' `weight`).

  Batches are zero-padded to a few lengths (so jit compiles a few shapes), with each
  utterance's valid length: the network and the losses see it as if alone. With
  `sharding`, each batch is this process's share of a global batch
  (`data.validation_batches` with `shard_index`), assembled into one array sharded
  over the devices: each process evaluates its share, once.
  `analysis.evaluate` computes the full report; these monitor training.

  Returns a dict of `[exits]` lists: `si_snri` (dB, best permutation per exit) and
  `nll` (per sample).
  """
  totals = None
  for batch in batches:
    batch = dict(batch)
    batch.setdefault("weight", np.ones(batch["mixture"].shape[0], np.float32))
    arrays = (
      _global_batch(batch, sharding)
      if sharding is not None
      else {name: jnp.asarray(batch[name]) for name in _BATCH_FIELDS + ("weight",)}
    )
    result = eval_step(params, arrays, config=model.config)
    totals = result if totals is None else jax.tree.map(jnp.add, totals, result)
  if totals is None:
    return {"si_snri": [], "nll": []}
  totals = jax.device_get(totals)
  count = max(float(totals["weight"]), 1.0)
  return {
    "si_snri": (np.asarray(totals["si_snri"]) / count).tolist(),
    "nll": (np.asarray(totals["nll"]) / count).tolist(),
  }


class MetricsWriter:
  """Writes scalars to `metrics.jsonl` (one JSON object per line) and TensorBoard, in
  the workdir, a local folder or a bucket (`storage.LineLog`; tensorboardX uploads its
  events file whole on each flush)."""

  def __init__(self, workdir, enabled):
    self._enabled = enabled
    if enabled:
      import tensorboardX  # Heavy import kept out of `import eesep_jax.training.train`.

      self._jsonl = storage.LineLog(epath.Path(workdir) / METRICS_FILE)
      self._tensorboard = tensorboardX.SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step, scalars):
    if not self._enabled:
      return
    record = {"step": int(step), **scalars}
    self._jsonl.append(json.dumps(record))
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


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
  """Joins a multi-host job (`jax.distributed.initialize`) before any JAX computation.

  On Cloud TPU pods every argument is discovered automatically; elsewhere (several
  processes on one machine or a GPU cluster) pass all three, e.g.
  `initialize_distributed("127.0.0.1:1234", 2, 0)` in the first of two processes.
  Its preemption service coordinates the stop on SIGTERM (`preemption.Preemption`).
  """
  preemption.enable_coordination()
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  logging.info(
    "process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def _wait_for_every_process(name):
  """A barrier across the processes of a multi-process run; nothing in a single one."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


_BATCH_FIELDS = ("mixture", "sources", "mask")


def _global_batch(local_batch, sharding):
  """Assembles each process's slice of the batch into one globally sharded array."""
  return {
    name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for name, value in local_batch.items()
    if name in _BATCH_FIELDS + ("weight",)
  }


def _check_resume(config, workdir):
  """Refuses, before anything is written, to resume the run in `workdir` with a config
  that differs from the saved one in a field its checkpoint fixes
  (`config_lib.resume_differences`), or that moves its learning-rate schedule
  (`config_lib.schedule_change`)."""
  if checkpoints.latest_step(workdir) is None:
    return
  saved = checkpoints.read_config(workdir)
  schedule_change = config_lib.schedule_change(saved, config)
  if schedule_change:
    raise errors.UsageError(workdir, f"cannot resume the run there: {schedule_change}")
  differences = config_lib.resume_differences(saved, config)
  if differences:
    listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in differences)
    raise errors.UsageError(
      workdir,
      f"cannot resume the run there with this config, which differs from its "
      f"{checkpoints.CONFIG_FILE} in {listed}. Train in a new --workdir; a resumed run may "
      f"change only {', '.join(config_lib.RESUMABLE_FIELDS)}",
    )


def _open_data(config, say):
  """Every split the run reads, opened (each file's header read) before step 1:
  `(training source, validation source)`. Makes the demo corpus first when the config
  asks for it (`data.synthesize_if_missing`)."""
  data = config.data
  if data.synthesize_if_missing:
    data_lib.ensure_demo_corpus(
      data.root, sample_rate=config.model.sample_rate, num_sources=config.model.num_sources
    )
  say(
    f"checking the data: {data.kind} at {data.root}, splits {data.train_split!r} and "
    f"{data.valid_split!r} (every file's header)"
  )
  train_source = data_lib.training_source(config)
  valid_source = data_lib.open_split(config, data.valid_split)
  say(f"  {train_source!r}\n  {valid_source!r}")
  return train_source, valid_source


def _augmentation(data_config):
  """The training loader's `data.Augmentation`, or None (`data.augment` off)."""
  if not data_config.augment:
    return None
  return data_lib.Augmentation.parts(
    voices=data_config.augment_voices, channel=data_config.augment_channel
  )


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


def failure(workdir, *, start_step, end_step, skipped):
  """Why a finished run failed, one line, or None: its last validation is not finite
  (it diverged), or every step it ran was skipped (non-finite loss or gradient)."""
  path = epath.Path(workdir) / METRICS_FILE
  records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  validations = [r for r in records if "valid_si_snri" in r]
  if validations and not np.all(np.isfinite(validations[-1]["valid_si_snri"])):
    return (
      f"{workdir}: training diverged: the validation SI-SNRi at step "
      f"{validations[-1]['step']} is not finite; no checkpoint is fit to use (lower "
      "config.optimizer.learning_rate and train in a new --workdir)"
    )
  if end_step > start_step and skipped >= end_step:
    return (
      f"{workdir}: every one of its {end_step} steps was skipped (non-finite loss or "
      "gradient): nothing was trained"
    )
  return None


def _summary(workdir, *, config, start_step, end_step, seconds, skipped, manager, failed=False):
  """The lines `train_and_evaluate` ends with: steps, time, skipped steps, the best
  validation per exit, and where the checkpoints are (recommended unless `failed`)."""
  lines = [
    f"trained to step {end_step} of {config.steps} ({end_step - start_step} steps "
    f"in {seconds / 60:.1f} min); {skipped} steps skipped in all (non-finite loss "
    "or gradient)"
  ]
  best = _best_validation(workdir)
  if best is None:
    lines.append("no validation yet (every config.eval_every steps, and at the last)")
  else:
    step, si_snri = best
    lines.append(
      f"best validation SI-SNRi (step {step}): "
      + ", ".join(f"exit {k} {value:.2f} dB" for k, value in enumerate(si_snri, start=1))
    )
  if not failed:
    lines.append(
      f"checkpoints: {workdir / 'checkpoints'} (latest step "
      f"{manager.latest_step()}, best {manager.best_step()}); `eesep separate "
      f"--checkpoint {workdir}` uses the best"
    )
  return "\n".join(lines)


def train_and_evaluate(config, workdir, *, fresh=False, profile_steps=None):
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Nothing is written before the config is validated (`config_lib.validate_config`),
  checked against a run it resumes (`_check_resume`) and every split's files checked.
  An exception in the loop saves a checkpoint of the last finished step before it
  propagates. The console shows the progress, a warning for skipped steps (at most
  one per `log_every` steps), each validation, and a summary at the end.

  Every `log_every` steps it logs the loss and the speed (`throughput.Throughput`:
  steps/s, seconds of audio per second, learning rate, MFU). Batches reach the devices
  a step ahead (`throughput.DevicePrefetch`), and JAX's persistent compilation cache
  is on (`config.compilation_cache_dir`).

  Args:
    config: an experiment `ConfigDict` (see `config_lib.base_config`).
    workdir: where the config, checkpoints, `metrics.jsonl` and TensorBoard events go:
      missing, empty, or holding a run of `eesep train` (`checkpoints.check_workdir`).
    fresh: start the run in `workdir` over, removing its checkpoints and logs (a run
      whose checkpoints are gone is refused without it).
    profile_steps: `(first, last)`: write a `jax.profiler` trace of these steps to
      `workdir/profile/`.

  Returns:
    The final `TrainState`.

  Raises:
    errors.UsageError: for a config error, a workdir that is not the run's, or a
      resume the checkpoint cannot take.
    errors.DataError: for data that cannot be used, and, after the summary, for a run
      that diverged or skipped every step (`failure`).
    errors.Preempted: after the summary, when a preemption (SIGTERM) stopped the run
      before `config.steps`, at the step it saved.
  """
  config_lib.validate_config(config)
  if config.batch_size % jax.process_count():
    raise errors.UsageError(
      "config.batch_size",
      f"{config.batch_size} is not divisible by the {jax.process_count()} processes",
    )
  workdir = checkpoints.absolute(workdir)
  is_lead = jax.process_index() == 0
  say = (
    functools.partial(tqdm.tqdm.write, file=sys.stdout)
    if is_lead
    else (lambda *args, **kwargs: None)
  )
  how = checkpoints.check_workdir(workdir, fresh)
  if how == "resume":
    _check_resume(config, workdir)
  throughput.use_compilation_cache(config.get("compilation_cache_dir", ""))
  train_source, valid_source = _open_data(config, say)
  workdir.mkdir(parents=True, exist_ok=True)
  # Only the lead marks the workdir (and empties it for `fresh`): the others have all
  # checked it before, and read it (the checkpoint to resume) only after.
  _wait_for_every_process("eesep_jax: workdir checked")
  if is_lead:
    checkpoints.start_run(workdir, how)
    checkpoints.write_config(config, workdir)
  _wait_for_every_process("eesep_jax: workdir started")
  storage.forget_listings(workdir)
  model_config = config_lib.model_config(config)
  model = models.PressNet(model_config)

  loader = data_lib.training_loader(
    train_source,
    batch_size=config.batch_size // jax.process_count(),
    segment_length=int(config.data.segment_seconds * model_config.sample_rate),
    seed=config.seed,
    shard_index=jax.process_index(),
    shard_count=jax.process_count(),
    num_workers=config.data.num_workers,
    dynamic_mixing=config.data.dynamic_mixing,
    augmentation=_augmentation(config.data),
  )
  iterator = iter(loader)
  segment_seconds = config.data.segment_seconds

  optimizer = make_optimizer(config.optimizer, config_lib.decay_steps(config))
  mesh = make_mesh()
  data_sharding = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  segment = int(config.data.segment_seconds * model_config.sample_rate)
  state = init_train_state(config, model, optimizer, jnp.zeros((1, segment)), replicated)

  stop = preemption.Preemption()
  manager = checkpoints.open_manager(workdir, config, stop)
  latest = manager.latest_step()
  if latest is not None:
    state = checkpoints.restore_state(manager, workdir, latest, state, iterator)
  say(
    f"resuming {workdir} from step {latest}"
    if latest is not None
    else f"training {workdir} from scratch"
  )

  train_step = make_train_step(config, model, optimizer)
  batches = throughput.DevicePrefetch(
    iterator, functools.partial(_global_batch, sharding=data_sharding)
  )
  speed = throughput.Throughput(
    schedule=learning_rate_schedule(config.optimizer, config_lib.decay_steps(config)),
    batch_size=config.batch_size,
    segment_seconds=segment_seconds,
    model_config=model_config,
    peak_flops=config.get("peak_flops", 0.0),
  )
  profile = throughput.Profile(workdir, profile_steps)
  writer = MetricsWriter(workdir, enabled=is_lead)
  start_step = int(state.step)
  skipped = _SkipWarnings(int(skipped_steps(state.opt_state)), start_step, say)
  start_time, validating = time.monotonic(), 0.0
  progress = tqdm.tqdm(
    total=config.steps,
    initial=start_step,
    disable=not is_lead,
    desc="train",
    unit="step",
    dynamic_ncols=True,
  )
  try:
    try:
      for step in range(start_step + 1, config.steps + 1):
        batch = next(batches)
        profile.before(step)
        state, step_metrics = train_step(state, batch)
        profile.after(step, step_metrics)
        progress.update(1)
        if step % config.log_every == 0 or step == config.steps:
          record = _train_record(step_metrics)
          record.update(speed.record(step))
          writer.write(step, record)
          skipped.update(step, record["skipped_steps"])
          progress.set_postfix(loss=f"{record['train_loss']:.3f}", skipped=skipped.total)
        valid_metrics = {}
        if step % config.eval_every == 0 or step == config.steps:
          began = time.monotonic()
          valid_metrics = _validate(
            state,
            model,
            config,
            valid_source,
            step,
            writer,
            say,
            train_seconds=began - start_time - validating,
            sharding=data_sharding,
          )
          validating += time.monotonic() - began
          speed.exclude(time.monotonic() - began)
        preempted = stop.reached(step)
        # A validated step is always saved, so the best checkpoint holds the
        # parameters its metric was measured on.
        checkpoints.save_state(
          manager,
          step,
          state,
          batches,
          metrics=valid_metrics or None,
          force=preempted or bool(valid_metrics) or step == config.steps,
        )
        if preempted:
          logging.warning(
            "process %d: preempted: saving step %d and stopping", jax.process_index(), step
          )
          break
    except BaseException:
      progress.close()
      _save_before_raising(manager, state, batches, say)
      raise
    finally:
      profile.stop()
      progress.close()
      manager.wait_until_finished()
      writer.close()
    end_step, skipped_total = int(state.step), int(skipped_steps(state.opt_state))
    failed = failure(workdir, start_step=start_step, end_step=end_step, skipped=skipped_total)
    if is_lead:
      print(
        _summary(
          workdir,
          config=config,
          start_step=start_step,
          end_step=end_step,
          seconds=time.monotonic() - start_time,
          skipped=skipped_total,
          manager=manager,
          failed=bool(failed),
        )
      )
    if failed:
      raise errors.DataError(failed)
    if end_step < config.steps and stop.step is not None:
      raise errors.Preempted(workdir, stop.step)
  finally:
    manager.close()
    stop.close()
  return state


def _train_record(step_metrics):
  """The training scalars `metrics.jsonl` logs, from one step's metrics."""
  scalars = jax.device_get(step_metrics)
  return {
    "train_loss": float(scalars["train_loss"]),
    "train_loss_per_exit": np.asarray(scalars["train_loss_per_exit"]).tolist(),
    "grad_norm": float(scalars["grad_norm"]),
    "skipped_steps": int(scalars["skipped_steps"]),
  }


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
      self._say(
        f"warning: steps {self._step + 1}-{step}: {total - self.total} skipped, "
        f"their loss or gradient was not finite ({total} in all)",
        file=sys.stderr,
      )
    self.total, self._step = total, step


def _validate(state, model, config, source, step, writer, say, train_seconds, sharding):
  """Validates `state` on `source`, says so before and after, logs it with
  `train_seconds` (this process's time in training so far, validation excluded: what
  `experiments/benchmarks/time_to_quality.py` plots); returns the metrics the
  checkpoint manager ranks checkpoints by. Each process evaluates its share of every
  batch (`evaluate_exits` with `sharding`)."""
  count = min(config.eval_max_utterances or len(source), len(source))
  say(f"step {step}: validating on {count} utterances of {source.name}")
  batches = data_lib.validation_batches(
    config,
    source=source,
    batch_size=validation_batch_size(sharding.mesh.size),
    pad_seconds=evaluate.PAD_SECONDS,
    shard_index=jax.process_index(),
    shard_count=jax.process_count(),
  )
  evaluation = evaluate_exits(state.params, model, batches, sharding)
  say(
    f"step {step}: validation SI-SNRi per exit "
    + ", ".join(f"{value:.2f}" for value in evaluation["si_snri"])
    + " dB"
  )
  writer.write(
    step,
    {
      "valid_si_snri": evaluation["si_snri"],
      "valid_nll": evaluation["nll"],
      "train_seconds": round(train_seconds, 3),
    },
  )
  return {checkpoints.BEST_METRIC: evaluation["si_snri"][-1]}
