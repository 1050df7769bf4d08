"""The peak FLOP/s table finds each known device by the name JAX gives it."""

import jax
import pytest

from eesep_jax import hardware


@pytest.mark.parametrize(
  "kind, dtype, tflops",
  [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989),
    ("NVIDIA H100 PCIe", "bfloat16", 756),
    ("NVIDIA H100 80GB HBM3", "float32", 495),
    ("NVIDIA H200", "bfloat16", 989),
    ("NVIDIA A100-SXM4-40GB", "float32", 156),
    ("TPU v4", "bfloat16", 275),
    # v5e and v6e call themselves "lite"; a v5p is "TPU v5".
    ("TPU v5 lite", "bfloat16", 197),
    ("TPU v5", "bfloat16", 459),
    ("TPU v6 lite", "float32", 918),
  ],
)
def test_known_devices_have_their_data_sheet_peak(kind, dtype, tflops):
  assert hardware.peak_flops(kind, dtype) == pytest.approx(tflops * 1e12)


def test_cpus_and_unknown_devices_have_none():
  assert hardware.peak_flops(jax.devices("cpu")[0], "float32") is None
  assert hardware.peak_flops("Tesla T4", "bfloat16") is None
  with pytest.raises(ValueError, match="float16"):
    hardware.peak_flops("TPU v4", "float16")
