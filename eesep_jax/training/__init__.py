"""Training: the jit-compiled train loop and its checkpoints."""
