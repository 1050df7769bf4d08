"""PRESS-Net: the network, its presets, and its size and compute per exit."""

from eesep_jax.models.config import PRESETS, PressNetConfig, preset
from eesep_jax.models.cost import count_params, gmacs_by_exit
from eesep_jax.models.press_net import (STAGES, PressNet, apply_stage, frame_layout,
                                        stage_params, valid_lengths)

__all__ = [
    "PRESETS", "PressNetConfig", "preset", "count_params", "gmacs_by_exit", "STAGES",
    "PressNet", "apply_stage", "frame_layout", "stage_params", "valid_lengths",
]
