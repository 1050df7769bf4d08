"""Every benchmark script runs at smoke size, and their helpers measure what they say
(no timing asserted)."""

import importlib.util
import itertools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from conftest import make_exit_table
from eesep_jax import models
from eesep_jax.training import throughput

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "run.py"
# Every script of experiments/benchmarks/ and the test below that runs it at smoke size.
SMOKE_TESTS = {
  "run.py": "test_run_script_at_smoke_size",
  "accelerator.py": "test_accelerator_script_at_smoke_size",
  "train_step.py": "test_train_step_script_times_one_step",
  "eval_throughput.py": "test_eval_throughput_script_at_smoke_size",
  "time_to_quality.py": "test_time_to_quality_script_at_smoke_size",
  "block_probability_accuracy.py": "test_block_probability_accuracy_script_at_smoke_size",
  "input_pipeline.py": "test_input_pipeline_benchmark_runs_at_smoke_size",
  "corpus_breadth.py": "test_corpus_breadth_reports_exits_and_honesty",
  "crosstalk_widening.py": "test_crosstalk_widening_fits_and_reports",
  "stopping_bound.py": "test_stopping_bound_script_at_smoke_size",
  "depth_gain.py": "test_depth_gain_script_at_smoke_size",
}


def _load_script(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return _load_script(SCRIPT, "benchmarks_run")


def test_help_names_the_options():
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True, timeout=60
  )
  assert "--quick" in result.stdout and "--out" in result.stdout


def test_device_and_timing_helpers(bench):
  info = bench.device_info()
  assert {"platform", "device_kind", "cpu_count", "jax_version"} <= set(info)
  calls = []
  assert bench.median_time(lambda: calls.append(1), repeats=3, warmup=2) >= 0
  assert len(calls) == 5
  assert bench.peak_matmul_gflops(64, repeats=1) > 0


@pytest.mark.parametrize("network, exits", [("LastExitOnly", 1), ("UnrolledPressNet", 3)])
def test_baseline_networks_return_press_net_outputs(bench, network, exits):
  config = models.preset("tiny")
  mixture = jax.ShapeDtypeStruct((2, 800), jnp.float32)
  model = getattr(bench, network)(config)
  variables = jax.eval_shape(model.init, jax.random.key(0), mixture)
  outputs = jax.eval_shape(model.apply, variables, mixture)
  assert outputs["estimates"].shape == (exits, 2, config.num_sources, 800)
  assert {v.shape[0] for v in outputs["variance"].values()} == {exits}
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables))
  # The last-exit network lacks the other exits' heads, and only those.
  assert (params < models.count_params(config)) == (network == "LastExitOnly")


def test_train_flops_bound_what_xla_counts_in_the_gradient(bench):
  # One stage (XLA counts a loop body once) and unrolled blocks, so that the cost
  # analysis of the gradient covers the whole step: the model's FLOPs plus what the
  # blocks recompute, at most a forward pass.
  config = models.preset("tiny", num_exits=1, num_exit_blocks=1, unroll_blocks=True)
  model = models.PressNet(config)
  mixture = jax.ShapeDtypeStruct((2, 400), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), mixture)

  def loss(params, mixture):
    outputs = model.apply({"params": params}, mixture)
    return sum(jnp.sum(x) for x in jax.tree.leaves(outputs))

  counted = jax.jit(jax.grad(loss)).lower(variables["params"], mixture).cost_analysis()
  model_flops = throughput.model_flops_per_step(config, 2, 400)
  assert model_flops <= counted["flops"] <= 4 / 3 * model_flops


def _results():
  preset = {
    "train_all_exits_over_last_exit": 1.1,
    "train_mfu": 0.1,
    "train": {
      "batch": 2,
      "segment_samples": 800,
      "achieved_gflops": 3.0,
      "peak_matmul_gflops": 30.0,
    },
    "stop_at_k_over_full": [0.6, 1.0],
    "stop_at_k_compute_fraction": [0.58, 1.0],
    "while_loop_over_static": [1.0, 1.2],
  }
  return {
    "device": {
      "device_kind": "cpu",
      "platform": "cpu",
      "cpu_count": 2,
      "jax_version": jax.__version__,
    },
    "quick": True,
    "presets": {"tiny": preset},
    "compile_scan_e12_over_e2": 1.1,
    "compile_unrolled_e4_over_e2": 1.6,
    "rtf_press4_full": 0.5,
    "rtf_press4_stop": 0.4,
    "rtf_press4_stop_mean_exit": 3.5,
    "long_file_seconds": 120.0,
    "long_file_peak_rss_gb": 1.0,
    "long_file_throughput_over_60s": 0.85,
  }


def test_targets_flag_each_miss(bench):
  assert bench._targets(_results()) == {
    "tiny/train_all_exits_over_last_exit <= 1.15": True,
    "tiny/train_mfu >= 0.20": False,
    "tiny/stop_at_k_over_full <= k/E + 0.05": False,
    "tiny/stop_at_k_over_full <= compute fraction + 0.05": True,
    "tiny/while_loop_over_static <= 1.05": False,
    "compile_scan_e12_over_e2 <= 1.3": True,
    "long_file_peak_rss_gb < 3": True,
    "long_file_throughput_over_60s within 10%": False,
  }


def test_markdown_table_marks_each_target(bench, tmp_path):
  results = tmp_path / "results.json"
  results.write_text(json.dumps(_results()))
  table = subprocess.run(
    [sys.executable, str(SCRIPT), "--table", str(results)],
    capture_output=True,
    text=True,
    check=True,
    timeout=60,
  ).stdout
  rows = {
    line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")
  }
  assert rows["tiny/train_all_exits_over_last_exit"].endswith("| yes |")
  assert rows["tiny/train_mfu"].endswith("| 0.100 (3.0 of 30 GFLOP/s) | >= 0.20 | no |")
  assert rows["long_file_throughput_over_60s"].endswith("| no |")
  assert rows["compile_unrolled_e4_over_e2"].endswith("| – |")
  assert "--quick" in table.splitlines()[0]


def test_peak_rss_is_this_process_own(bench):
  before = bench.peak_rss_bytes()
  block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched.
  assert bench.peak_rss_bytes() >= before + block.nbytes // 2
  # A child started from this (larger) process reports its own, smaller peak.
  child = subprocess.run(
    [
      sys.executable,
      "-c",
      "import importlib.util, sys; "
      f"spec = importlib.util.spec_from_file_location('b', {str(SCRIPT)!r}); "
      "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
      "print(m.peak_rss_bytes())",
    ],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  )
  assert int(child.stdout) < bench.peak_rss_bytes()


def test_time_to_quality_reuses_only_a_finished_run(tmp_path, monkeypatch):
  ttq = _load_script(SCRIPT.with_name("time_to_quality.py"), "benchmarks_time_to_quality")
  config = ttq.config_lib.load_config(ttq.DEMO_CONFIG)
  with pytest.raises(SystemExit, match="holds no finished run"):
    ttq._train(config, tmp_path / "demo", reuse=True)  # pylint: disable=protected-access

  records = [
    {"step": 10, "train_loss": 1.0},
    {"step": 20, "train_seconds": 5.0, "valid_si_snri": [1.0, 2.0, 3.0]},
    {"step": config.steps, "train_seconds": 9.0, "valid_si_snri": [2.0, 3.0, 4.0]},
  ]
  (tmp_path / "demo").mkdir()
  (tmp_path / "demo" / "metrics.jsonl").write_text(
    "".join(json.dumps(record) + "\n" for record in records)
  )
  finished = {tmp_path / "demo": config.steps, tmp_path / "cut": config.steps - 1}
  monkeypatch.setattr(ttq.checkpoints, "latest_step", finished.get)
  monkeypatch.setattr(
    ttq.train, "train_and_evaluate", lambda *args: pytest.fail("--reuse trained a run")
  )
  assert ttq._train(config, tmp_path / "demo", reuse=True) == [(5.0, 3.0), (9.0, 4.0)]  # pylint: disable=protected-access
  with pytest.raises(SystemExit, match=f"latest checkpoint {config.steps - 1}"):
    ttq._train(config, tmp_path / "cut", reuse=True)  # pylint: disable=protected-access


# --------------------------------------------------------------------------- smoke runs


def test_every_benchmark_script_has_a_smoke_test():
  # A script nothing runs rots unnoticed, as run.py did: each needs a smoke test here.
  scripts = {path.name for path in SCRIPT.parent.glob("*.py")}
  assert scripts <= set(SMOKE_TESTS), f"no smoke test for {sorted(scripts - set(SMOKE_TESTS))}"
  assert set(SMOKE_TESTS.values()) <= set(globals())


def _run_script(name, *args, timeout=900):
  return subprocess.run(
    [sys.executable, str(SCRIPT.with_name(name)), *map(str, args)],
    capture_output=True,
    text=True,
    check=True,
    timeout=timeout,
  )


@pytest.mark.slow
def test_run_script_at_smoke_size(tmp_path):
  _run_script("run.py", "--smoke", "--out", tmp_path / "run.json")
  results = json.loads((tmp_path / "run.json").read_text())
  assert results["smoke"] and set(results["presets"]) == {"tiny"}
  preset = results["presets"]["tiny"]
  assert len(preset["stop_at_k_over_full"]) == 2 and preset["train_mfu"] > 0
  assert results["rtf_press4_full"] > 0 and results["long_file_peak_rss_gb"] > 0
  assert results["targets"]


@pytest.mark.slow
def test_accelerator_script_at_smoke_size(tmp_path):
  _run_script("accelerator.py", "--smoke", "--out-dir", tmp_path)
  [path] = tmp_path.glob("accelerator_cpu_*.json")
  results = json.loads(path.read_text())
  trained = results["presets"]["tiny"]["train"]
  assert set(trained) == {"bfloat16", "float32"}
  for dtype in trained.values():
    assert dtype["step_s"] > 0 and dtype["model_gflop_per_step"] > 0
    assert dtype["mfu"] is None  # CPUs have no peak unless --peak-flops gives one.
  layer_shares = results["presets"]["tiny"]["layers"]["share_of_bfloat16_step"]
  assert set(layer_shares) == {
    "recurrence/chunked",
    "recurrence/associative",
    "depthwise/shifted",
    "depthwise/grouped",
  }
  separated = results["presets"]["tiny"]["separate"]
  assert set(separated) == {"batch_1", "batch_8"}
  exit_1 = separated["batch_8"]["exit_1"]
  assert exit_1["exits"] == [1] * 8 and 0 < exit_1["flop_saving"] < 1
  assert exit_1["flop_saving"] == pytest.approx(exit_1["executed_flop_saving"])
  assert separated["batch_1"]["full_depth"]["flop_saving"] == pytest.approx(0, abs=1e-6)
  assert results["input_pipeline"]["examples_per_s"] > 0


def test_accelerator_peak_flops_flag_overrides_the_table():
  accelerator = _load_script(SCRIPT.with_name("accelerator.py"), "benchmarks_accelerator")
  peaks = accelerator._peaks(jax.devices("cpu")[0], {"float32": 1e12})  # pylint: disable=protected-access
  assert peaks == {"bfloat16": None, "float32": 1e12}
  assert accelerator._peaks("NVIDIA H100 PCIe", {}) == {  # pylint: disable=protected-access
    "bfloat16": 756e12,
    "float32": 378e12,
  }
  device = {"platform": "tpu", "device_kind": "TPU v5 lite"}
  assert accelerator.results_path(pathlib.Path("r"), device).name == (
    "accelerator_tpu_tpu_v5_lite.json"
  )


def test_train_step_script_times_one_step():
  result = _run_script(
    "train_step.py", "--batch", "1", "--samples", "800", "--repeats", "1", timeout=300
  )
  record = json.loads(result.stdout.strip().splitlines()[-1])
  assert record["preset"] == "tiny" and record["samples"] == 800
  assert record["compile_s"] > 0 and record["step_s"] > 0


@pytest.mark.slow
def test_eval_throughput_script_at_smoke_size(trained_workdir, tmp_path):
  _run_script(
    "eval_throughput.py",
    "--checkpoint",
    trained_workdir,
    "--max-utterances",
    2,
    "--out",
    tmp_path / "eval.json",
  )
  results = json.loads((tmp_path / "eval.json").read_text())
  assert results["utterances"] == 2 and results["bucketed_utterances_per_second"] > 0


@pytest.mark.slow
def test_time_to_quality_script_at_smoke_size(tiny_corpus, tmp_path):
  _run_script(
    "time_to_quality.py",
    "--out-dir",
    tmp_path,
    "--steps",
    2,
    "--points",
    1,
    "--data-root",
    tiny_corpus,
  )
  curves = json.loads((tmp_path / "time_to_quality.json").read_text())["curves"]
  assert set(curves) == {"demo", "single_exit"}
  assert all(len(curve) == 1 for curve in curves.values())
  assert (tmp_path / "time_to_quality.png").stat().st_size > 0


def test_block_probability_accuracy_script_at_smoke_size():
  table = _run_script("block_probability_accuracy.py", "--draws", 2000, timeout=300).stdout
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  # Header, rule, then a row per case with its largest error, old -> new.
  assert len(rows) >= 3 and all(" → " in row for row in rows[2:])


INPUT_PIPELINE = SCRIPT.with_name("input_pipeline.py")


@pytest.mark.slow
def test_input_pipeline_benchmark_runs_at_smoke_size(tmp_path):
  out = tmp_path / "input_pipeline.json"
  subprocess.run(
    [sys.executable, str(INPUT_PIPELINE), "--smoke", "--workers", "0", "1", "--out", str(out)],
    check=True,
    capture_output=True,
    timeout=300,
  )
  results = json.loads(out.read_text())
  assert results["smoke"] and results["dynamic_mixing"]
  assert set(results["examples_per_second"]) == {"0", "1"}
  assert all(rate > 0 for rate in results["examples_per_second"].values())
  assert results["examples_per_second_per_worker"] == {"1": results["examples_per_second"]["1"]}


def test_corpus_breadth_reports_exits_and_honesty(tmp_path, trained_workdir, tiny_corpus):
  breadth = _load_script(SCRIPT.with_name("corpus_breadth.py"), "benchmarks_corpus_breadth")
  workdir = tmp_path / "run"
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(trained_workdir, workdir)
  out = tmp_path / "breadth.json"
  results = breadth.main(
    [
      "--run",
      f"r={workdir}",
      "--set",
      "test=",
      "--set",
      f"other={tiny_corpus}",
      "--max-utterances",
      "2",
      "--out",
      str(out),
    ]
  )
  row = results["r"]["test"]
  table = breadth.exit_table.load(workdir / "eval_test" / "exit_table.npz")
  np.testing.assert_allclose(row["si_snri_per_exit"], table.si_snri.mean(0), atol=1e-3)
  gamma = row["target_snr_db"]
  # Honesty by brute force: walk each utterance's exits until P(SNR >= γ) >= p.
  probability = table.probability[..., list(table.targets_db).index(gamma)]
  for entry in row["honesty"]:
    stops = [
      next(
        (k for k in range(table.num_exits - 1) if probability[i, k] >= entry["confidence"]), None
      )
      for i in range(len(table.ids))
    ]
    early = [(i, k) for i, k in enumerate(stops) if k is not None]
    assert entry["stopped_early"] == len(early)
    if early:
      assert entry["satisfaction"] == pytest.approx(
        np.mean([table.snr_min[i, k] >= gamma for i, k in early])
      )
  assert row["last_exit_reached_share"] == pytest.approx(np.mean(table.snr_min[:, -1] >= gamma))
  # Per γ, every default target the table has probabilities for.
  assert list(row["last_exit_by_target"]) == [
    f"{t:g}" for t in breadth.TARGETS_DB if t in table.targets_db
  ]
  for key, entry in row["last_exit_by_target"].items():
    column = list(table.targets_db).index(float(key))
    assert entry["mean_probability"] == pytest.approx(table.probability[:, -1, column].mean())
    assert entry["reached_share"] == pytest.approx(np.mean(table.snr_min[:, -1] >= float(key)))
  assert json.loads(out.read_text())["r"]["other"]["utterances"] == 2
  assert "| r | other | 2 |" in out.with_suffix(".md").read_text()
  # An earlier checkpoint, evaluated as such.
  first = min(int(path.name) for path in (workdir / "checkpoints").iterdir() if path.name.isdigit())
  results = breadth.main(["--run", f"r={workdir}", "--set", "test=", "--steps", str(first)])
  evaluated = json.loads((workdir / f"eval_test_step{first}" / "evaluation.json").read_text())
  assert evaluated["step"] == first and evaluated["posthoc_scales"] is None
  assert list(results) == [f"r@{first}"] and results[f"r@{first}"]["test"]["utterances"] > 0


def test_crosstalk_widening_fits_and_reports(tmp_path, trained_workdir):
  script = _load_script(SCRIPT.with_name("crosstalk_widening.py"), "benchmarks_crosstalk")
  out = tmp_path / "crosstalk.json"
  args = ["--run", str(trained_workdir), "--set", "test=", "--seconds", "0.5", "--out", str(out)]
  results = script.main(args)
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))
  assert out.with_suffix(".md").read_text().count("\n") == 2 + len(results["sets"])
  # Brute force on the fit set: the likelihood each fitted variance reaches, against the
  # raw one and against each other (the cross-talk family holds the scalar one).
  run = script.runs.load(trained_workdir)
  config = script.checkpoints.read_config(trained_workdir)
  outputs = script.exits_of_set(
    run, "validation", script.data.open_split(config, config.data.valid_split), 4000
  )
  estimates = outputs["estimates"]
  for n in range(len(estimates)):
    for k in range(estimates.shape[1]):
      a, b = estimates[n, k]
      expected = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
      assert script.crosstalk(estimates)[n, k] == pytest.approx(expected, rel=1e-5)

  def nll(fit):
    log_scale = np.asarray(fit["offsets"]) + fit["slope"] * script.crosstalk(estimates)
    params = {"alpha": outputs["alpha"], "beta": outputs["beta"] * np.exp(log_scale)[..., None]}
    return np.mean(script.calibration.log_energy_nll(outputs["energy"], params, 4000))

  def reference_probability(fit):  # The worst source's P(SNR >= γ), by scipy.
    log_scale = np.asarray(fit["offsets"]) + fit["slope"] * script.crosstalk(estimates)
    beta = outputs["beta"] * np.exp(log_scale)[..., None]
    c = outputs["signal"] / (10 ** (results["target_snr_db"] / 10) - 1)
    return special.betainc(2000, outputs["alpha"], c / (c + 2 * beta)).min(-1)

  def brier(fit):
    reached = outputs["snr_min"] >= results["target_snr_db"]
    return np.mean((reference_probability(fit) - reached) ** 2)

  raw = {"offsets": [0.0] * estimates.shape[1], "slope": 0.0}
  fits = results["fit"]
  assert nll(fits["scalar"]) <= nll(raw) + 1e-9
  assert nll(fits["crosstalk"]) <= nll(fits["scalar"]) + 1e-6
  assert brier(fits["scalar (Brier)"]) <= brier(fits["scalar"]) + 1e-6
  assert brier(fits["crosstalk (Brier)"]) <= brier(fits["crosstalk"]) + 1e-6
  np.testing.assert_allclose(
    script.probability(outputs, fits["crosstalk (Brier)"], results["target_snr_db"], 4000),
    reference_probability(fits["crosstalk (Brier)"]),
    atol=1e-4,
  )
  fit_row = results["sets"]["validation (fit)"]
  for variance in ("scalar (Brier)", "crosstalk (Brier)"):
    probability = script.predictions(outputs, fits, results["target_snr_db"], 4000)[variance]
    assert fit_row[variance]["last_exit_mean_probability"] == pytest.approx(
      probability[:, -1].mean(), abs=1e-6
    )
  for row in results["sets"].values():
    assert row["scalar+ceiling"]["last_exit_mean_probability"] <= (
      row["scalar"]["last_exit_mean_probability"] + 1e-9
    )
    assert all(0.0 <= share <= 1.0 for share in row["above_ceiling_per_exit"])


def test_crosstalk_widening_policy_walks_the_exits():
  script = _load_script(SCRIPT.with_name("crosstalk_widening.py"), "benchmarks_crosstalk")
  rng = np.random.default_rng(0)
  probability, snr_min = rng.uniform(size=(50, 3)), rng.normal(5.0, 3.0, size=(50, 3))
  for confidence in (0.5, 0.9):
    stops = []
    for row in probability:
      stop = next((k for k in range(2) if row[k] >= confidence), 2)
      stops.append(stop)
    stops = np.array(stops)
    early = stops < 2
    reached = snr_min[np.arange(50), stops] >= 5.0
    result = script.policy(probability, snr_min, 5.0, confidence)
    assert result["stopped_early"] == early.sum()
    assert result["satisfaction"] == pytest.approx(reached[early].mean())


def _brute_force_saving(score, reached, cost, confidence):
  """The most compute any per-exit thresholds on `score` save with the early stops
  reaching γ at a rate ≥ `confidence`: every combination of thresholds tried."""
  num_utterances, num_exits = score.shape
  candidates = [[*np.unique(score[:, k]), np.inf] for k in range(num_exits - 1)]
  best = 0.0
  for thresholds in itertools.product(*candidates):
    exits = np.full(num_utterances, num_exits - 1)
    for i in range(num_utterances):
      exits[i] = next((k for k, t in enumerate(thresholds) if score[i, k] >= t), num_exits - 1)
    early = exits < num_exits - 1
    if early.any() and reached[np.arange(num_utterances), exits][early].mean() < confidence:
      continue
    best = max(best, 1 - cost[exits].mean() / cost[-1])
  return best


def test_stopping_bound_thresholds_match_brute_force():
  script = _load_script(SCRIPT.with_name("stopping_bound.py"), "benchmarks_stopping_bound")
  rng = np.random.default_rng(0)
  for num_exits, num_utterances in ((2, 12), (3, 10), (4, 7)):
    for trial in range(4):
      # Rounded scores: ties, which a threshold cannot split.
      score = np.round(rng.uniform(size=(num_utterances, num_exits)), 1)
      reached = rng.uniform(size=score.shape) < 0.3 + 0.6 * score
      cost = np.cumsum(rng.uniform(0.5, 1.5, size=num_exits))
      for confidence in (0.6, 0.9):
        exits = script.best_thresholds(score, reached, cost, confidence)
        expected = _brute_force_saving(score, reached, cost, confidence)
        assert script.saved_fraction(exits, cost) == pytest.approx(expected), (trial, num_exits)
        early = exits < num_exits
        hits = reached[np.arange(num_utterances), exits - 1][early]
        assert not early.any() or hits.mean() >= confidence - 1e-9
        # Thresholds, not a free choice: whoever stops at exit k outranks whoever
        # reached exit k and went on.
        for k in range(num_exits - 1):
          went_on = exits > k + 1
          if np.any(exits == k + 1) and went_on.any():
            assert score[exits == k + 1, k].min() > score[went_on, k].max()


def test_stopping_bound_script_at_smoke_size(tmp_path):
  script = _load_script(SCRIPT.with_name("stopping_bound.py"), "benchmarks_stopping_bound")
  rng = np.random.default_rng(1)
  snr_min = np.sort(rng.normal(5.0, 2.0, size=(40, 3)), axis=1)
  probability = 1 / (1 + np.exp(-(snr_min - 5.0)))[..., None] + rng.normal(0, 0.1, (40, 3, 1))
  probability = np.clip(probability, 0, 1)
  table = make_exit_table(
    40,
    3,
    2,
    targets_db=np.array([5.0]),
    snr_min=snr_min,
    probability=probability,
    crosstalk=rng.uniform(size=(40, 3)),
  )
  folder = tmp_path / "eval"
  folder.mkdir()
  table.save(folder / "exit_table.npz")
  cost = [0.5, 0.75, 1.0]
  (folder / "evaluation.json").write_text(json.dumps({"gmacs_per_second_by_exit": cost}))
  out = tmp_path / "bound.json"
  results = script.main(
    ["--eval", f"s={folder}", "--targets", "5", "--confidences", "0.8", "--out", str(out)]
  )
  [row] = json.loads(out.read_text())["s"]
  assert row == json.loads(json.dumps(results["s"][0]))
  reached = snr_min >= 5.0
  policy = [next((k for k in range(2) if probability[i, k, 0] >= 0.8), 2) for i in range(40)]
  assert row["policy"]["saved"] == pytest.approx(1 - np.mean(np.array(cost)[policy]))
  for score, name in ((table.probability[..., 0], "probability"), (-table.crosstalk, "crosstalk")):
    assert row[f"best_thresholds_{name}"]["saved"] == pytest.approx(
      _brute_force_saving(score, reached, np.array(cost), 0.8)
    )
  oracle = [next((k for k in range(2) if reached[i, k]), 2) for i in range(40)]
  assert row["oracle"]["saved"] == pytest.approx(1 - np.mean(np.array(cost)[oracle]))
  assert "| s | 5 | 0.8 |" in out.with_suffix(".md").read_text()
  with pytest.raises(SystemExit, match="no probabilities at"):
    script.main(["--eval", f"s={folder}", "--targets", "6"])


def _evaluation_folder(folder, table, cost):
  """A folder as `eesep evaluate` writes it, as far as the benchmarks read it."""
  folder.mkdir()
  table.save(folder / "exit_table.npz")
  (folder / "evaluation.json").write_text(json.dumps({"gmacs_per_second_by_exit": list(cost)}))
  return folder


def _quality_table(rng, utterances):
  si_snri = np.cumsum(rng.exponential(0.3, size=(utterances, 3)), axis=1) + rng.normal(
    3.0, 2.0, size=(utterances, 1)
  )
  predicted = si_snri + rng.normal(0.0, 1.0, size=si_snri.shape)
  return make_exit_table(utterances, 3, 2, si_snri=si_snri, expected_snr_db=predicted)


def test_depth_gain_rules_and_frontier_by_brute_force():
  script = _load_script(SCRIPT.with_name("depth_gain.py"), "benchmarks_depth_gain")
  rng = np.random.default_rng(0)
  table, cost = _quality_table(rng, 30), np.array([0.4, 0.7, 1.0])
  for price in (0.0, 1.0, 5.0):
    expected = [
      1 + max(range(3), key=lambda k: (row[k] - price * cost[k], -k)) for row in table.si_snri
    ]
    np.testing.assert_array_equal(script.quality_oracle(table.si_snri, cost, price), expected)
  threshold = float(np.median(table.expected_snr_db[:, 0]))
  expected = [
    next((k + 1 for k in range(2) if row[k] < threshold), 3) for row in table.expected_snr_db
  ]
  exits = script.quit_when_hopeless(table.expected_snr_db, threshold)
  np.testing.assert_array_equal(exits, expected)
  # The frontier by brute force: every mix of two fixed exits within the budget.
  gain, gmacs = script.frontier_gain(table.si_snri, cost, exits)
  fixed = table.si_snri.mean(axis=0)
  weights = np.linspace(0, 1, 20001)
  best = max(
    np.max(
      np.where(
        w * cost[i] + (1 - w) * cost[j] <= gmacs + 1e-12, w * fixed[i] + (1 - w) * fixed[j], -np.inf
      )
    )
    for i in range(3)
    for j in range(3)
    for w in [weights]
  )
  taken = table.si_snri[np.arange(30), exits - 1].mean()
  assert gmacs == pytest.approx(cost[exits - 1].mean())
  assert gain == pytest.approx(taken - best, abs=1e-4)
  # The threshold chosen on a table is the candidate that gains most there.
  candidates = np.quantile(table.expected_snr_db[:, 0], script.THRESHOLD_QUANTILES)
  gains = [
    script.frontier_gain(table.si_snri, cost, script.quit_when_hopeless(table.expected_snr_db, t))[
      0
    ]
    for t in candidates
  ]
  assert script.chosen_threshold(table, cost) == pytest.approx(candidates[int(np.argmax(gains))])


def test_depth_gain_script_at_smoke_size(tmp_path):
  script = _load_script(SCRIPT.with_name("depth_gain.py"), "benchmarks_depth_gain")
  rng = np.random.default_rng(2)
  cost = [0.4, 0.7, 1.0]
  fit = _evaluation_folder(tmp_path / "fit", _quality_table(rng, 40), cost)
  table = _quality_table(rng, 50)
  folder = _evaluation_folder(tmp_path / "eval", table, cost)
  out = tmp_path / "gain.json"
  results = script.main(["--fit", str(fit), "--eval", f"s={folder}", "--out", str(out)])
  written = json.loads(out.read_text())
  assert written["sets"]["s"] == json.loads(json.dumps(results["s"]))
  row = results["s"]
  threshold = script.chosen_threshold(*script.corpus_breadth.evaluation_folder(fit))
  assert row["quit_when_hopeless"]["threshold_db"] == pytest.approx(threshold)
  exits = script.quit_when_hopeless(table.expected_snr_db, threshold)
  assert row["quit_when_hopeless"]["si_snri"] == pytest.approx(
    table.si_snri[np.arange(50), exits - 1].mean()
  )
  # The oracle at price 0 takes each utterance's best exit; no rule does better.
  free = next(o for o in row["quality_oracle"] if o["price"] == 0.0)
  assert free["si_snri"] == pytest.approx(table.si_snri.max(axis=1).mean())
  for oracle in row["quality_oracle"]:
    low, high = oracle["frontier_gain_interval"]
    assert low <= oracle["frontier_gain"] + 1e-9 and oracle["frontier_gain"] <= high + 1e-9
  assert "| s | 50 |" in out.with_suffix(".md").read_text()
  assert out.with_suffix(".png").stat().st_size > 0
