"""A trained run: what `eesep train` left in a workdir (local or `gs://`), read whole.

    run = runs.load("runs/demo")
    result = inference.separate(run.variables, run.model_config, mixture[None],
                                target_snr_db=run.defaults.target_snr_db,
                                confidence=run.defaults.confidence,
                                posthoc_scales=run.posthoc_scales)

The one place `eesep separate`, `evaluate` and `calibrate`, the calibration report, the
demo and the notebooks load a run from: its experiment config
(`checkpoints.read_config`), the model and parameters of its best checkpoint
(`checkpoints.restore_params`), the post-hoc scales `eesep calibrate` saved in it
(`calibration.load_posthoc`, every one of the model's: `probabilistic.full_posthoc`)
with the regime they were fitted in, and the defaults its config sets for inference
and evaluation.

`load` reads the config; the checkpoint and the post-hoc file are read when first asked
for, so that a command checks its flags against the config before it spends seconds
restoring parameters, and `calibrate` replaces a damaged post-hoc file without reading
it.
"""

import dataclasses
import functools
import os
import pathlib

import ml_collections

from eesep_jax import errors
from eesep_jax import inference
from eesep_jax.analysis import calibration
from eesep_jax.core import probabilistic
from eesep_jax.training import checkpoints


def locate(path, start=None):
  """`path` if it exists, else `path` under the nearest folder above `start` (default:
  the working directory) that holds it; None when none does.

  How the notebooks find `runs/demo` and `data/demo`, from the repository root or from
  `notebooks/`, wherever the package is installed.
  """
  start = pathlib.Path(start or pathlib.Path.cwd()).resolve()
  for folder in (start, *start.parents):
    if (folder / path).exists():
      return folder / path
  return None


@dataclasses.dataclass(frozen=True)
class Defaults:
  """What a run's config sets for inference (`config.inference`: what `eesep separate`
  stops at and how it chunks) and for the reports' grid (`config.evaluation`)."""

  target_snr_db: float
  confidence: float
  chunk_seconds: float
  overlap_seconds: float
  chunk_batch: int
  targets_db: tuple
  confidences: tuple

  @classmethod
  def from_config(cls, config):
    """The defaults an experiment config (`checkpoints.read_config`'s) sets."""
    inference_config, evaluation = config.inference, config.evaluation
    return cls(
      target_snr_db=inference_config.target_snr_db,
      confidence=inference_config.confidence,
      chunk_seconds=inference_config.chunk_seconds,
      overlap_seconds=inference_config.overlap_seconds,
      chunk_batch=inference_config.chunk_batch,
      targets_db=tuple(evaluation.targets_db),
      confidences=tuple(evaluation.confidences),
    )


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A training workdir, read by `load`.

  Attributes:
    workdir: the workdir, as given.
    config: the experiment config it was trained with (`checkpoints.read_config`).
    defaults: its inference and evaluation defaults.
    step: the checkpoint to restore; None: the best (else latest).
    model_config, variables: the model (`models.PressNetConfig`) and `{"params": ...}`
      of that checkpoint, restored on first use.
    posthoc_scales: `{name: [exits]}` of every scale of the model's likelihood
      (missing ones are 1), or None when the run has no post-hoc calibration; read on
      first use.
    posthoc_regime: `{"chunk_seconds", "overlap_seconds"}` the scales were fitted in,
      or None for whole utterances (or no scales).
  """

  workdir: str | os.PathLike
  config: ml_collections.ConfigDict
  defaults: Defaults
  step: int | None = None

  @functools.cached_property
  def _restored(self):
    return checkpoints.restore_params(self.workdir, self.step)

  @functools.cached_property
  def checkpoint_step(self):
    """The step of the checkpoint `model_config` and `variables` come from."""
    return checkpoints.chosen_step(self.workdir, self.step)

  @property
  def model_config(self):
    return self._restored[0]

  @property
  def variables(self):
    return self._restored[1]

  @property
  def posthoc_path(self):
    """Where `eesep calibrate` saves the post-hoc scales (`calibration.POSTHOC_FILE`)."""
    return os.path.join(self.workdir, calibration.POSTHOC_FILE)

  @functools.cached_property
  def posthoc_scales(self):
    """Raises `errors.DataError`, naming the file, when it is damaged, does not fit the
    model, or was fitted on another checkpoint than `step`'s."""
    model_config = self.model_config  # The checkpoint first: its errors come first.
    scales = calibration.load_posthoc(self.workdir)
    if scales is None:
      return None
    # `eesep calibrate` fits the scales on the default checkpoint: another's are not them.
    fitted_on = None if self.step is None else checkpoints.chosen_step(self.workdir)
    if fitted_on not in (None, self.step):
      raise errors.DataError(
        f"{self.posthoc_path}: fitted on the checkpoint of step {fitted_on}, not on step "
        f"{self.step}; pass --no-posthoc to use step {self.step}"
      )
    try:
      return probabilistic.full_posthoc(scales, model_config)
    except ValueError as error:
      raise errors.DataError(
        f"{self.posthoc_path}: {error}. Run `eesep calibrate` again, or pass --no-posthoc."
      ) from None

  @functools.cached_property
  def posthoc_regime(self):
    return calibration.load_posthoc_regime(self.workdir)

  def chunk_lengths(self, chunk_seconds=None, overlap_seconds=None):
    """`(chunk, overlap)` in samples (`inference.chunk_lengths`) at the model's rate;
    None: the run's default."""
    return inference.chunk_lengths(
      self.model_config,
      self.defaults.chunk_seconds if chunk_seconds is None else chunk_seconds,
      self.defaults.overlap_seconds if overlap_seconds is None else overlap_seconds,
    )

  def posthoc_fits(self, chunk_seconds, overlap_seconds):
    """Whether the post-hoc scales were fitted (and their threshold certified) on the
    chunks `separate_long` cuts at these lengths: the same chunks in samples. False for
    scales fitted on whole utterances."""
    regime = self.posthoc_regime
    return regime is not None and self.chunk_lengths(chunk_seconds, overlap_seconds) == (
      self.chunk_lengths(regime["chunk_seconds"], regime["overlap_seconds"])
    )


def load(workdir, *, step=None, locate_data=False):
  """The trained run in `workdir` (a local path or `gs://...`).

  Args:
    workdir: a training workdir.
    step: the checkpoint to restore; None: the best (else latest).
    locate_data: find a relative `config.data.root` as `locate` finds it, from the
      working directory or a folder above (the notebooks, run from `notebooks/`, find
      the demo's `data/demo` so); else it stays relative to the working directory.

  Raises:
    errors.UsageError: when `workdir` is no training workdir.
    errors.DataError: when its config is damaged.
  """
  config = checkpoints.read_config(workdir)
  if locate_data:
    config.data.root = str(locate(config.data.root) or config.data.root)
  return TrainedRun(
    workdir=workdir, config=config, defaults=Defaults.from_config(config), step=step
  )
