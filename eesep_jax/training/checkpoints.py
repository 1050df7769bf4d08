"""Checkpoints of a training workdir: its saved config and the orbax checkpoint manager,
and restoring parameters for inference.

A workdir holds `config.json` (the experiment config) and `checkpoints/<step>/` (the
train state and the data iterator's position). The manager keeps the latest
`keep_checkpoints` and the best by validation SI-SNRi at the last exit.
"""

import json
import uuid

from etils import epath
import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from eesep_jax import config_lib
from eesep_jax import errors
from eesep_jax import files
from eesep_jax import models

CONFIG_FILE = "config.json"
BEST_METRIC = "valid_si_snri_last_exit"
# Marks a workdir as `eesep train`'s: a random run id, written before anything else.
RUN_FILE = "eesep_run.json"
# What a run writes in its workdir besides `RUN_FILE` (`fresh=True` removes them).
RUN_CONTENTS = (CONFIG_FILE, "checkpoints", "metrics.jsonl", "tensorboard")


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, told of a preemption by the training loop's `Preemption` rather
  than asking JAX's preemption sync point itself. Orbax also asks from its background
  thread that finalizes an asynchronous save, with that save's step: the runtime would
  take the older step as this process's position, and could then pick a stopping step
  this process has passed already, where it would never stop."""

  def __init__(self, directory, options, preemption):
    self._preemption = preemption
    super().__init__(directory, options=options)

  def reached_preemption(self, step):
    return self._preemption is not None and self._preemption.step == step


def open_manager(workdir, config, preemption=None):
  """Saves every `checkpoint_every` steps and at the step `preemption` (a
  `preemption.Preemption`) stops at; keeps the latest `keep_checkpoints` and the best by
  validation SI-SNRi at the last exit."""
  policies = ocp.checkpoint_managers
  options = ocp.CheckpointManagerOptions(
    save_decision_policy=policies.AnySavePolicy(
      [
        policies.FixedIntervalPolicy(config.checkpoint_every),
        policies.PreemptionCheckpointingPolicy(),
      ]
    ),
    preservation_policy=policies.AnyPreservationPolicy(
      [
        policies.LatestN(config.keep_checkpoints),
        # Higher is better: BestN keeps the end of an ascending sort.
        policies.BestN(
          get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
        ),
      ]
    ),
    best_fn=lambda m: m[BEST_METRIC],
    best_mode="max",
    enable_async_checkpointing=True,
  )
  return _Manager(absolute(workdir) / "checkpoints", options, preemption)


def absolute(workdir):
  """`workdir` as an absolute `epath.Path` (orbax needs absolute paths; `gs://` stays)."""
  path = epath.Path(workdir)
  return path if path.is_absolute() or "://" in str(workdir) else epath.Path(path.resolve())


def run_id(workdir):
  """The id in `workdir`'s `RUN_FILE`; None when it has none (or it is unreadable)."""
  path = epath.Path(workdir) / RUN_FILE
  try:
    return json.loads(path.read_text())["run_id"]
  except (OSError, ValueError, TypeError, KeyError):
    return None


def _has_checkpoint(workdir):
  folder = epath.Path(workdir) / "checkpoints"
  return folder.is_dir() and any(entry.name.isdigit() for entry in folder.iterdir())


def check_workdir(workdir, fresh=False):
  """Whether `eesep train` may use `workdir`: `"new"` (missing or empty: a new run),
  `"resume"` (a run of its own with a checkpoint) or `"fresh"` (a run of its own,
  started over as `fresh` asks). Writes nothing.

  A workdir is a run's own when it holds `RUN_FILE` (a random id a user's look-alike
  files lack), or, for runs older than that file, an orbax checkpoint next to its
  config.

  Raises:
    errors.UsageError: naming `workdir`, when it holds files that are no run of
      `eesep train` (a user's config.json or metrics.jsonl), or a run whose checkpoints
      are gone, which would restart and mix two runs' logs (unless `fresh`).
  """
  path = epath.Path(workdir)
  if not path.exists():
    return "new"
  if not path.is_dir():
    raise errors.UsageError(workdir, "is a file, not a folder for the run")
  names = sorted(entry.name for entry in path.iterdir())
  if not names:
    return "new"
  ours = run_id(path) is not None or ((path / CONFIG_FILE).is_file() and _has_checkpoint(path))
  if not ours:
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise errors.UsageError(
      workdir,
      f"holds files that are no eesep train run ({listed}): train in a new or empty --workdir",
    )
  if fresh:
    return "fresh"
  if _has_checkpoint(path):
    return "resume"
  if set(names) - {RUN_FILE, CONFIG_FILE}:
    raise errors.UsageError(
      workdir,
      "holds a run whose checkpoints are gone: --fresh "
      "starts it over (its logs and checkpoints are removed)",
    )
  return "new"  # Stopped before it wrote anything but its config: nothing to lose.


def start_run(workdir, how):
  """Prepares `workdir` for a run `check_workdir` allowed (`how`): creates it, removes
  a run's own files when it starts `"fresh"`, and marks it with a new `RUN_FILE`
  unless it resumes (or is a run that has one)."""
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  if how == "fresh":
    for name in RUN_CONTENTS:
      if (path / name).is_dir():
        (path / name).rmtree()
      elif (path / name).exists():
        (path / name).unlink()
  if how == "resume" and run_id(path) is not None:
    return
  files.write_text(path / RUN_FILE, json.dumps({"run_id": uuid.uuid4().hex}))


def write_config(config, workdir):
  """Writes `config` to `workdir/config.json`, never leaving a damaged one behind
  (`files.write_text`)."""
  files.write_text(epath.Path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2))


def read_config(workdir):
  """The experiment config a training run saved in `workdir`, with the schema's fields
  added since at their defaults (`config_lib.with_defaults`).

  Raises:
    errors.UsageError: when `workdir` holds no config (it is no training workdir).
    errors.DataError: when its config file is damaged.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise errors.UsageError(workdir, f"holds no {CONFIG_FILE}: is it a training workdir?")
  try:
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError.
    raise errors.DataError(f"{path}: damaged, not a JSON config ({error})") from None
  return config_lib.with_defaults(config)


def saved_model_config(workdir, config):
  """`config`'s model, saved in `workdir`; a `DataError` when it no longer builds."""
  try:
    return config_lib.model_config(config)
  except (ValueError, TypeError, KeyError) as error:
    raise errors.DataError(
      f"{epath.Path(workdir) / CONFIG_FILE}: its model does not build ({error})"
    ) from None


def latest_step(workdir):
  """The step of the latest checkpoint in `workdir`; None when it holds none (or no run)."""
  if (
    not (epath.Path(workdir) / CONFIG_FILE).is_file()
    or not (epath.Path(workdir) / "checkpoints").is_dir()
  ):
    return None
  manager = open_manager(workdir, read_config(workdir))
  try:
    return manager.latest_step()
  finally:
    manager.close()


def unreadable(workdir, step, error):
  """The `DataError` for a checkpoint orbax cannot read. Orbax wraps the reader's error
  in a dump of the array's whole spec; the innermost error says what failed."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return errors.DataError(
    f"{epath.Path(workdir) / 'checkpoints' / str(step)}: the "
    f"checkpoint cannot be read, damaged or truncated? ({first_line})"
  )


def abstract_params(model_config):
  """The parameters' shapes and dtypes, on this process's first device: the target of a
  restore that reads the parameters alone."""
  shapes = jax.eval_shape(
    models.PressNet(model_config).init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, model_config.sample_rate // 10), jnp.float32),
  )["params"]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)


def _chosen_step(manager, workdir, step):
  """`step`, or when None the best (else latest) step `manager` holds."""
  if step is None:
    step = manager.best_step() or manager.latest_step()
    if step is None:
      raise errors.UsageError(workdir, "holds no checkpoint: its training has not saved one")
  elif step not in manager.all_steps():
    saved = ", ".join(map(str, sorted(manager.all_steps()))) or "none"
    raise errors.UsageError(workdir, f"holds no checkpoint of step {step} (saved: {saved})")
  return step


def chosen_step(workdir, step=None):
  """The step `restore_params(workdir, step)` restores.

  Raises:
    As `restore_params`.
  """
  manager = open_manager(workdir, read_config(workdir))
  try:
    return _chosen_step(manager, workdir, step)
  finally:
    manager.close()


def restore_params(workdir, step=None):
  """`(model_config, variables)` of checkpoint `step` in `workdir`; None: the best
  (else latest).

  Only the parameters are read, not the optimizer state that inference has no use for
  (twice their size with Adam).

  Raises:
    errors.UsageError: when `workdir` is no training workdir, or holds no checkpoint (of
      `step`).
    errors.DataError: when its config or checkpoint is damaged.
  """
  config = read_config(workdir)
  model_config = saved_model_config(workdir, config)
  manager = open_manager(workdir, config)
  try:
    step = _chosen_step(manager, workdir, step)
    target = {"params": abstract_params(model_config)}
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
          )
        ),
      )
    except Exception as error:  # Orbax and tensorstore raise many kinds; all mean this.
      raise unreadable(workdir, step, error) from error
  finally:
    manager.close()
  return model_config, {"params": restored.state["params"]}


def save_state(manager, step, state, iterator, *, metrics=None, force=False):
  """Saves the train `state` and the data `iterator`'s position as checkpoint `step`
  (when `manager`'s policies or `force` ask for it)."""
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
    ),
    metrics=metrics,
    force=force,
  )


def restore_state(manager, workdir, step, state, iterator):
  """The train state of checkpoint `step`, shaped as `state`; `iterator` is moved to
  the saved position. A `DataError` when the checkpoint cannot be read."""
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), data=grain.checkpoint.CheckpointRestore(iterator)
      ),
    )
  except Exception as error:  # Orbax and tensorstore raise many kinds; all mean this.
    raise unreadable(workdir, step, error) from error
  return restored.state
