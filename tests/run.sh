#!/usr/bin/env bash
# Install what the tests need (Python packages, Fashion-MNIST, Chromium) and run the default suite.
# GPU tests are marked `gpu` and skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
  else
    echo "note: missing ${need[*]} (install with apt-get); tests that need them will skip" >&2
  fi
fi
# PyTorch's CPU build: on Linux the default wheel of torch==2.13.0 is the CUDA one (several GB)
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check --timeout 30 --retries 1 torch==2.13.0 \
      --index-url https://download.pytorch.org/whl/cpu || python3 -m pip install -q torch==2.13.0
fi
python3 -m pip install -q --disable-pip-version-check -r requirements-test.txt
# the page's own unit tests (app/static/explorer-core.js), with Node's built-in runner
if command -v node >/dev/null; then
  node --test tests/js/
else
  echo "note: node is missing (install nodejs 20); the page's unit tests in tests/js/ are skipped" >&2
fi
exec python3 -m pytest -q "$@"
