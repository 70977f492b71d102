#!/usr/bin/env bash
# Set-up that the README's first command and CI both run: a venv with mimkd[dev], and the
# Fashion-MNIST files from Debian's package when this is Debian/Ubuntu (elsewhere, mimkd
# downloads them through torchvision on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_cmd="sudo"
  { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist; } \
    || echo "note: could not install dataset-fashion-mnist; mimkd will download Fashion-MNIST when online"
fi
echo "mimkd installed in .venv"
