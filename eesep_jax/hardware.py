"""Peak FLOP/s of the accelerators the project runs on, for model FLOPs utilisation (MFU).

Dense matmul peaks per chip from the vendors' data sheets (no sparsity). For float32
compute the GPU figure is TF32's, which XLA uses for float32 matmuls at JAX's default
precision on Ampere and Hopper; TPUs run float32 matmuls in bfloat16 passes at the
default precision, so their float32 peak is their bfloat16 one.
"""

# (substring of the lower-cased `device_kind`, bfloat16 peak, float32 peak), most
# specific first: "h100 pcie" before "h100".
_PEAKS = (
    ("h100 pcie", 756e12, 378e12),
    ("h100", 989e12, 494e12),
    ("h200", 989e12, 494e12),
    ("a100", 312e12, 156e12),
    ("tpu v4", 275e12, 275e12),
    ("tpu v5 lite", 197e12, 197e12),
    ("tpu v5e", 197e12, 197e12),
    ("tpu v5p", 459e12, 459e12),
    ("tpu v5", 459e12, 459e12),  # v5p reports itself as "TPU v5".
    ("tpu v6 lite", 918e12, 918e12),
    ("tpu v6e", 918e12, 918e12),
)


def peak_flops(device, dtype):
  """The peak dense FLOP/s of one `device` (a `jax.Device`, or its `device_kind`) at
  compute `dtype` ("bfloat16" or "float32"); None for a device not in the table (CPUs)."""
  kind = str(getattr(device, "device_kind", device)).lower()
  if getattr(device, "platform", None) == "cpu" or kind == "cpu":
    return None
  for name, bfloat16, float32 in _PEAKS:
    if name in kind:
      return bfloat16 if str(dtype) == "bfloat16" else float32
  return None
