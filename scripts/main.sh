#!/usr/bin/env bash
# The main job, end to end on the default data set (Fashion-MNIST):
# install into .venv, get the data, train, export to every format, make the FP16/INT8 variants, verify parity.
# Re-running it resumes/finishes the run in runs/fashion-mnist and re-exports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh export,cpu,runtimes,plot,serve-client,serve
# Data: Debian's package (installed above where apt is usable; these machines have no internet), else
# torchvision's download (md5-checked) on a connected machine.
.venv/bin/lenet-export data --dataset fashion-mnist --download

RUN=runs/fashion-mnist
if [ -f "$RUN/last.pth" ]; then
  .venv/bin/lenet-export train --out "$RUN" --resume
else
  .venv/bin/lenet-export train --dataset fashion-mnist --out "$RUN"
fi
.venv/bin/lenet-export onnx --checkpoint "$RUN/best.pth" --out "$RUN/export" --force
.venv/bin/lenet-export quantize --exported "$RUN/export" --checkpoint "$RUN/best.pth"
.venv/bin/lenet-export verify --exported "$RUN/export" --checkpoint "$RUN/best.pth" --report "$RUN/verify.json"
