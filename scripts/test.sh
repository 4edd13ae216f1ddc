#!/usr/bin/env bash
# Install into .venv (with the test and plot extras) and run the test suite; arguments go to pytest.
# Real-data tests find Fashion-MNIST in ../shared/datasets or /usr/share/datasets (Debian's
# dataset-fashion-mnist, installed here when possible) and CIFAR-10 in ../shared/datasets/cifar10-jpeg.tar.gz
# (or $LENET_EXPORT_TEST_FMNIST / $LENET_EXPORT_TEST_CIFAR); missing ones are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh export,cpu,runtimes,test,plot,ray,serve-client
# One pytest-xdist worker per core, at most 4 (the session's small models are trained and exported once, then copied
# to each worker: tests/conftest.py); a test file runs whole on one worker, so a module's fixtures are made once.
# LENET_EXPORT_TEST_WORKERS=0 runs everything in this process.
CORES=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
WORKERS=${LENET_EXPORT_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}
exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadfile "$@"
