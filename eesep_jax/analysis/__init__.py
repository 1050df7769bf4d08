"""Analysis above inference: evaluation over every exit and policy, calibration,
reports and figures, the variance-parameterisation ablation."""
