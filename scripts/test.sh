#!/usr/bin/env bash
# Set up (first time only) and run the test suite: unit tests, then integration tests that use
# real Ray, the real vLLM CPU engine and real FSDP2 process groups.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec .venv/bin/python -m pytest tests -q "$@"
