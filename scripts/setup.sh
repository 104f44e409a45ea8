#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: FFmpeg's shared libraries (for TorchCodec) and the
# Python packages of requirements.txt. Safe to re-run: what is present is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so'; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing ffmpeg (TorchCodec needs its shared libraries)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
      || echo "[setup] warning: could not install ffmpeg; videos will be decoded with PyAV instead"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
      || echo "[setup] warning: could not install ffmpeg; videos will be decoded with PyAV instead"
  else
    echo "[setup] note: FFmpeg libraries not found and no root; videos will be decoded with PyAV (slower)"
  fi
fi

if ! python -c "import torch, torchvision, torchcodec, av, cv2, skimage, pytest" 2>/dev/null \
   || ! python -c "import importlib.metadata as m, sys; sys.exit(m.version('torch').split('+')[0] != '2.14.1')"; then
  echo "[setup] installing Python packages (requirements.txt)"
  python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
echo "[setup] ok: $(python -c 'import torch; print("torch", torch.__version__)')"
