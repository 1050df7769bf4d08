#!/usr/bin/env bash
# Thin wrapper: `experiments/tpu/launch.sh ARGS` is `python3 experiments/tpu/launch.py ARGS`.
# See `experiments/tpu/launch.sh --help`.
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/launch.py" "$@"
