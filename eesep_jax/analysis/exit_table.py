"""The exit table: every exit of every evaluated utterance, as arrays.

    table, summary = evaluate.evaluate_model(variables, config, source)
    table.save("exit_table.npz")             # What `eesep evaluate` and `calibrate` write.
    table = exit_table.load("exit_table.npz")
    table.si_snri.mean(axis=0)                                  # [exits]
    table.probability[..., table.target_index(15.0)]            # [utterances, exits]

`evaluate.evaluate_model` builds it (`from_exit_outputs`, one utterance at a time, then
`concatenate`); the summary, the simulated policies and the calibration report read
its fields. `save` writes it as an `.npz` of plain arrays (no pickle: strings are
unicode arrays, the variance parameters `variance_<name>`), which `load` reads back
exactly. `to_csv` is the export for people, `per_utterance.csv`: one row per
utterance and exit, with columns such as `snr_s1` and `probability_15db`; nothing
reads it back.
"""

import csv
import dataclasses
import pathlib

import jax
import numpy as np

from eesep_jax.analysis import scores

# The per-exit metrics, means over sources: each comes with its improvement (`<name>i`)
# over the mixture as the estimate.
SIGNAL_METRICS = ("si_snr", "snr", "sdr")
ENHANCEMENT_METRICS = {"pesq": scores.pesq, "stoi": scores.stoi}
# The variance parameters `{name: ...}` are stored as `variance_<name>`.
VARIANCE_PREFIX = "variance_"


def probability_column(target_snr_db):
  """Name of the exit probability for target `γ` dB in the CSV export and the summary."""
  return f"probability_{target_snr_db:g}db"


# No generated `==`: arrays do not compare to one truth value.
@dataclasses.dataclass(frozen=True, eq=False)
class ExitTable:
  """Every exit of every evaluated utterance (or chunk of one), as numpy arrays.

  Sources are in reference order at every exit (the permutation of best mean SI-SNR);
  exits are the second axis, exit `k` (1-based) at index `k − 1`.

  Attributes:
    ids: `[utterances]` str, each row's id: the utterance's, or `<utterance>@<first
      sample>` for a chunk of a longer one (`evaluate.evaluate_model` with
      `chunk_seconds`).
    utterance: `[utterances]` str, the utterance each row belongs to (`ids` for whole
      utterances).
    num_samples: `[utterances]` int, the samples `T` evaluated.
    targets_db: `[targets]` float, the targets `γ` of `probability`.
    si_snr, si_snri, snr, snri, sdr, sdri: `[utterances, exits]` dB, means over sources
      (the improvements over the mixture as the estimate).
    snr_min: `[utterances, exits]` dB, the worst source's SNR under its best
      permutation (what the oracle policy and "reached the target" test).
    expected_snr_db: `[utterances, exits]`, the worst source's expected SNR.
    probability: `[utterances, exits, targets]`, the exit probability `P(SNR ≥ γ)`.
    source_snr: `[utterances, exits, sources]` dB, each source's realised SNR.
    error_energy: `[utterances, exits, sources]`, `E = ‖s − ŝ‖²`.
    estimate_energy: `[utterances, exits, sources]`, `S = ‖ŝ‖²`.
    variance: `{name: [utterances, exits, sources, blocks]}`, the variance parameters
      (`alpha`, `beta` or `variance`) as the probabilities used them (after post-hoc
      scales, if any); one block without `block_length`, else NaN beyond a row's own
      blocks.
    crosstalk: `[utterances, exits]`, the estimates' `probabilistic.crosstalk`, which
      a `crosstalk_slope` widens the variance by; None in tables saved before it was
      recorded.
    chunk_start: `[utterances]` int, a chunk's first sample in its utterance; None when
      utterances were evaluated whole.
    pesq, stoi: `[utterances, exits]`, means over sources; None when not computed, NaN
      where a source could not be scored.
    problems: `[utterances, exits]` str, why PESQ or STOI is NaN ("" when it is not);
      None with them.
  """

  ids: np.ndarray
  utterance: np.ndarray
  num_samples: np.ndarray
  targets_db: np.ndarray
  si_snr: np.ndarray
  si_snri: np.ndarray
  snr: np.ndarray
  snri: np.ndarray
  sdr: np.ndarray
  sdri: np.ndarray
  snr_min: np.ndarray
  expected_snr_db: np.ndarray
  probability: np.ndarray
  source_snr: np.ndarray
  error_energy: np.ndarray
  estimate_energy: np.ndarray
  variance: dict
  crosstalk: np.ndarray | None = None
  chunk_start: np.ndarray | None = None
  pesq: np.ndarray | None = None
  stoi: np.ndarray | None = None
  problems: np.ndarray | None = None

  @property
  def num_exits(self):
    """Exits of the model evaluated."""
    return self.snr_min.shape[1]

  @property
  def num_blocks(self):
    """Variance blocks of the longest row."""
    return next(iter(self.variance.values())).shape[-1]

  def target_index(self, target_snr_db):
    """Index of target `γ` on the last axis of `probability`."""
    matches = np.flatnonzero(self.targets_db == float(target_snr_db))
    if not matches.size:
      raise ValueError(
        f"no exit probabilities for {float(target_snr_db):g} dB: the table "
        f"has {', '.join(f'{t:g}' for t in self.targets_db)} dB"
      )
    return int(matches[0])

  def arrays(self):
    """`{name: array}`: every field that is not None, the variance parameters as
    `variance_<name>`; what `save` writes."""
    arrays = {
      field.name: getattr(self, field.name)
      for field in dataclasses.fields(self)
      if field.name != "variance" and getattr(self, field.name) is not None
    }
    return {**arrays, **{VARIANCE_PREFIX + name: value for name, value in self.variance.items()}}

  def subset(self, index):
    """The rows `index`: a slice, an array of indices or a boolean mask `[utterances]`."""
    return from_arrays(
      {
        name: value if name == "targets_db" else value[index]
        for name, value in self.arrays().items()
      }
    )

  def save(self, path):
    """Writes the table to the `.npz` file `path` (`load` reads it back exactly)."""
    np.savez(path, **self.arrays())

  def to_csv(self, path):
    """Writes the export for people, one row per utterance and exit, to the CSV file
    `path` (6 significant digits).

    Columns: `id`, `exit` (1-based), `si_snr`, `si_snri`, `snr`, `snri`, `sdr`, `sdri`,
    with PESQ and STOI `pesq`, `stoi` and `problems`, then `snr_min`,
    `probability_{γ}db` per target, `expected_snr_db`, `crosstalk` (when recorded),
    `num_samples`, and per source
    `c` (1-based, reference order) `snr_s{c}`, `error_energy_s{c}`,
    `estimate_energy_s{c}` and `{name}_s{c}` for every variance parameter (in order of
    name; a number, or its blocks joined by ";"); for chunks (`chunk_start` given),
    `utterance` and `chunk_start`.
    """
    columns = self._columns()
    shape = self.snr_min.shape
    with pathlib.Path(path).open("w", newline="") as file:
      writer = csv.writer(file)
      writer.writerow(columns)
      writer.writerows(
        [_cell(values[i, k]) for values in columns.values()]
        for i in range(shape[0])
        for k in range(shape[1])
      )

  def _columns(self):
    """`{column: [utterances, exits, ...] values}` of `to_csv`, in its order."""
    shape = self.snr_min.shape

    def each_exit(values):
      return np.broadcast_to(values[:, None], shape)

    columns = {
      "id": each_exit(self.ids),
      "exit": np.broadcast_to(np.arange(1, shape[1] + 1), shape),
    }
    for name in SIGNAL_METRICS:
      columns[name], columns[f"{name}i"] = getattr(self, name), getattr(self, f"{name}i")
    if self.pesq is not None:
      columns.update(pesq=self.pesq, stoi=self.stoi, problems=self.problems)
    columns["snr_min"] = self.snr_min
    for k, target in enumerate(self.targets_db):
      columns[probability_column(target)] = self.probability[..., k]
    columns["expected_snr_db"] = self.expected_snr_db
    if self.crosstalk is not None:
      columns["crosstalk"] = self.crosstalk
    columns["num_samples"] = each_exit(self.num_samples)
    per_source = {
      "snr": self.source_snr,
      "error_energy": self.error_energy,
      "estimate_energy": self.estimate_energy,
      **dict(sorted(self.variance.items())),
    }
    for name, values in per_source.items():
      columns.update({f"{name}_s{c + 1}": values[:, :, c] for c in range(values.shape[2])})
    if self.chunk_start is not None:
      columns.update(utterance=each_exit(self.utterance), chunk_start=each_exit(self.chunk_start))
    return columns


def _cell(value):
  """One CSV cell: text as it is, integers whole, floats to 6 digits, a row's variance
  blocks (NaN padding dropped) one number or joined by ";"."""
  if np.ndim(value):
    blocks = value[~np.isnan(value)]
    return _cell(blocks[0]) if blocks.size == 1 else ";".join(map(_cell, blocks))
  if isinstance(value, str) or np.issubdtype(type(value), np.integer):
    return str(value)
  return f"{value:.6g}"


def from_arrays(arrays):
  """The table of `ExitTable.arrays()`."""
  fields = {name: value for name, value in arrays.items() if not name.startswith(VARIANCE_PREFIX)}
  variance = {
    name.removeprefix(VARIANCE_PREFIX): value
    for name, value in arrays.items()
    if name.startswith(VARIANCE_PREFIX)
  }
  return ExitTable(**fields, variance=variance)


def load(path):
  """The table `ExitTable.save` wrote to `path`."""
  with np.load(path) as stored:
    return from_arrays({name: stored[name] for name in stored.files})


def concatenate(tables):
  """One table of the rows of `tables`, in order: their targets and fields must agree.
  Variance blocks are padded with NaN to the most any row has."""
  arrays = [table.arrays() for table in tables]
  names = arrays[0].keys()
  if any(other.keys() != names for other in arrays):
    raise ValueError(
      "tables with different fields (chunks and whole utterances, PESQ "
      "and STOI or not, or other variance parameters)"
    )
  targets = arrays[0]["targets_db"]
  if any(not np.array_equal(other["targets_db"], targets) for other in arrays):
    raise ValueError("tables with different targets_db")
  blocks = max(table.num_blocks for table in tables)

  def joined(name):
    parts = [other[name] for other in arrays]
    if name.startswith(VARIANCE_PREFIX):  # Rows of other lengths, other block counts.
      parts = [
        np.pad(part, [(0, 0)] * 3 + [(0, blocks - part.shape[-1])], constant_values=np.nan)
        for part in parts
      ]
    return np.concatenate(parts)

  return from_arrays({name: targets if name == "targets_db" else joined(name) for name in names})


def _enhancement_scores(references, estimates, sample_rate):
  """`({name: [exits]}, [exits])`: PESQ and STOI, means over sources, and the problems
  met at each exit. A source that cannot be scored makes its exit's score NaN."""
  values = {name: np.zeros(estimates.shape[0]) for name in ENHANCEMENT_METRICS}
  problems = [[] for _ in estimates]
  for k, exit_estimates in enumerate(estimates):
    for name, metric in ENHANCEMENT_METRICS.items():
      results = [
        metric(reference, estimate, sample_rate)
        for reference, estimate in zip(references, exit_estimates)
      ]
      values[name][k] = np.mean([score for score, _ in results])
      problems[k] += [f"s{c + 1}: {problem}" for c, (_, problem) in enumerate(results) if problem]
  return values, ["; ".join(exit_problems) for exit_problems in problems]


def from_exit_outputs(
  example_id,
  outputs,
  mixture,
  references,
  *,
  sample_rate,
  targets,
  enhancement_metrics=False,
  utterance=None,
  chunk_start=None,
):
  """The one-row table of one utterance, from its `evaluate.exit_outputs`.

  Args:
    example_id: the row's id.
    outputs: `evaluate.exit_outputs(...)` of this utterance (cropped to its length).
    mixture: `[time]`.
    references: `[sources, time]`.
    sample_rate: in Hz, for PESQ and STOI.
    targets: the targets `γ` in dB `outputs` was computed for.
    enhancement_metrics: also compute PESQ and STOI (per source, then averaged).
    utterance: the utterance the row is a chunk of; None: `example_id`.
    chunk_start: the chunk's first sample in it; None for a whole utterance.

  Returns:
    An `ExitTable` of one row.
  """
  outputs = jax.device_get(outputs)
  references = np.asarray(references)
  estimates = np.asarray(outputs["estimates"])  # [exits, sources, time]
  values = {
    "si_snr": outputs["si_snr"],
    "snr": outputs["snr"],
    "sdr": scores.sdr(references, estimates),
  }
  baselines = {
    "si_snr": outputs["si_snr_input"],
    "snr": outputs["snr_input"],
    "sdr": scores.sdr(references, np.broadcast_to(mixture, references.shape)),
  }
  fields = {}
  for name in SIGNAL_METRICS:
    fields[name] = np.mean(values[name], axis=-1)
    fields[f"{name}i"] = np.mean(values[name] - baselines[name], axis=-1)
  if enhancement_metrics:
    enhancement, problems = _enhancement_scores(references, estimates, sample_rate)
    fields.update(enhancement, problems=np.array(problems, str))
  # In float64: an error energy is a sum of many small squares.
  fields["error_energy"] = np.sum(np.square(references - estimates.astype(np.float64)), axis=-1)
  fields["estimate_energy"] = np.sum(np.square(estimates.astype(np.float64)), axis=-1)
  fields.update(
    snr_min=outputs["snr_min"],
    expected_snr_db=outputs["expected_snr_db"],
    probability=outputs["probability"],
    source_snr=outputs["snr"],
    crosstalk=outputs["crosstalk"],
  )
  row = {
    name: (value if value.dtype.kind == "U" else value.astype(np.float64))[None]
    for name, value in fields.items()
  }
  return ExitTable(
    ids=np.array([example_id], str),
    utterance=np.array([example_id if utterance is None else utterance], str),
    chunk_start=None if chunk_start is None else np.array([chunk_start], np.int64),
    num_samples=np.array([references.shape[-1]], np.int64),
    targets_db=np.asarray(targets, np.float64),
    variance={
      name: np.asarray(value, np.float64)[None] for name, value in outputs["variance"].items()
    },
    **row,
  )
