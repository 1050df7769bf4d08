"""Evaluation on full-length utterances: metrics at every exit, simulated stopping policies.

    table, summary = evaluate_model(variables, model_config, source, max_utterances=100)
    write_report("runs/demo/eval", table, summary)   # or `eesep evaluate --checkpoint ...`

One full-depth forward per utterance (the training path, which the stopping loop
reproduces exactly, docs/method.md §7) gives every exit's estimates and variance parameters.
From them come the metrics of every exit and its exit probabilities for a grid of
targets; every stopping policy of `inference.separate` is then *simulated* from these
per-exit numbers (stop at the first exit whose condition holds, else at the last), for
every `(target_snr_db, confidence)` of the grid, without running the network again.
The per-exit numbers are an `exit_table.ExitTable` of `[utterances, exits, ...]` arrays.

Estimates are matched to references by the permutation that maximises their mean
SI-SNR, per exit. Utterances are sorted by length and run `EVAL_BATCH` at a time,
zero-padded to a multiple of `PAD_SECONDS` with their valid lengths: the network,
the variance parameters and the probabilities then come out as for each utterance
alone (`models.PressNet` masks the padding), and jit compiles once per bucket length
instead of once per utterance.
"""

import functools
import itertools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from eesep_jax import data
from eesep_jax import files
from eesep_jax import inference
from eesep_jax import models
from eesep_jax.analysis import exit_table
from eesep_jax.analysis import operating_points
from eesep_jax.core import metrics
from eesep_jax.core import permutation
from eesep_jax.core import probabilistic
from eesep_jax.core import stopping

# Utterances per forward, and the step of the padded lengths (few buckets, so few
# compilations, against the compute padding wastes).
EVAL_BATCH = 8
PAD_SECONDS = 1.0
# The targets a fine grid may hold (`evaluate_model`'s `span`): exit probabilities are
# computed for all of them in the forward pass, before the span is known.
SPAN_CANDIDATES_DB = tuple(float(t) for t in range(-10, 41))
JSON_FILE = "evaluation.json"
TABLE_FILE = "exit_table.npz"
CSV_FILE = "per_utterance.csv"
MARKDOWN_FILE = "evaluation.md"
# The means the summary reports for every exit and policy, when the table has them
# (PESQ and STOI are not always computed), with their Markdown headers.
SUMMARY_METRICS = {
  "si_snr": "SI-SNR",
  "si_snri": "SI-SNRi",
  "snr": "SNR",
  "snri": "SNRi",
  "sdr": "SDR",
  "sdri": "SDRi",
  "pesq": "PESQ",
  "stoi": "STOI",
}


def _utterance_outputs(
  outputs,
  mixture,
  references,
  length,
  *,
  config,
  conditions,
  posthoc_scales,
  targets,
  reference_power,
):
  """`_exit_outputs` for one utterance of a padded batch (see `exit_outputs`)."""
  estimates = outputs["estimates"]
  crosstalk = probabilistic.crosstalk(estimates)
  variance = probabilistic.apply_posthoc(
    outputs["variance"], posthoc_scales, exit_axis=0, crosstalk=crosstalk[:, None, None]
  )
  probability = jax.vmap(
    lambda target: probabilistic.exit_probability(
      estimates,
      variance,
      target,
      conditions=conditions,
      mixture=mixture,
      reference_power=reference_power,
      config=config.variance,
      lengths=length,
    ),
    out_axes=-1,
  )(targets)
  expected = jnp.min(
    probabilistic.expected_snr_db(estimates, variance, config.variance, lengths=length), axis=-1
  )
  # The oracle policy's test, on the network's own output order.
  snr_min = inference.oracle_snr(references[None], estimates)

  order = permutation.reference_order(  # `order[j]`: the estimate of reference `j`.
    metrics.si_snr(references[None, None], estimates[:, :, None], lengths=length)
  )
  estimates = jnp.take_along_axis(estimates, order[..., None], axis=1)
  variance = jax.tree.map(lambda p: jnp.take_along_axis(p, order[..., None], axis=1), variance)
  mixture_estimate = jnp.broadcast_to(mixture, references.shape)
  return {
    "estimates": estimates,
    "order": order,
    "variance": variance,
    "si_snr": metrics.si_snr(references, estimates, lengths=length),
    "snr": metrics.snr(references, estimates),
    "si_snr_input": metrics.si_snr(references, mixture_estimate, lengths=length),
    "snr_input": metrics.snr(references, mixture_estimate),
    "snr_min": snr_min,
    "probability": probability,
    "expected_snr_db": expected,
    "crosstalk": crosstalk,
  }


@functools.partial(jax.jit, static_argnames=("config", "conditions"))
def _exit_outputs(
  variables,
  mixture,
  references,
  lengths,
  targets,
  reference_power,
  posthoc_scales,
  *,
  config,
  conditions,
):
  """`exit_outputs` of a zero-padded batch `[batch, time]`, each item as if alone.

  `posthoc_scales` is `probabilistic.full_posthoc`'s, traced: one compilation with or
  without calibration, whatever the scales."""
  outputs = models.PressNet(config).apply(variables, mixture, lengths=lengths)
  per_utterance = functools.partial(
    _utterance_outputs,
    config=config,
    conditions=conditions,
    posthoc_scales=posthoc_scales,
    targets=targets,
    reference_power=reference_power,
  )
  return jax.vmap(per_utterance, in_axes=(1, 0, 0, 0))(outputs, mixture, references, lengths)


def _crop(outputs, length, config):
  """One utterance's `exit_outputs` cut from its padded batch: samples beyond
  `length` and variance blocks beyond its own dropped."""
  blocks = probabilistic.num_variance_blocks(length, config.variance)
  return {
    **outputs,
    "estimates": outputs["estimates"][..., :length],
    "variance": {name: value[..., :blocks] for name, value in outputs["variance"].items()},
  }


def exit_outputs(
  variables,
  config,
  mixture,
  references,
  *,
  targets=stopping.TARGETS_DB,
  conditions=("snr",),
  reference_power=None,
  posthoc_scales=None,
):
  """Every exit of one utterance, from one jit-compiled full-depth forward.

  Args:
    variables: the model variables.
    config: the model's `models.PressNetConfig`.
    mixture: `[time]`.
    references: `[sources, time]` clean sources.
    targets: target SNRs `γ` in dB to compute exit probabilities for.
    conditions, reference_power: as in `probabilistic.exit_probability`.
    posthoc_scales: post-hoc calibration `{name: [exits]}` applied to the variance
      parameters before any probability is computed (`calibration.load_posthoc`), as
      `inference.separate` takes it; None: none. Traced, so new scales do not recompile.

  Returns:
    A dict of jax arrays, sources in reference order (the per-exit best SI-SNR
    permutation): `estimates` `[exits, sources, time]`; `order` `[exits, sources]`,
    the network output that went to each reference; `variance`
    `{name: [exits, sources, blocks]}`; `si_snr`, `snr` `[exits, sources]`;
    `si_snr_input`, `snr_input` `[sources]` (the mixture as the estimate); `snr_min`
    `[exits]`, the worst source's SNR under its best permutation (what the oracle
    policy and "reached the target" test); `probability` `[exits, targets]`, the exit
    probability; `expected_snr_db` `[exits]`, the worst source's expected SNR;
    `crosstalk` `[exits]`, the estimates' `probabilistic.crosstalk`.
  """
  mixture = jnp.asarray(mixture, jnp.float32)
  outputs = _exit_outputs(
    variables,
    mixture[None],
    jnp.asarray(references, jnp.float32)[None],
    jnp.asarray(mixture.shape[-1:], jnp.int32),
    jnp.asarray(targets, jnp.float32),
    reference_power,
    probabilistic.full_posthoc(posthoc_scales, config),
    config=config,
    conditions=tuple(conditions),
  )
  return jax.tree.map(lambda x: x[0], outputs)


def summarize(
  table,
  *,
  gmacs_per_second,
  targets=None,
  confidences=stopping.CONFIDENCES,
  policies=stopping.POLICIES,
  target_snr_db=None,
  confidence=None,
):
  """Per-exit means and every policy measured over the grid, from an exit table.

  Args:
    table: an `exit_table.ExitTable`.
    gmacs_per_second: `[exits]` compute to reach each exit (`models.gmacs_by_exit`).
    targets: target SNRs `γ` in dB, each one of `table.targets_db`; None: all of them.
    confidences: confidence levels `p` of the probabilistic policy.
    policies: which of `stopping.POLICIES` to measure; none: no `operating_points`.
    target_snr_db, confidence: the operating point the Markdown report heads with (the
      run's default), each in the grid; None: none.

  Returns:
    A JSON-ready dict: `num_utterances`, `num_exits`, `targets_db`, `confidences`,
    `target_snr_db`, `confidence`; `per_exit`, per exit its `gmacs_per_second` and the
    means of the metrics (over the utterances where they are defined) and of the exit
    probabilities (`probability_{γ}db`); `operating_points`, every policy at every
    target as arrays `[targets, policies]` (`operating_points.OperatingPoints.to_json`;
    None without policies); `failures`, per enhancement metric the utterance-exits
    where it could not be computed, and `problems`, their `(id, exit, problem)`.
  """
  targets = table.targets_db.tolist() if targets is None else [float(t) for t in targets]
  num_exits = table.num_exits
  gmacs = np.asarray(gmacs_per_second, np.float64)
  present = {
    name: getattr(table, name) for name in SUMMARY_METRICS if getattr(table, name) is not None
  }
  probabilities = {
    exit_table.probability_column(t): table.probability[..., table.target_index(t)] for t in targets
  }
  per_exit = [
    {
      "exit": k + 1,
      "gmacs_per_second": float(gmacs[k]),
      **{
        name: float(operating_points.masked_mean(values[:, k]))
        for name, values in {**present, **probabilities}.items()
      },
    }
    for k in range(num_exits)
  ]
  points = None
  if policies:
    points = operating_points.operating_points(
      table, gmacs_per_second=gmacs, targets=targets, confidences=confidences, policies=policies
    ).to_json()
  problems = (
    []
    if table.problems is None
    else [
      {"id": str(table.ids[i]), "exit": int(k) + 1, "problem": str(table.problems[i, k])}
      for i, k in zip(*np.nonzero(table.problems != ""))
    ]
  )
  return {
    "num_utterances": len(table.ids),
    "num_exits": num_exits,
    "targets_db": targets,
    "confidences": [float(p) for p in confidences],
    "target_snr_db": None if target_snr_db is None else float(target_snr_db),
    "confidence": None if confidence is None else float(confidence),
    "per_exit": per_exit,
    "operating_points": points,
    "failures": {
      name: int(np.sum(~np.isfinite(present[name])))
      for name in exit_table.ENHANCEMENT_METRICS
      if name in present
    },
    "problems": problems,
  }


def _pieces(batches, model_config, chunk_seconds, overlap_seconds, progress_bar):
  """What `evaluate_model` runs the network on, from `evaluation_batches`: `(id, chunk
  fields, mixture [time], references [sources, time])` per utterance, or per chunk of
  it with `chunk_seconds` (see `evaluate_model`)."""
  for batch in batches:
    for i, length in enumerate(batch["length"].tolist()):
      # At the training level, as `inference.separate_long` separates it.
      _, mixture, references = inference.training_level(
        batch["mixture"][i, :length], batch["sources"][i, :, :length]
      )
      utterance = str(batch["id"][i])
      if chunk_seconds is None:
        yield utterance, {}, mixture, references
      else:
        starts, chunk = inference.chunk_starts(model_config, length, chunk_seconds, overlap_seconds)
        for start in starts.tolist():
          span = slice(start, start + chunk)
          # Every chunk gets the fields, so that the tables concatenate.
          yield (
            utterance if starts.size == 1 else f"{utterance}@{start}",
            {"utterance": utterance, "chunk_start": start},
            mixture[span],
            references[:, span],
          )
      progress_bar.update(1)


def _group_tables(
  group,
  variables,
  model_config,
  *,
  targets,
  conditions,
  reference_power,
  posthoc_scales,
  enhancement_metrics,
):
  """The one-row tables of up to `EVAL_BATCH` pieces (`_pieces`), from one padded
  forward."""
  lengths = [mixture.shape[-1] for _, _, mixture, _ in group]
  # Filled up with copies of the last piece: one shape per bucket length.
  batch = data.pad_batch(
    [
      {"mixture": mixture, "sources": references, "id": name}
      for name, _, mixture, references in group + group[-1:] * (EVAL_BATCH - len(group))
    ],
    round(PAD_SECONDS * model_config.sample_rate),
  )
  outputs = jax.device_get(
    _exit_outputs(
      variables,
      jnp.asarray(batch["mixture"]),
      jnp.asarray(batch["sources"]),
      jnp.asarray(batch["length"]),
      jnp.asarray(targets, jnp.float32),
      reference_power,
      posthoc_scales,
      config=model_config,
      conditions=tuple(conditions),
    )
  )
  return [
    exit_table.from_exit_outputs(
      name,
      _crop(jax.tree.map(lambda x, i=i: x[i], outputs), length, model_config),
      mixture,
      references,
      sample_rate=model_config.sample_rate,
      targets=targets,
      enhancement_metrics=enhancement_metrics,
      **chunk,
    )
    for i, ((name, chunk, mixture, references), length) in enumerate(zip(group, lengths))
  ]


def _with_targets(table, targets):
  """`table` with the exit probabilities of `targets` only (each one of its own)."""
  index = [table.target_index(t) for t in targets]
  return exit_table.from_arrays(
    {
      **table.arrays(),
      "targets_db": table.targets_db[index],
      "probability": table.probability[..., index],
    }
  )


def evaluate_model(
  variables,
  model_config,
  source,
  *,
  targets=stopping.TARGETS_DB,
  confidences=stopping.CONFIDENCES,
  policies=stopping.POLICIES,
  target_snr_db=None,
  confidence=None,
  span=True,
  conditions=("snr",),
  reference_power=None,
  max_utterances=None,
  enhancement_metrics=None,
  posthoc_scales=None,
  progress=True,
  chunk_seconds=None,
  overlap_seconds=inference.OVERLAP_SECONDS,
):
  """Evaluates a model on full-length utterances: every exit, every simulated policy.

  With `chunk_seconds`, every utterance is evaluated instead in the chunks
  `inference.separate_long` separates it in (`inference.chunk_starts`), each chunk on
  its own, as `separate` runs it. The table's `utterance` is then the source's id and
  `chunk_start` each chunk's first sample; a chunk's id is `<id>@<first sample>`, but
  for an utterance no longer than a chunk, evaluated whole under its own id.

  Args:
    variables: the model variables.
    model_config: its `models.PressNetConfig`.
    source: random-access examples `{"mixture": [time], "sources": [sources, time],
      "id"}` at the model's rate, e.g. `data.open_dataset(...)`.
    targets: target SNRs `γ` in dB of the grid.
    confidences: confidence levels `p` of the grid.
    policies: which of `stopping.POLICIES` to simulate.
    target_snr_db, confidence: the run's default operating point, added to the grid
      (`summarize`); None: none.
    span: add every whole dB over which the exits differ (`operating_points.span_targets`,
      within `SPAN_CANDIDATES_DB`) to the targets.
    conditions, reference_power: the exit conditions, as in `inference.separate`.
    max_utterances: evaluate this many utterances, evenly spread (None: all).
    enhancement_metrics: compute PESQ and STOI (slow: seconds per utterance); None: only
      for one-source models.
    posthoc_scales: post-hoc calibration `{name: [exits]}`, see `exit_outputs`.
    progress: show a progress bar over the utterances.
    chunk_seconds, overlap_seconds: `separate_long`'s chunking; None: whole utterances.

  Returns:
    `(table, summary)`: the `exit_table.ExitTable` of every utterance (or chunk), with
    the exit probabilities of the targets reported, and `summarize(table, ...)`, with
    the model's `gmacs_per_second_by_exit`, `sample_rate` and `conditions` added.
  """
  if enhancement_metrics is None:
    enhancement_metrics = model_config.num_sources == 1
  targets = {float(t) for t in targets} | (
    set() if target_snr_db is None else {float(target_snr_db)}
  )
  confidences = sorted(
    {float(p) for p in confidences} | (set() if confidence is None else {float(confidence)})
  )
  # The span is known once the exits' SNRs are: probabilities for every candidate.
  computed = tuple(sorted(targets | (set(SPAN_CANDIDATES_DB) if span else set())))
  posthoc_scales = probabilistic.full_posthoc(posthoc_scales, model_config)
  # Sorted by length (the padding is `_group_tables`'), so that a group's pieces are alike.
  batches = data.evaluation_batches(source, batch_size=EVAL_BATCH, max_examples=max_utterances)
  total = min(max_utterances or len(source), len(source))
  tables = []
  # Closed however the loop ends, so that an error's line (or Ctrl-C's) comes last.
  with tqdm.tqdm(total=total, desc="evaluate", unit="utt", disable=not progress) as progress_bar:
    pieces = _pieces(batches, model_config, chunk_seconds, overlap_seconds, progress_bar)
    # Pieces come sorted by length: EVAL_BATCH at a time share one padded forward.
    for group in iter(lambda: list(itertools.islice(pieces, EVAL_BATCH)), []):
      tables += _group_tables(
        group,
        variables,
        model_config,
        targets=computed,
        conditions=conditions,
        reference_power=reference_power,
        posthoc_scales=posthoc_scales,
        enhancement_metrics=enhancement_metrics,
      )
  table = exit_table.concatenate(tables)
  if span:
    spanned = set(operating_points.span_targets(table.snr_min).tolist())
    table = _with_targets(table, sorted(targets | (spanned & set(SPAN_CANDIDATES_DB))))
  gmacs = models.gmacs_by_exit(model_config)
  summary = summarize(
    table,
    gmacs_per_second=gmacs,
    confidences=confidences,
    policies=policies,
    target_snr_db=target_snr_db,
    confidence=confidence,
  )
  return table, {
    "sample_rate": model_config.sample_rate,
    "conditions": list(conditions),
    "gmacs_per_second_by_exit": gmacs,
    **summary,
  }


def json_ready(value):
  """NaN and infinities as None: JSON has no such numbers."""
  if isinstance(value, dict):
    return {key: json_ready(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(item) for item in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _number(value, digits=2):
  return "–" if value is None else f"{value:.{digits}f}"


def _share(value, low=None, high=None):
  """A share in percent, with its interval when there is one: `80% [75, 84]`."""
  if value is None:
    return "–"
  return f"{value:.0%}" + ("" if None in (low, high) else f" [{100 * low:.0f}, {100 * high:.0f}]")


def _points(value, low, high):
  """A difference of shares in points, with its interval: `+2 [-1, +4] pts`."""
  if value is None:
    return "–"

  def signed(share):  # Whole points; `round` first, so that -0.3 prints "+0", not "-0".
    return f"{round(100 * share):+d}"

  interval = "" if None in (low, high) else f" [{signed(low)}, {signed(high)}]"
  return f"{signed(value)}{interval} pts"


def headline(summary):
  """`(γ, p)` the report heads with: the run's default, else the grid's middle target
  and its highest confidence."""
  targets, confidences = summary["targets_db"], summary["confidences"]
  target = summary["target_snr_db"]
  confidence = summary["confidence"]
  return (
    targets[len(targets) // 2] if target is None else target,
    (confidences[-1] if confidences else None) if confidence is None else confidence,
  )


def _point_row(points, i, q):
  """One policy at one target, as Markdown cells after its name."""

  def at(name):
    return points[name][i][q]

  early = at("stopped_early")
  return [
    f"{at('gmacs_per_second'):.3f}",
    _share(at("saved")),
    _share(at("reach"), at("reach_low"), at("reach_high")),
    str(early),
    _share(at("satisfaction"), at("satisfaction_low"), at("satisfaction_high")) if early else "–",
    f"{_number(points['means']['si_snri'][i][q])} [{_number(at('si_snri_low'))}, "
    f"{_number(at('si_snri_high'))}]"
    if "si_snri" in points["means"]
    else "–",
    _points(at("frontier_gain"), at("frontier_gain_low"), at("frontier_gain_high")),
    _share(at("oracle_share"), at("oracle_share_low"), at("oracle_share_high")),
  ]


def _policy_name(points, q):
  policy = points["policy"][q]
  if policy == "probabilistic":
    return f"probabilistic, p = {points['confidence'][q]:g}"
  if policy == "fixed":
    return f"exit {points['exit_index'][q]}"
  return policy


def markdown_report(summary):
  """The summary as Markdown: a table of exits, every policy at the headline target,
  and the probabilistic policy at the headline confidence over the target grid."""
  summary = json_ready(summary)
  names = [name for name in SUMMARY_METRICS if name in summary["per_exit"][0]]
  lines = [
    f"# Evaluation: {summary['num_utterances']} utterances, {summary['num_exits']} exits",
    "",
    "## Every exit (means over utterances; in dB, except PESQ and STOI)",
    "",
    "| exit | GMAC/s | " + " | ".join(SUMMARY_METRICS[name] for name in names) + " |",
    "|---" * (len(names) + 2) + "|",
  ]
  for entry in summary["per_exit"]:
    lines.append(
      f"| {entry['exit']} | {entry['gmacs_per_second']:.3f} | "
      + " | ".join(_number(entry[name]) for name in names)
      + " |"
    )
  points = summary["operating_points"]
  if points is not None:
    lines += _policy_lines(summary, points)
  for name, count in summary["failures"].items():
    if count:
      lines += [
        "",
        f"{SUMMARY_METRICS[name]} could not be computed for {count} "
        f"utterance-exits (see `problems` in {JSON_FILE}).",
      ]
  return "\n".join(lines) + "\n"


def _policy_lines(summary, points):
  """The Markdown of the operating points: every policy at the headline target, then
  the probabilistic policy at the headline confidence over the grid."""
  target, confidence = headline(summary)
  i = points["targets_db"].index(target)
  header = (
    "GMAC/s | saved | reach | early | satisfied | SI-SNRi (dB) | reach − frontier "
    "| oracle's saving |"
  )
  lines = [
    "",
    f"## Stopping at γ = {target:g} dB (simulated from every exit's outputs)",
    "",
    "`reach`: share of all utterances whose worst source's SNR reaches γ; `early`: "
    "utterances stopping before the last exit; `satisfied`: the share of those that "
    "reach γ; `reach − frontier`: reach minus the best random mix of fixed exits at "
    "the same compute; `oracle's saving`: the share of the oracle's saving achieved. "
    "95% intervals: Clopper–Pearson on shares, paired bootstrap on SI-SNRi and "
    "differences. `GMAC/s` is the mean over utterances of the compute their own "
    "exits need, a count of FLOPs saved, not of time: run in batches, early exit "
    "runs a batch until its last example stops (`eesep separate` says where its "
    "batches of chunks ran longer).",
    "",
    "| policy | " + header,
    "|---" * 9 + "|",
  ]
  lines += [
    f"| {_policy_name(points, q)} | " + " | ".join(_point_row(points, i, q)) + " |"
    for q in range(len(points["policy"]))
  ]
  columns = [
    q
    for q, policy in enumerate(points["policy"])
    if policy == "probabilistic" and math.isclose(points["confidence"][q], confidence)
  ]
  fixed = [q for q, policy in enumerate(points["policy"]) if policy == "fixed"]
  oracle = [q for q, policy in enumerate(points["policy"]) if policy == "oracle"]
  if not (columns and fixed and oracle):
    return lines
  [q], first, last, [o] = columns, fixed[0], fixed[-1], oracle
  lines += [
    "",
    f"## Over the targets: probabilistic, p = {confidence:g}",
    "",
    "| γ (dB) | exit 1 reach | full reach | oracle saved | " + header,
    "|---" * 12 + "|",
  ]
  for i, target in enumerate(points["targets_db"]):
    lines.append(
      f"| {target:g} | {_share(points['reach'][i][first])} | "
      f"{_share(points['reach'][i][last])} | {_share(points['saved'][i][o])} | "
      + " | ".join(_point_row(points, i, q))
      + " |"
    )
  return lines


def write_report(out_dir, table, summary):
  """Writes `evaluation.json` (the summary), `exit_table.npz` (the table, `table.save`),
  `per_utterance.csv` (its export, `table.to_csv`), `evaluation.md`
  (`markdown_report`) and, with operating points, the figures
  `operating_points.FIGURE_FILES` to `out_dir`; returns their paths by kind.

  The report is written all or nothing (`files.atomic_writes`): a run stopped while
  writing it (Ctrl-C, a full disk) leaves an earlier report's files as they were.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {
    "json": out_dir / JSON_FILE,
    "table": out_dir / TABLE_FILE,
    "csv": out_dir / CSV_FILE,
    "markdown": out_dir / MARKDOWN_FILE,
  }
  drawn = {}
  if summary["operating_points"] is not None:
    points = operating_points.from_json(summary["operating_points"])
    drawn = operating_points.figures(points, headline(summary)[0])
    paths.update({kind: out_dir / operating_points.FIGURE_FILES[kind] for kind in drawn})
  with files.atomic_writes(paths) as partials:
    partials["json"].write_text(json.dumps(json_ready(summary), indent=2, allow_nan=False))
    table.save(partials["table"])
    table.to_csv(partials["csv"])
    partials["markdown"].write_text(markdown_report(summary))
    for kind, figure in drawn.items():
      figure.savefig(partials[kind], dpi=120)
  return paths
