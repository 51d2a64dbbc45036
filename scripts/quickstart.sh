#!/usr/bin/env bash
# Set up (first time only) and run the default experiment: experiments/quickstart.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keep the local Ray cluster on 127.0.0.1
# overwrite=true: running the quickstart again starts it over (pass resume=latest to continue).
exec .venv/bin/rlcore train experiments/quickstart.yaml overwrite=true "$@"
