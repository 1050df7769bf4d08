"""The variance-parameterisation ablation: its variants (`eesep_jax.analysis.ablation`),
and a smoke-size run of two by its driver (`experiments/ablations/driver.py`)."""

import csv
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from conftest import DEMO_CONFIG
from conftest import REPO
from eesep_jax import config_lib
from eesep_jax import errors
from eesep_jax import models
from eesep_jax.analysis import ablation
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.analysis import exit_table
from eesep_jax.core import probabilistic
from eesep_jax.training import train
from experiments.ablations import driver
from experiments.ablations import variance_parameterisations

SCRIPT = REPO / "experiments" / "ablations" / "variance_parameterisations.py"
FULL_CONFIG = REPO / "experiments" / "configs" / "ablation_full.py"
ABLATION_DEMO = REPO / "experiments" / "configs" / "ablation_demo.py"
# Columns every row must fill with a finite number.
MEASURED = [f"{key}_{when}" for key in ablation.MEASURES for when in ("before", "after")]


def _overrides(variant):
  """`{key: value}` of a variant's overrides, typed as the demo config's fields."""
  flags = [f"--config.{text}" for text in variant.overrides]
  return config_lib.parse_flags(DEMO_CONFIG, flags)[1]


def test_variants_are_those_of_the_issue():
  variants = {variant.name: variant for variant in ablation.variants(models.preset("tiny"))}
  for parameterisation in probabilistic.PARAMETERISATIONS:
    for name, monotone in ((parameterisation, False), (f"{parameterisation}+monotone", True)):
      assert _overrides(variants[name]) == {
        "model.variance.parameterisation": parameterisation,
        "model.variance.monotone": monotone,
      }
  for depth in (1, 2, 3):  # The tiny preset: 3 exits of one block each.
    assert _overrides(variants[f"single-exit-{depth}"]) == {
      "model.num_exits": 1,
      "model.num_exit_blocks": depth,
      "loss.exit_weights": None,
    }
  assert _overrides(variants["per-exit-permutation"]) == {"loss.permutation": "per-exit"}
  assert len(variants) == 5 * 2 + 3 + 1
  assert all(
    variants[name].kind == "single-exit" for name in variants if name.startswith("single-exit")
  )


def test_single_exit_baselines_save_only_the_earlier_exit_heads():
  base = config_lib.load_config(DEMO_CONFIG)
  full_cost = models.gmacs_by_exit(config_lib.model_config(base))
  baselines = ablation.select_variants(
    ablation.variants(config_lib.model_config(base)),
    ["single-exit-1", "single-exit-2", "single-exit-3"],
  )
  cost = [
    models.gmacs_by_exit(
      config_lib.model_config(config_lib.load_config(DEMO_CONFIG, variant.overrides))
    )[0]
    for variant in baselines
  ]
  # Depth 1 is exit 1's network; deeper ones skip the heads of the exits before theirs.
  assert cost[0] == pytest.approx(full_cost[0], rel=1e-6)
  head = full_cost[1] - full_cost[0] - (cost[1] - cost[0])
  assert head > 0
  assert cost[2] == pytest.approx(full_cost[2] - 2 * head, rel=1e-6)


def test_every_variant_builds_on_the_full_config():
  base = config_lib.model_config(config_lib.load_config(FULL_CONFIG))
  for variant in ablation.variants(base):
    model = config_lib.model_config(config_lib.load_config(FULL_CONFIG, variant.overrides))
    if variant.kind == "single-exit":
      depth = int(variant.name.rsplit("-", 1)[1])
      assert (model.num_exits, model.num_exit_blocks) == (1, depth * base.blocks_per_stage)


def test_unknown_variants_are_named():
  with pytest.raises(ValueError, match="student-snr"):
    ablation.select_variants(ablation.variants(models.preset("tiny")), ["student-t"])


def test_script_help_has_an_example():
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
  )
  assert "--smoke" in result.stdout and "examples:" in result.stdout


@pytest.mark.slow
def test_smoke_ablation_compares_every_variant(smoke_ablation):
  out, comparison = smoke_ablation
  with (out / ablation.FILES["csv"]).open(newline="") as file:
    rows = list(csv.DictReader(file))
  assert [row["variant"] for row in rows] == list(driver.SMOKE_SUBSET)
  for row in rows:
    for column in MEASURED:
      assert math.isfinite(float(row[column])), (row["variant"], column)
    for when in ("before", "after"):
      share = row[f"satisfaction_{when}"]
      assert (share == "") == (row[f"exited_{when}"] == "0")
      assert share == "" or 0.0 <= float(share) <= 1.0
  every_exit, single_exit = rows  # student-snr, then single-exit-1.
  assert all(math.isfinite(float(every_exit[f"si_snri_exit_{d}"])) for d in (1, 2, 3))
  assert math.isfinite(float(single_exit["si_snri_exit_1"]))
  assert single_exit["si_snri_exit_2"] == single_exit["si_snri_exit_3"] == ""
  assert comparison["variants"][1]["reference"] == "student-snr"

  table = (out / ablation.FILES["markdown"]).read_text()
  assert all(f"| {name} |" in table for name in driver.SMOKE_SUBSET)
  assert ablation.load_comparison(out) == comparison
  for kind in ("si_snri", "calibration"):
    assert (out / ablation.FILES[kind]).stat().st_size > 0
  for name in driver.SMOKE_SUBSET:
    assert (out / name / driver.CALIBRATION_DIR / "reliability.png").is_file()
    assert (out / name / "posthoc_calibration.json").is_file()


@pytest.mark.slow
def test_smoke_ablation_resumes_without_training_or_calibrating(smoke_ablation, monkeypatch):
  out, comparison = smoke_ablation

  def forbidden(*args, **kwargs):
    raise AssertionError("a finished variant was run again")

  monkeypatch.setattr(train, "train_and_evaluate", forbidden)
  monkeypatch.setattr(calibration_report, "calibrate_checkpoint", forbidden)
  again = driver.run_ablation(DEMO_CONFIG, out, names=driver.SMOKE_SUBSET, smoke=True)
  assert again == comparison
  # A finished run is not trained again, even without its result.
  config = config_lib.load_config(DEMO_CONFIG, driver.smoke_overrides(out / driver.CORPUS_DIR))
  driver.train_variant(config, out / "student-snr")


def test_a_preempted_variant_stops_the_ablation_with_exit_143(tmp_path, monkeypatch, capsys):
  """Rather than calibrate and report a half-trained variant."""

  def preempted(config, workdir):
    raise errors.Preempted(workdir, 3)

  monkeypatch.setattr(train, "train_and_evaluate", preempted)
  monkeypatch.setattr(calibration_report, "calibrate_checkpoint", None)  # Never reached.
  argv = ["--smoke", "--variants", "student-snr", "--out", str(tmp_path)]
  assert variance_parameterisations.main(argv) == errors.PREEMPTED_EXIT_CODE
  assert "preempted (SIGTERM) at step 3" in capsys.readouterr().err
  assert not (tmp_path / "student-snr" / driver.RESULT_FILE).exists()


def test_paired_differences_agree_with_scipys_bootstrap():
  rng = np.random.default_rng(3)
  reference = rng.normal(5.0, 3.0, (400, 2))
  values = reference + rng.normal([0.3, -0.1], 1.0, (400, 2))  # Paired: shared noise.
  measured = ablation.paired_differences(values, reference)
  differences = values - reference
  assert measured["difference"] == pytest.approx(differences.mean(axis=0), abs=1e-12)
  for column in range(2):
    expected = scipy.stats.bootstrap(
      (differences[:, column],), np.mean, method="percentile", random_state=4
    ).confidence_interval
    # Two independent sets of resamples: their percentiles agree to a few % of the width.
    width = expected.high - expected.low
    assert measured["low"][column] == pytest.approx(expected.low, abs=0.05 * width)
    assert measured["high"][column] == pytest.approx(expected.high, abs=0.05 * width)
  # Unpaired noise would make the interval far wider: pairing is what is measured.
  assert measured["high"][0] - measured["low"][0] < 0.5


def _evaluation(out, variant):
  folder = out / variant / driver.EVALUATION_DIR.format("test")
  summary = json.loads((folder / evaluate.JSON_FILE).read_text())
  return exit_table.load(folder / evaluate.TABLE_FILE), summary


@pytest.mark.slow
def test_smoke_ablation_reports_each_set_as_brute_force_does(smoke_ablation):
  out, comparison = smoke_ablation
  settings = comparison["settings"]
  target, confidence = settings["target_snr_db"], settings["confidence"]
  assert settings["report_sets"] == ["test"]
  entries = {entry["variant"]: entry for entry in comparison["variants"]}
  tables = {}
  for name, entry in entries.items():
    table, _ = _evaluation(out, name)
    tables[name] = table
    measured = entry["sets"]["test"]
    snr_min, probability = table.snr_min, table.probability[..., table.target_index(target)]
    # The policy by a loop: the first exit whose probability reaches p, else the last.
    taken = [
      next((k for k in range(table.num_exits) if probability[i, k] >= confidence), -1)
      for i in range(len(table.ids))
    ]
    reached = [snr_min[i, k] >= target for i, k in enumerate(taken)]
    assert measured["reach"] == pytest.approx(np.mean(reached))
    assert measured["full_depth_reach"] == pytest.approx(np.mean(snr_min[:, -1] >= target))
    assert measured["stopped_early"] == sum(k != -1 and k < table.num_exits - 1 for k in taken)
    assert measured["si_snri"] == pytest.approx(table.si_snri.mean(axis=0).tolist())
    for k, mean in enumerate(measured["si_snri"]):
      assert measured["si_snri_low"][k] <= mean <= measured["si_snri_high"][k]
    assert measured["predicted"] == pytest.approx(probability[:, -1].mean())
    assert measured["observed"] == pytest.approx(np.mean(snr_min[:, -1] >= target))
    assert all(math.isfinite(measured[key]) for key in ("ece_mean", "ks", "crps"))
    assert 0 <= measured["ece_mean_low"] <= measured["ece_mean_high"] <= 1
  # single-exit-1 against exit 1 of its reference, utterance by utterance.
  baseline = entries["single-exit-1"]
  assert baseline["depths"] == [1] and entries["student-snr"]["depths"] == [1, 2, 3]
  ours, theirs = tables["single-exit-1"], tables["student-snr"]
  by_id = dict(zip(theirs.ids, theirs.si_snri[:, 0]))
  expected = np.mean([value - by_id[i] for i, value in zip(ours.ids, ours.si_snri[:, 0])])
  assert baseline["differences"]["test"]["difference"] == pytest.approx([expected])
  assert "differences" not in entries["student-snr"]  # The reference itself.
  assert "## test (" in (out / ablation.FILES["markdown"]).read_text()


RESULTS = REPO / "experiments" / "ablations" / "results"
HEADLINE = re.compile(
  r"<!-- ablation headline: made by ablation.headline_markdown\(\) -->\n(.*?)<!-- end -->",
  re.DOTALL,
)
REPLICATES = re.compile(
  r"<!-- ablation replicates: made by ablation.replicates_markdown\(\) -->\n(.*?)<!-- end -->",
  re.DOTALL,
)


def test_the_committed_results_are_one_demo_scale_run():
  comparison = ablation.load_comparison(RESULTS)
  settings = comparison["settings"]
  assert not settings["smoke"]
  assert settings["config"].endswith("experiments/configs/ablation_demo.py")
  names = [entry["variant"] for entry in comparison["variants"]]
  base = config_lib.model_config(config_lib.load_config(ABLATION_DEMO))
  every = [variant.name for variant in ablation.variants(base)]
  # The variants in the driver's order, as far as the run has gone (it resumes there).
  assert names == every[: len(names)]
  assert settings["variants_done"] == f"{len(names)} of {len(every)}"
  assert {"single-exit-1", "single-exit-3"} <= set(names)
  assert settings["report_sets"] == ["test", "heldout", "kokoro", "recorded"]
  for kind in ablation.FILES.values():
    assert (RESULTS / kind).stat().st_size > 0, kind


def test_docs_quote_the_committed_ablation():
  text = (REPO / "docs" / "calibration.md").read_text()
  [quoted] = HEADLINE.findall(text)
  assert quoted.strip() == ablation.headline_markdown(ablation.load_comparison(RESULTS)).strip()
  [quoted] = REPLICATES.findall(text)
  replicates = {
    "seed 0": ablation.load_comparison(RESULTS),
    "seed 1": ablation.load_comparison(RESULTS / "seed1"),
  }
  assert quoted.strip() == ablation.replicates_markdown(replicates).strip()


def test_the_seed_replicate_differs_from_the_main_run_only_in_its_seed():
  main, replicate = (
    ablation.load_comparison(path)["settings"] for path in (RESULTS, RESULTS / "seed1")
  )
  assert replicate["overrides"] == [*main["overrides"], "seed=1"]
  assert {
    key: value for key, value in replicate.items() if key not in ("overrides", "variants_done")
  } == {key: value for key, value in main.items() if key not in ("overrides", "variants_done")}
