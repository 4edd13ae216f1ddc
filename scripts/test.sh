#!/usr/bin/env bash
# Install into .venv (with the test and plot extras) and run the test suite; arguments go to pytest.
# Real-data tests find Fashion-MNIST in ../shared/datasets or /usr/share/datasets (Debian's
# dataset-fashion-mnist, installed here when possible) and CIFAR-10 in ../shared/datasets/cifar10-jpeg.tar.gz
# (or $LENET_EXPORT_TEST_FMNIST / $LENET_EXPORT_TEST_CIFAR); missing ones are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh export,cpu,runtimes,test,plot,ray,serve-client
exec .venv/bin/python -m pytest "$@"
