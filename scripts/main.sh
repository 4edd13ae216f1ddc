#!/usr/bin/env bash
# The main job, end to end on the default data set (Fashion-MNIST):
# install into .venv, get the data, train, export to TorchScript + ONNX, verify parity.
# Re-running it resumes/finishes the run in runs/fashion-mnist and re-exports.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "installing lenet-export[plot] into .venv (log: .venv/install.log)"
# pip and setuptools chatter goes to the log; it is shown only if the install fails.
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[plot]"; } \
     > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  exit 1
fi

# Data: Debian's package where apt is usable (these machines have no internet), else torchvision's
# download (md5-checked) on a connected machine.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
fi
.venv/bin/lenet-export data --dataset fashion-mnist --download

RUN=runs/fashion-mnist
if [ -f "$RUN/last.pth" ]; then
  .venv/bin/lenet-export train --out "$RUN" --resume
else
  .venv/bin/lenet-export train --dataset fashion-mnist --out "$RUN"
fi
.venv/bin/lenet-export onnx --checkpoint "$RUN/best.pth" --out "$RUN/export" --force
.venv/bin/lenet-export verify --exported "$RUN/export" --checkpoint "$RUN/best.pth" --report "$RUN/verify.json"
