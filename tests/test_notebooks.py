"""The notebooks: stored without outputs, sized by a papermill `SMOKE` parameter, and
run headless at smoke size in a kernel of this interpreter."""

import json
import re
import shutil
import sys

from jupyter_client.manager import KernelManager
import nbformat
import papermill
import pytest

from conftest import DEMO_CONFIG
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# The parameter through which each notebook reuses the session's smoke ablation.
SHARED_FOLDER = {
  "01_quickstart": "SMOKE_DIR",
  "02_variance_parameterisations": "OUT",
  "03_exit_calibration": "SMOKE_DIR",
}


def test_every_notebook_of_the_issue_is_there():
  assert [path.stem for path in NOTEBOOKS] == sorted(SHARED_FOLDER)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_clean_with_a_smoke_parameter(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, cell.source[:60]
  [parameters] = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
  assert re.search(r"^SMOKE = False\b", parameters.source, re.MULTILINE)
  assert re.search(rf"^{SHARED_FOLDER[path.stem]} = None\b", parameters.source, re.MULTILINE)
  assert re.search(r"^CONFIG = None\b", parameters.source, re.MULTILINE)
  # Runs and configs are found from the working directory, not the package's location.
  assert not any("__file__" in cell.source for cell in notebook.cells)


def test_the_python3_kernel_is_this_interpreter():
  assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_headless_at_smoke_size(path, smoke_ablation, tmp_path):
  out, _ = smoke_ablation
  papermill.execute_notebook(
    str(path),
    str(tmp_path / path.name),
    kernel_name="python3",
    cwd=str(tmp_path),
    parameters={"SMOKE": True, SHARED_FOLDER[path.stem]: str(out), "CONFIG": str(DEMO_CONFIG)},
    progress_bar=False,
  )


def test_ablation_notebook_draws_the_committed_results(tmp_path):
  path = REPO / "notebooks" / "02_variance_parameterisations.ipynb"
  executed = papermill.execute_notebook(
    str(path),
    str(tmp_path / path.name),
    kernel_name="python3",
    cwd=str(tmp_path),
    progress_bar=False,
  )
  printed = "".join(
    output.get("text", "") for cell in executed.cells for output in cell.get("outputs", [])
  )
  committed = json.loads((REPO / "experiments/ablations/results/comparison.json").read_text())
  assert f"{len(committed['variants'])} variants, {committed['settings']['steps']} steps" in printed
  images = [
    output
    for cell in executed.cells
    for output in cell.get("outputs", [])
    if "image/png" in output.get("data", {})
  ]
  assert len(images) == 4  # SI-SNRi, calibration, differences, honesty.


@pytest.mark.slow
def test_quickstart_on_a_trained_run_applies_its_posthoc_scales(smoke_ablation, tmp_path):
  """`RUN` instead of `SMOKE`: the path a user takes after `make demo`, whose run holds
  post-hoc scales (smoke runs hold none)."""
  from eesep_jax import runs
  from eesep_jax.analysis import calibration
  from experiments.ablations import driver

  out, _ = smoke_ablation
  run = tmp_path / "run"
  shutil.copytree(driver.smoke_run(DEMO_CONFIG, out), run)
  num_exits = runs.load(run).config.model.num_exits
  calibration.save_posthoc(
    run, {"beta_scale": [1.5] * num_exits, "alpha_excess_scale": [0.75] * num_exits}
  )
  path = REPO / "notebooks" / "01_quickstart.ipynb"
  executed = papermill.execute_notebook(
    str(path),
    str(tmp_path / path.name),
    kernel_name="python3",
    cwd=str(tmp_path),
    parameters={"RUN": str(run)},
    progress_bar=False,
  )
  printed = "".join(
    output.get("text", "") for cell in executed.cells for output in cell.get("outputs", [])
  )
  assert f"checkpoint: {run}" in printed
  scales = ", ".join(["1.5"] * num_exits)
  assert f"post-hoc scales: {{'beta_scale': array([{scales}]" in printed
