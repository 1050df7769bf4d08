"""Every experiment config loads, builds its model and names options its reader takes."""

import inspect
import pathlib

import pytest

from eesep_jax import config_lib
from eesep_jax.data import readers

REPO = pathlib.Path(__file__).parents[1]
# The dataset configs of `experiments/`, and those that ship in the package (the demo).
CONFIGS = sorted([*(REPO / "experiments" / "configs").glob("*.py"),
                  *(path for path in (REPO / "eesep_jax" / "configs").glob("*.py")
                    if path.stem != "__init__")])
# The split names each layout's own scripts use.
SPLITS = {"wsj0-mix": {"tr", "cv", "tt"}, "wham": {"tr", "cv", "tt"},
          "whamr": {"tr", "cv", "tt"}, "voicebank-demand": {"train", "valid", "test"},
          "librimix": {"train-360", "train-100", "dev", "test"}}


def test_every_experiment_of_the_issue_has_a_config():
  assert {path.stem for path in CONFIGS} >= {
      "demo", "wsj0_2mix_press4", "wsj0_2mix_press12", "libri2mix_press4", "whamr_press4",
      "voicebank_demand_press4"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_config_is_complete_and_consistent(path):
  config = config_lib.load_config(path)
  for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
    assert config[key] > 0, key
  model = config_lib.model_config(config)
  assert model.num_exits >= 1
  reader = readers.READERS[config.data.kind]
  accepted = set(inspect.signature(reader).parameters) - {"root", "split"}
  assert set(config.data.options.to_dict()) <= accepted
  splits = {config.data.train_split, config.data.valid_split, config.data.test_split}
  assert splits <= SPLITS[config.data.kind]
  assert config.data.valid_split != config.data.train_split
