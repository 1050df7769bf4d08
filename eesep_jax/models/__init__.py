"""PRESS-Net: the network, its presets, and its size and compute per exit."""

from eesep_jax.models.config import preset
from eesep_jax.models.config import PRESETS
from eesep_jax.models.config import PressNetConfig
from eesep_jax.models.cost import count_params
from eesep_jax.models.cost import gmacs_by_exit
from eesep_jax.models.press_net import apply_stage
from eesep_jax.models.press_net import frame_layout
from eesep_jax.models.press_net import initial_variance_state
from eesep_jax.models.press_net import PressNet
from eesep_jax.models.press_net import stage_params
from eesep_jax.models.press_net import STAGES
from eesep_jax.models.press_net import valid_lengths

__all__ = [
  "PRESETS",
  "PressNetConfig",
  "preset",
  "count_params",
  "gmacs_by_exit",
  "STAGES",
  "PressNet",
  "apply_stage",
  "frame_layout",
  "initial_variance_state",
  "stage_params",
  "valid_lengths",
]
