#!/usr/bin/env bash
# Install into .venv (with the test and plot extras) and run the test suite; arguments go to pytest.
# Real-data tests find Fashion-MNIST in ../shared/datasets or /usr/share/datasets (Debian's
# dataset-fashion-mnist, installed here when possible) and CIFAR-10 in ../shared/datasets/cifar10-jpeg.tar.gz
# (or $LENET_EXPORT_TEST_FMNIST / $LENET_EXPORT_TEST_CIFAR); missing ones are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "installing lenet-export[test,plot] into .venv (log: .venv/install.log)"
# pip and setuptools chatter goes to the log; it is shown only if the install fails.
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[test,plot]"; } \
     > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  exit 1
fi
if [ ! -d ../shared/datasets/fashion-mnist ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
fi
exec .venv/bin/python -m pytest "$@"
