"""`eesep train`: its `--config.KEY` flags become config overrides."""

import pytest

from conftest import DEMO_CONFIG
from conftest import REPO
from eesep_jax import config_lib
from eesep_jax.app import cli


def test_config_overrides_from_the_command_line():
  args = cli.parse_args(
    [
      "train",
      "--config",
      "c.py",
      "--workdir",
      "w",
      "--config.steps=5",
      "--config.model.width",
      "48",
    ]
  )
  assert (args.command, args.config) == ("train", "c.py")
  assert args.config_flags == ["--config.steps=5", "--config.model.width", "48"]
  config, overrides = config_lib.parse_flags(DEMO_CONFIG, args.config_flags)
  assert overrides == {"steps": 5, "model.width": 48}
  assert (config.steps, config.model.width) == (5, 48)
  config = config_lib.load_config(
    REPO / "eesep_jax/configs/demo.py",
    ["steps=5", "optimizer.learning_rate=0.5", "data.root=/somewhere"],
  )
  assert (config.steps, config.optimizer.learning_rate, config.data.root) == (5, 0.5, "/somewhere")
  with pytest.raises(ValueError, match="no_such_key"):
    config_lib.load_config(REPO / "eesep_jax/configs/demo.py", ["no_such_key=1"])
