#!/usr/bin/env bash
# Shared by main.sh and test.sh: create .venv and install lenet-export with the extras given as $1,
# then Debian's Fashion-MNIST package (best effort) where apt is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=$1

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
echo "installing lenet-export[$EXTRAS] into .venv (log: .venv/install.log)"
# pip and setuptools chatter goes to the log; it is shown only if the install fails. constraints.txt pins
# the versions the shipped models and the README's figures come from (README, "Guarantees").
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -c constraints.txt -e ".[$EXTRAS]"; } \
     > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  exit 1
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
fi
