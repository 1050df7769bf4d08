"""The README quotes only numbers that committed result files hold, and prints what the
demo prints of them."""

import json
import pathlib

import pytest

from eesep_jax.app import demo

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "experiments" / "benchmarks" / "results"
# The demo's report sets, in the order it prints them.
DEMO_SETS = ("test", "heldout", "kokoro", "recorded")


def _json(name):
  return json.loads((RESULTS / name).read_text())


def _demo(name):
  return _json(f"demo/{name}.json")


def _last_exit(name):
  return f"{_demo(name)['per_exit'][-1]['si_snri']:.2f}"


def _row(label):
  """The cells of the README's results row that starts with `label`."""
  rows = [line for line in README.read_text().splitlines() if line.startswith(f"| {label}")]
  assert len(rows) == 1, f"{len(rows)} README rows start with {label!r}"
  return [cell.strip() for cell in rows[0].strip("|").split("|")]


def _printed_block():
  """The lines of the README's quickstart block that shows what `make demo` prints."""
  text = README.read_text()
  start = text.index("```\nSI-SNRi per exit (dB)") + len("```\n")
  return text[start : text.index("```", start)].splitlines()


def test_readme_is_a_page_not_a_notebook():
  assert len(README.read_bytes()) <= 10_000
  assert "Moved in this version" not in README.read_text()


def test_the_printed_demo_output_is_the_demos_own_on_the_committed_reports():
  summaries = {demo._set_label(name, _demo(name)): _demo(name) for name in DEMO_SETS}  # pylint: disable=protected-access
  target, confidence = _demo("test")["target_snr_db"], _demo("test")["confidence"]
  printed = [
    demo._per_exit_lines(name, summary)  # pylint: disable=protected-access
    for name, summary in summaries.items()
  ]
  printed += demo._stopping_lines(summaries, target, confidence)  # pylint: disable=protected-access
  quoted = [line for line in _printed_block()[1:] if line.strip() != "..."]
  assert quoted
  for line in quoted:
    # The README cuts the table's columns after the held-out set's.
    assert any(full.startswith(line.rstrip()) for full in printed), line


def test_demo_rows_are_the_committed_reports():
  assert (
    _row("demo: last-exit SI-SNRi")[1] == " / ".join(_last_exit(name) for name in DEMO_SETS) + " dB"
  )
  test = _demo("test")
  cells = demo._stopping_cells(test, test["target_snr_db"], test["confidence"])  # pylint: disable=protected-access
  assert _row("demo: compute saved")[0] == (
    f"demo: compute saved at γ = {test['target_snr_db']:g} dB, p = {test['confidence']:g}, "
    "test split (oracle's)"
  )
  assert _row("demo: compute saved")[1] == cells["compute saved"]


def test_benchmark_rows_are_the_committed_result_files():
  cpu = _json("cpu.json")
  tiny, press4 = (
    cpu["presets"][name]["train_all_exits_over_last_exit"] for name in ("tiny", "press-4")
  )
  assert _row("training every exit")[1] == f"`tiny` {tiny:.2f}, `press-4` {press4:.2f}"
  assert _row("compile time, 12 stages")[1] == (
    f"{cpu['compile_scan_e12_over_e2']:.2f} with the stage scan, "
    f"{cpu['compile_unrolled_e12_over_e2']:.2f} unrolled"
  )
  assert _row("`separate` on a 10-minute file")[1] == (
    f"{cpu['long_file_peak_rss_gb']:.2f} GB peak memory; throughput "
    f"{cpu['long_file_throughput_over_60s']:.2f} of a 60 s file's"
  )
  curves = _json("time_to_quality/time_to_quality.json")["curves"]
  assert _row("eSpeak-only demo against one exit")[1] == (
    f"{curves['demo'][-1]['valid_si_snri']:.2f} against "
    f"{curves['single_exit'][-1]['valid_si_snri']:.2f} dB"
  )
  assert _row("evaluation with length buckets")[1] == (
    f"{_json('eval_throughput_cpu.json')['bucketed_over_per_length']:.1f}x the "
    "utterances per second"
  )
  ablation = json.loads(
    (REPO / "experiments" / "ablations" / "results" / "comparison.json").read_text()
  )
  test = {entry["variant"]: entry["sets"]["test"] for entry in ablation["variants"]}
  assert _row("variance heads at demo scale")[0].startswith(
    f"variance heads at demo scale ({ablation['settings']['steps']:,} steps)"
  )
  assert _row("variance heads at demo scale")[1] == " / ".join(
    "{ece_mean:.3f} [{ece_mean_low:.3f}, {ece_mean_high:.3f}]".format(**test[name])
    for name in ("student-snr", "gaussian-snr")
  )
  rates = _json("input_pipeline_cpu.json")["examples_per_second"]
  assert _row("training input pipeline")[1] == (
    " / ".join(f"{rates[w]:.0f}" for w in ("0", "1", "2")) + " examples/s"
  )


@pytest.mark.parametrize(
  "label",
  [
    "demo: last",
    "demo: compute",
    "training every",
    "compile time",
    "`separate` on",
    "eSpeak-only",
    "evaluation with",
    "training input",
    "variance heads",
  ],
)
def test_every_results_row_links_its_benchmark(label):
  assert "experiments/benchmarks/README.md#" in _row(label)[2]
