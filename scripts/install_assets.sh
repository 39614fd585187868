#!/usr/bin/env bash
# Model assets that ship outside PyPI: mediapipe's pose_landmark_lite / _heavy models (model_complexity 0 / 2)
# come in the npm package @mediapipe/pose. mediapipe's legacy solutions load models by a path relative to the
# installed package (and would try to download a missing one at run time), so they are copied next to the
# bundled pose_landmark_full.tflite. Idempotent; the tarball is checked against the registry's integrity hash.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

POSE_VERSION=0.5.1675469404   # newest @mediapipe/pose (2023-02); Apache-2.0
POSE_INTEGRITY="sha512-DFZsNWTsSphRIZppnUCuunzBiHP2FdJXR9ehc7mMi4KG+oPaOH0Em3d6kr7Py+TSyTXC1doH88KcF28k2sBxsQ=="
NPM_DIR="$ROOT/.cache/npm"

PY="$ROOT/.venv/bin/python"
MP_DIR=$("$PY" -c "import mediapipe, os; print(os.path.join(os.path.dirname(mediapipe.__file__), 'modules', 'pose_landmark'))" 2>/dev/null)
if [ -f "$MP_DIR/pose_landmark_lite.tflite" ] && [ -f "$MP_DIR/pose_landmark_heavy.tflite" ]; then
  echo "mediapipe pose lite/heavy models present in $MP_DIR"
  exit 0
fi
command -v npm >/dev/null || { echo "install_assets: npm is needed (apt-get install -y npm)" >&2; exit 1; }

mkdir -p "$NPM_DIR"
TGZ="$NPM_DIR/mediapipe-pose-$POSE_VERSION.tgz"
if [ ! -f "$TGZ" ]; then
  # `npm pack` fetches the exact published tarball (no install scripts run); cache kept inside the project.
  (cd "$NPM_DIR" && npm pack --silent --cache "$NPM_DIR/_cache" "@mediapipe/pose@$POSE_VERSION" >/dev/null)
  mv "$NPM_DIR/mediapipe-pose-$POSE_VERSION.tgz" "$TGZ" 2>/dev/null || true
fi
GOT="sha512-$(openssl dgst -sha512 -binary "$TGZ" | base64 -w0)"
if [ "$GOT" != "$POSE_INTEGRITY" ]; then
  echo "install_assets: $TGZ does not match the registry integrity hash" >&2
  rm -f "$TGZ"; exit 1
fi
EXTRACT="$NPM_DIR/mediapipe-pose-$POSE_VERSION"
rm -rf "$EXTRACT" && mkdir -p "$EXTRACT"
tar -xzf "$TGZ" -C "$EXTRACT" package/pose_landmark_lite.tflite package/pose_landmark_heavy.tflite
for name in pose_landmark_lite.tflite pose_landmark_heavy.tflite; do
  cp "$EXTRACT/package/$name" "$MP_DIR/$name.tmp" && mv "$MP_DIR/$name.tmp" "$MP_DIR/$name"
done
chmod 644 "$MP_DIR"/pose_landmark_lite.tflite "$MP_DIR"/pose_landmark_heavy.tflite
rm -rf "$EXTRACT"
echo "installed pose_landmark_lite/heavy ($POSE_VERSION) into $MP_DIR"
