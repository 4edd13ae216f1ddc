#!/usr/bin/env bash
# Regenerate the shipped models in exported/ (Fashion-MNIST, and CIFAR-10 from the JPEG copy or any
# CIFAR-10 source given as the first argument). Needs the package installed (scripts/main.sh or test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR=${1:-../shared/datasets}
.venv/bin/lenet-export ship --dataset fashion-mnist
.venv/bin/lenet-export ship --dataset cifar10 --data-dir "$CIFAR"
