"""Stopping measured where a target policy lives: compute against reach.

    points = operating_points(table, gmacs_per_second=gmacs, targets=(6, 7, 8),
                              confidences=(0.5, 0.9))
    points.reach[points.target_index(7.0), points.column("probabilistic", 0.9)]

For a target `γ` and confidence `p` the method promises *reach* (the share of all
utterances whose worst source reaches `γ`) near full depth's, compute well below it
and near the oracle's (which stops each utterance at the first exit that truly
reaches `γ`), *honesty* (the utterances that stop before the last exit reach `γ` at a
rate near `p`), and that no static choice does better: no fixed exit, and no random
mix of fixed exits, reaches as many for as little compute.

`operating_points` simulates every policy (`policy_exits`: the stopping rule applied
across the exits of an exit table, without running the network again),
for every `γ` of a grid, and measures each of those promises with an interval:
Clopper–Pearson's on every share (`calibration.clopper_pearson`), a paired bootstrap
over utterances on means and differences (SI-SNRi, reach minus full depth's, reach
minus the static frontier's, the share of the oracle's saving). The results are
arrays `[targets, policies]`, a policy column per confidence of the probabilistic
policy, then expected-snr, the oracle and each fixed exit.

`static_frontier` is the best a random mix of fixed exits can do at a given compute
(the upper concave hull of the fixed exits' points, never below a cheaper exit's);
`span_targets` is the fine grid of whole dB over which the model's exits differ, and
`choose_target` the round target a user would pick on validation data.
"""

import dataclasses
import pathlib

from matplotlib import figure
import numpy as np

from eesep_jax import files
from eesep_jax.analysis import calibration
from eesep_jax.analysis import exit_table
from eesep_jax.core import stopping

CONFIDENCE_LEVEL = 0.95
# Bootstrap resamples of the utterances, drawn from a fixed seed: a report is the same
# every time it is made from the same table.
RESAMPLES = 1000
SEED = 0
# `span_targets`: the fine grid runs from where exit 1 reaches (1 − q) of utterances to
# where the last exit reaches q of them.
SPAN_QUANTILE = 0.1
# `choose_target`: exit 1 reaches the target for this share of validation utterances,
# and full depth for at least `MIN_DEPTH_GAIN` more.
EXIT1_REACH = (0.3, 0.7)
MIN_DEPTH_GAIN = 0.05
FIGURE_FILES = {"reach": "reach_compute.png", "satisfaction": "satisfaction.png"}
# The metrics whose means are reported at the exits a policy takes, when the table has them.
METRICS = (
  *(name + suffix for name in exit_table.SIGNAL_METRICS for suffix in ("", "i")),
  *exit_table.ENHANCEMENT_METRICS,
)


def policy_exits(table, policy, *, target_snr_db=None, confidence=None, exit_index=None):
  """The exit every utterance stops at under `policy`: the stopping rule
  (`stopping.accepts`, `stopping.first_accepting_exit`) applied across the exits of
  per-exit values, as the loop of `inference.separate` applies it exit by exit.

  Args:
    table: an `exit_table.ExitTable`: the probabilistic policy reads
      `probability[..., k]` for `target_snr_db`, expected-snr `expected_snr_db`, oracle
      `snr_min` (`[utterances, exits]` each).
    policy: one of `stopping.POLICIES`.
    target_snr_db: `γ` in dB (all but `"fixed"`).
    confidence: `p` (`"probabilistic"`).
    exit_index: 1-based exit (`"fixed"`).

  Returns:
    `[utterances]` 1-based exit indices.
  """
  rule = stopping.Policy(
    kind=policy, target_snr_db=target_snr_db, confidence=confidence, exit_index=exit_index
  )
  probability = (
    table.probability[..., table.target_index(target_snr_db)] if policy == "probabilistic" else None
  )
  accept = stopping.accepts(
    rule,
    np.arange(1, table.num_exits + 1),
    probability=probability,
    expected_snr_db=table.expected_snr_db,
    oracle_snr_db=table.snr_min,
  )
  accept = np.broadcast_to(accept, table.snr_min.shape)
  return np.asarray(stopping.first_accepting_exit(accept))


def masked_mean(values, axis=None):
  """Mean over the finite values, NaN where there are none: metrics can be undefined."""
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.sum(np.where(finite, values, 0.0), axis=axis) / np.sum(finite, axis=axis)


def span_targets(snr_min, quantile=SPAN_QUANTILE):
  """The fine grid of targets: every whole dB from where exit 1 reaches `1 − quantile`
  of utterances to where the last exit reaches `quantile` of them.

  Args:
    snr_min: `[utterances, exits]`, the worst source's SNR (`ExitTable.snr_min`).
    quantile: the share of utterances left out at either end.

  Returns:
    `[targets]` float64, ascending whole numbers of dB.
  """
  snr_min = np.asarray(snr_min, np.float64)
  low = np.floor(np.quantile(snr_min[:, 0], quantile))
  high = np.ceil(np.quantile(snr_min[:, -1], 1 - quantile))
  return np.arange(low, max(low, high) + 1)


def static_frontier(costs, values, at):
  """The best value a random mix of fixed exits gets for at most a given compute.

  A mix that runs exit `k` with probability `w_k` costs `Σ w_k c_k` and gets
  `Σ w_k v_k`; the best for compute `≤ c` mixes at most two exits (a linear programme's
  vertex), so it is the upper concave hull of the points `(c_k, v_k)` at `c`, or a
  cheaper exit's value where that is higher.

  Args:
    costs: `[exits]` compute of each exit (GMAC/s).
    values: `[..., exits]` what each exit gets (reach, SI-SNRi).
    at: `[...]` compute budgets (broadcast against `values`' leading axes).

  Returns:
    `[...]` float64: the best value; NaN where the budget is below every exit's cost.
  """
  costs = np.asarray(costs, np.float64)
  values = np.asarray(values, np.float64)
  at = np.asarray(at, np.float64)[..., None]
  # A budget that is an exit's cost summed in another order must still afford it.
  slack = 1e-9 * np.max(np.abs(costs))
  cheaper = np.max(np.where(costs <= at + slack, values, -np.inf), axis=-1)
  low, high = costs[:, None], costs[None, :]
  spread = high - low
  between = (spread > 0) & (low <= at[..., None] + slack) & (at[..., None] - slack <= high)
  with np.errstate(divide="ignore", invalid="ignore"):  # Pairs not `between`, dropped.
    # The dearer exit's weight in each pair (i, j).
    weight = np.clip((at[..., None] - low) / spread, 0.0, 1.0)
    mixed = values[..., :, None] + weight * (values[..., None, :] - values[..., :, None])
  hull = np.max(np.where(between, mixed, -np.inf), axis=(-2, -1))
  best = np.maximum(cheaper, hull)
  return np.where(np.isfinite(best), best, np.nan)


def oracle_share(full_cost, cost, oracle_cost):
  """The share of the oracle's saving a policy achieves: `(full − cost) / (full −
  oracle)`, arrays broadcast; NaN where the oracle saves nothing."""
  full_cost, cost, oracle_cost = (np.asarray(x, np.float64) for x in (full_cost, cost, oracle_cost))
  saving = full_cost - oracle_cost
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(saving > 0, (full_cost - cost) / saving, np.nan)


def bootstrap_weights(num_utterances, resamples=RESAMPLES, seed=SEED):
  """`[resamples, utterances]` int: how often each utterance is drawn in each bootstrap
  resample (`num_utterances` draws with replacement)."""
  rng = np.random.default_rng(seed)
  return rng.multinomial(
    num_utterances, np.full(num_utterances, 1 / num_utterances), size=resamples
  )


def percentile_interval(samples, confidence_level=CONFIDENCE_LEVEL):
  """`(low, high)`: the bootstrap percentile interval over the leading axis of
  `samples` `[resamples, ...]`, NaN where a resample is NaN."""
  tail = 100 * (1 - confidence_level) / 2
  return tuple(np.percentile(samples, [tail, 100 - tail], axis=0))


@dataclasses.dataclass(frozen=True, eq=False)
class OperatingPoints:
  """Every policy at every target, as arrays `[targets, policies]` unless noted.

  Intervals (`_low`, `_high`) are at `CONFIDENCE_LEVEL`: Clopper–Pearson on shares,
  bootstrap percentiles on means and differences.

  Attributes:
    targets_db: `[targets]`, the targets `γ`.
    policy: `[policies]` str, each column's policy (`stopping.POLICIES`).
    confidence: `[policies]`, the probabilistic policy's `p` (NaN for the others).
    exit_index: `[policies]` int, the fixed policy's exit (0 for the others).
    num_utterances: utterances measured.
    gmacs_by_exit: `[exits]`, compute to reach each exit.
    mean_exit, gmacs_per_second: the mean exit and compute.
    saved: `1 − gmacs_per_second / full depth's`.
    exit_histogram: `[targets, policies, exits]` utterances stopping at each exit.
    reach, reach_low, reach_high: share of all utterances whose worst source's SNR
      reaches `γ` at the exit taken.
    stopped_early: utterances stopping before the last exit.
    satisfaction, satisfaction_low, satisfaction_high: the share of those that reach
      `γ` (NaN when none stops early).
    means: `{metric: [targets, policies]}` mean of each metric at the exits taken
      (`METRICS` the table has; NaN where none is defined).
    si_snri_low, si_snri_high: the interval of `means["si_snri"]`.
    reach_gain, reach_gain_low, reach_gain_high: reach minus full depth's, the same
      utterances (paired).
    frontier_reach: the static frontier's reach at the policy's compute
      (`static_frontier` of the fixed exits' reach).
    frontier_gain, frontier_gain_low, frontier_gain_high: reach minus the frontier's.
    oracle_share, oracle_share_low, oracle_share_high: the share of the oracle's saving
      the policy achieves (`oracle_share`).
  """

  targets_db: np.ndarray
  policy: np.ndarray
  confidence: np.ndarray
  exit_index: np.ndarray
  num_utterances: int
  gmacs_by_exit: np.ndarray
  mean_exit: np.ndarray
  gmacs_per_second: np.ndarray
  saved: np.ndarray
  exit_histogram: np.ndarray
  reach: np.ndarray
  reach_low: np.ndarray
  reach_high: np.ndarray
  stopped_early: np.ndarray
  satisfaction: np.ndarray
  satisfaction_low: np.ndarray
  satisfaction_high: np.ndarray
  means: dict
  si_snri_low: np.ndarray
  si_snri_high: np.ndarray
  reach_gain: np.ndarray
  reach_gain_low: np.ndarray
  reach_gain_high: np.ndarray
  frontier_reach: np.ndarray
  frontier_gain: np.ndarray
  frontier_gain_low: np.ndarray
  frontier_gain_high: np.ndarray
  oracle_share: np.ndarray
  oracle_share_low: np.ndarray
  oracle_share_high: np.ndarray

  def target_index(self, target_snr_db):
    """Row of target `γ`."""
    matches = np.flatnonzero(self.targets_db == float(target_snr_db))
    if not matches.size:
      raise ValueError(f"no operating points at {float(target_snr_db):g} dB")
    return int(matches[0])

  def column(self, policy, setting=None):
    """Column of `policy`: `setting` is the probabilistic policy's `p`, the fixed
    one's exit (`-1`: the last), ignored for the others."""
    match = self.policy == policy
    if policy == "probabilistic":
      match &= np.isclose(self.confidence, setting)
    elif policy == "fixed":
      match &= self.exit_index == (
        setting % len(self.gmacs_by_exit) + 1 if setting < 0 else setting
      )
    matches = np.flatnonzero(match)
    if not matches.size:
      raise ValueError(f"no {policy} policy at {setting!r}")
    return int(matches[0])

  def to_json(self):
    """A dict of lists (NaN stays NaN: `evaluate.json_ready` makes it None)."""
    fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
    fields["exit_index"] = [int(k) or None for k in self.exit_index]
    fields["means"] = {name: value.tolist() for name, value in self.means.items()}
    return {
      name: value.tolist() if isinstance(value, np.ndarray) else value
      for name, value in fields.items()
    }


def from_json(fields):
  """The `OperatingPoints` of `OperatingPoints.to_json()`, or of it as
  `evaluation.json` holds it (NaN as None)."""

  def array(value, dtype=np.float64):
    return np.array(value, dtype)  # None is NaN as a float.

  kinds = {field.name: field.type for field in dataclasses.fields(OperatingPoints)}
  values = {
    name: array(value) if kinds[name] is np.ndarray else value
    for name, value in fields.items()
    if name not in ("policy", "exit_index", "stopped_early", "exit_histogram", "means")
  }
  values.update(
    policy=np.array(fields["policy"], str),
    exit_index=np.nan_to_num(array(fields["exit_index"])).astype(np.int64),
    stopped_early=array(fields["stopped_early"], np.int64),
    exit_histogram=array(fields["exit_histogram"], np.int64),
    means={name: array(value) for name, value in fields["means"].items()},
  )
  return OperatingPoints(**values)


def _columns(policies, confidences, num_exits):
  """`(policy, confidence, exit_index)` of every policy column, in the order of
  `stopping.POLICIES`."""
  columns = []
  for policy in stopping.POLICIES:
    if policy not in policies:
      continue
    if policy == "probabilistic":
      columns += [(policy, float(p), 0) for p in confidences]
    elif policy == "fixed":
      columns += [(policy, np.nan, k) for k in range(1, num_exits + 1)]
    else:
      columns.append((policy, np.nan, 0))
  return columns


def bootstrap_means(weights, values):
  """Means `[resamples, ...]` of `values` `[..., utterances]` in each resample."""
  return np.einsum("bn,...n->b...", weights, values) / weights.shape[1]


def operating_points(
  table,
  *,
  gmacs_per_second,
  targets,
  confidences=stopping.CONFIDENCES,
  policies=stopping.POLICIES,
  resamples=RESAMPLES,
  seed=SEED,
  confidence_level=CONFIDENCE_LEVEL,
):
  """Every policy at every target, measured (see the module docstring).

  Args:
    table: an `exit_table.ExitTable` with exit probabilities for every target.
    gmacs_per_second: `[exits]` compute to reach each exit.
    targets: the targets `γ` in dB.
    confidences: the probabilistic policy's `p`.
    policies: which of `stopping.POLICIES` to measure.
    resamples, seed: the paired bootstrap's (`bootstrap_weights`).
    confidence_level: coverage of every interval.

  Returns:
    An `OperatingPoints`.
  """
  targets = np.asarray(sorted({float(t) for t in targets}), np.float64)
  num_exits, rows = table.num_exits, np.arange(len(table.ids))
  costs = np.asarray(gmacs_per_second, np.float64)
  columns = _columns(policies, confidences, num_exits)
  # [targets, policies, utterances]: the 0-based exit each utterance takes.
  taken = np.array(
    [
      [
        policy_exits(
          table, policy, target_snr_db=target, confidence=confidence, exit_index=exit_index
        )
        - 1
        for policy, confidence, exit_index in columns
      ]
      for target in targets
    ],
    np.int64,
  ).reshape(len(targets), len(columns), len(rows))
  reached = table.snr_min[rows, taken] >= targets[:, None, None]
  early = taken < num_exits - 1
  # The fixed exits' reach, what the frontier mixes: [targets, exits, utterances].
  exit_reached = (table.snr_min.T >= targets[:, None, None]).astype(np.float64)
  oracle = np.array(
    [policy_exits(table, "oracle", target_snr_db=target) - 1 for target in targets]
  )  # [targets, utterances]
  compute = costs[taken]
  present = {name: getattr(table, name) for name in METRICS if getattr(table, name) is not None}
  means = {name: masked_mean(values[rows, taken], axis=-1) for name, values in present.items()}

  def measured(weights=None):
    """The means and differences that get bootstrap intervals, for resample weights
    `[resamples, utterances]` (None: the utterances as they are)."""
    mean = (
      (lambda x: x.mean(axis=-1)) if weights is None else (lambda x: bootstrap_means(weights, x))
    )
    reach, gmacs = mean(reached.astype(np.float64)), mean(compute)
    exit_reach = mean(exit_reached)  # [..., targets, exits]
    return {
      "si_snri": mean(table.si_snri[rows, taken]),
      "reach_gain": reach - exit_reach[..., -1:],
      "frontier_gain": reach - static_frontier(costs, exit_reach[..., None, :], gmacs),
      "oracle_share": oracle_share(costs[-1], gmacs, mean(costs[oracle])[..., None]),
    }

  point = measured()
  samples = measured(bootstrap_weights(len(rows), resamples, seed))
  intervals = {
    f"{name}_{end}": bound
    for name, values in samples.items()
    for end, bound in zip(("low", "high"), percentile_interval(values, confidence_level))
  }
  successes, stopped = np.sum(reached & early, axis=-1), np.sum(early, axis=-1)
  gmacs = compute.mean(axis=-1)
  with np.errstate(invalid="ignore"):
    satisfaction = successes / stopped
  return OperatingPoints(
    targets_db=targets,
    policy=np.array([c[0] for c in columns], str),
    confidence=np.array([c[1] for c in columns], np.float64),
    exit_index=np.array([c[2] for c in columns], np.int64),
    num_utterances=len(rows),
    gmacs_by_exit=costs,
    mean_exit=taken.mean(axis=-1) + 1,
    gmacs_per_second=gmacs,
    saved=1 - gmacs / costs[-1],
    exit_histogram=np.apply_along_axis(np.bincount, -1, taken, minlength=num_exits),
    reach=reached.mean(axis=-1),
    **dict(
      zip(
        ("reach_low", "reach_high"),
        calibration.clopper_pearson(reached.sum(axis=-1), len(rows), confidence_level),
      )
    ),
    stopped_early=stopped,
    satisfaction=satisfaction,
    **dict(
      zip(
        ("satisfaction_low", "satisfaction_high"),
        calibration.clopper_pearson(successes, stopped, confidence_level),
      )
    ),
    means=means,
    si_snri_low=intervals["si_snri_low"],
    si_snri_high=intervals["si_snri_high"],
    reach_gain=point["reach_gain"],
    reach_gain_low=intervals["reach_gain_low"],
    reach_gain_high=intervals["reach_gain_high"],
    frontier_reach=static_frontier(costs, np.mean(exit_reached, axis=-1)[:, None, :], gmacs),
    frontier_gain=point["frontier_gain"],
    frontier_gain_low=intervals["frontier_gain_low"],
    frontier_gain_high=intervals["frontier_gain_high"],
    oracle_share=point["oracle_share"],
    oracle_share_low=intervals["oracle_share_low"],
    oracle_share_high=intervals["oracle_share_high"],
  )


def choose_target(snr_min, reach_range=EXIT1_REACH, min_gain=MIN_DEPTH_GAIN):
  """The round target a user would pick on validation data: a whole dB that exit 1
  reaches for a share in `reach_range` of utterances and full depth for at least
  `min_gain` more; of those, the one where depth gains most.

  Args:
    snr_min: `[utterances, exits]`, the worst source's SNR at every exit (the
      validation split's `ExitTable.snr_min`).
    reach_range: `(low, high)` share of utterances exit 1 reaches it for.
    min_gain: how much more full depth must reach.

  Returns:
    `(target_snr_db, reach)`: the target and `[exits]` the share each exit reaches it
    for.

  Raises:
    ValueError: when no whole dB qualifies.
  """
  snr_min = np.asarray(snr_min, np.float64)
  candidates = span_targets(snr_min, quantile=0.0)
  reach = np.mean(snr_min[None] >= candidates[:, None, None], axis=1)  # [targets, exits]
  gain = reach[:, -1] - reach[:, 0]
  fits = (reach_range[0] <= reach[:, 0]) & (reach[:, 0] <= reach_range[1]) & (gain >= min_gain)
  if not fits.any():
    raise ValueError(
      f"no whole dB that exit 1 reaches for {reach_range[0]:.0%}-{reach_range[1]:.0%} of "
      f"utterances and full depth for {min_gain:.0%} more; best depth gain "
      f"{gain.max():.0%} at {candidates[np.argmax(gain)]:g} dB"
    )
  best = np.flatnonzero(fits)[np.argmax(gain[fits])]
  return float(candidates[best]), reach[best]


# ----------------------------------------------------------------------------------
# Figures (matplotlib's object interface, as `calibration_report`'s).


def figure_targets(points, target_snr_db=None, count=4):
  """Up to `count` targets to draw: `target_snr_db` (if measured) and others spread
  evenly over the grid."""
  grid = points.targets_db
  chosen = {float(grid[i]) for i in np.linspace(0, grid.size - 1, count).round().astype(int)}
  if target_snr_db is not None and float(target_snr_db) in grid:
    nearest = min(chosen, key=lambda t: abs(t - target_snr_db))
    chosen = (chosen - {nearest}) | {float(target_snr_db)}
  return sorted(chosen)


def _interval_bars(ax, x, value, low, high, **style):
  """`value` against `x` joined by a line, with error bars from `low` to `high`."""
  ax.errorbar(
    x, value, np.stack([value - low, high - value]), fmt="o-", markersize=3, capsize=2, **style
  )


def reach_figure(points, targets):
  """Reach against GMAC/s, a panel per target: the fixed exits joined, the static
  frontier (their best random mix), the probabilistic policy over `p` with
  Clopper–Pearson bars, expected-snr and the oracle."""
  fig = figure.Figure(figsize=(3.4 * len(targets), 3.4), layout="constrained")
  axes = fig.subplots(1, len(targets), squeeze=False, sharey=True)[0]
  fixed = np.flatnonzero(points.policy == "fixed")
  probabilistic = np.flatnonzero(points.policy == "probabilistic")
  budgets = np.linspace(points.gmacs_by_exit[0], points.gmacs_by_exit[-1], 200)
  for ax, target in zip(axes, targets):
    i = points.target_index(target)
    if fixed.size:
      ax.plot(
        points.gmacs_per_second[i, fixed],
        points.reach[i, fixed],
        "s-",
        color="k",
        linewidth=0.8,
        label="fixed exits",
      )
      ax.plot(
        budgets,
        static_frontier(points.gmacs_by_exit, points.reach[i, fixed], budgets),
        "--",
        color="0.5",
        linewidth=1.0,
        label="static frontier",
      )
    if probabilistic.size:
      _interval_bars(
        ax,
        points.gmacs_per_second[i, probabilistic],
        *(getattr(points, name)[i, probabilistic] for name in ("reach", "reach_low", "reach_high")),
        color="C0",
        label="probabilistic (over p)",
      )
    for policy, style in (("expected-snr", "D"), ("oracle", "*")):
      for q in np.flatnonzero(points.policy == policy):
        ax.plot(
          points.gmacs_per_second[i, q],
          points.reach[i, q],
          style,
          markersize=9 if style == "*" else 5,
          label=policy,
          color="C3" if policy == "oracle" else "C2",
        )
    ax.set(title=f"γ = {target:g} dB", xlabel="GMAC/s", ylim=(0, 1.02))
  axes[0].set_ylabel(f"reach: share of {points.num_utterances} utterances ≥ γ")
  axes[0].legend(fontsize="x-small", loc="lower right")
  return fig


def satisfaction_figure(points, targets):
  """Satisfaction against `p`, a line per target: the share of utterances stopping
  before the last exit that reach `γ`, with Clopper–Pearson bars, against the diagonal
  a calibrated decision follows."""
  fig = figure.Figure(figsize=(4.8, 4.2), layout="constrained")
  ax = fig.subplots()
  ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8)
  columns = np.flatnonzero(points.policy == "probabilistic")
  for n, target in enumerate(targets):
    i = points.target_index(target)
    shown = columns[points.stopped_early[i, columns] > 0]
    if not shown.size:
      continue
    offset = (n - (len(targets) - 1) / 2) * 0.006  # Bars side by side, not on top.
    _interval_bars(
      ax,
      points.confidence[shown] + offset,
      *(
        getattr(points, name)[i, shown]
        for name in ("satisfaction", "satisfaction_low", "satisfaction_high")
      ),
      color=f"C{n}",
      label=f"γ = {target:g} dB",
    )
  confidences = points.confidence[columns]
  low = min(confidences.min(), 0.5) - 0.05 if columns.size else 0.0
  ax.set(
    xlim=(low, 1.0),
    ylim=(low, 1.02),
    xlabel="confidence p asked",
    ylabel="share of early-stopped utterances reaching γ",
    title="Satisfaction at the decision (probabilistic policy)",
  )
  ax.legend(fontsize="small", loc="lower right")
  return fig


def figures(points, target_snr_db=None):
  """The figures of `FIGURE_FILES`, by kind (matplotlib `Figure`s)."""
  targets = figure_targets(points, target_snr_db)
  return {
    "reach": reach_figure(points, targets),
    "satisfaction": satisfaction_figure(points, targets),
  }


def write_figures(out_dir, points, target_snr_db=None):
  """Writes `FIGURE_FILES` to `out_dir`, each whole or not at all
  (`files.atomic_writes`); returns their paths by kind."""
  paths = {kind: pathlib.Path(out_dir) / name for kind, name in FIGURE_FILES.items()}
  with files.atomic_writes(paths) as partials:
    for kind, drawn in figures(points, target_snr_db).items():
      drawn.savefig(partials[kind], dpi=120)
  return paths
