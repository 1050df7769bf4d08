"""Peak FLOP/s of known accelerators, the denominator of model FLOP utilisation (MFU).

One chip's dense (no sparsity) peak from its vendor's data sheet, for the compute
dtype of the model. float32 on a GPU is the TF32 tensor-core peak, on which XLA runs
float32 matmuls at JAX's default precision; on a TPU it is the MXU's bfloat16 peak,
on which the default precision runs them. CPUs have no entry: their peak depends on
the core count, clock and vector units, which `jax.Device` does not say.
"""

# (lower-case substring of `jax.Device.device_kind`, {dtype: peak FLOP/s}); the first
# match wins, so the more specific names come first.
_PEAKS = (
  ("h100 pcie", {"bfloat16": 756e12, "float32": 378e12}),
  ("h100", {"bfloat16": 989e12, "float32": 495e12}),  # SXM.
  ("h200", {"bfloat16": 989e12, "float32": 495e12}),
  ("a100", {"bfloat16": 312e12, "float32": 156e12}),
  ("tpu v4", {"bfloat16": 275e12, "float32": 275e12}),
  ("tpu v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
  ("tpu v5e", {"bfloat16": 197e12, "float32": 197e12}),
  ("tpu v5", {"bfloat16": 459e12, "float32": 459e12}),  # v5p.
  ("tpu v6", {"bfloat16": 918e12, "float32": 918e12}),  # v6e ("TPU v6 lite").
)
DTYPES = ("float32", "bfloat16")


def peak_flops(device, dtype):
  """Dense peak FLOP/s of one `device` (a `jax.Device` or its `device_kind`) in `dtype`
  ("float32" or "bfloat16"), or None for a device not in the table (CPUs)."""
  if str(dtype) not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
  kind = str(getattr(device, "device_kind", device)).lower()
  for name, peaks in _PEAKS:
    if name in kind:
      return peaks[str(dtype)]
  return None
