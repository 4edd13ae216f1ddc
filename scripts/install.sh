#!/usr/bin/env bash
# Shared by main.sh and test.sh: create .venv and install lenet-export with the extras given as $1,
# then Debian's Fashion-MNIST package (best effort) where apt is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=$1
# `serve` is not installed into .venv (kserve needs protobuf<7 and more, below constraints.txt): it makes .venv-serve
MAIN_EXTRAS=$(echo ",$EXTRAS," | sed 's/,serve,/,/g; s/^,//; s/,$//')
[ -n "$MAIN_EXTRAS" ] || MAIN_EXTRAS=cpu,serve-client   # `install.sh serve` alone: .venv gets the runtime and the client

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
echo "installing lenet-export[$MAIN_EXTRAS] into .venv (log: .venv/install.log)"
# pip and setuptools chatter goes to the log; it is shown only if the install fails. constraints.txt pins
# the versions the shipped models and the README's figures come from (README, "Guarantees").
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -c constraints.txt -e ".[$MAIN_EXTRAS]"; } \
     > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  exit 1
fi
# The signing environment: OpenSSF model-signing cannot share .venv with litert-torch (see pyproject.toml,
# extra `sign`), so `lenet-export sign` runs from .venv-sign: the torch-free core, onnxruntime and model-signing,
# pinned by constraints-sign.txt. Made for the tests (and ship); anything else needs only .venv.
case ",$EXTRAS," in
  *,test,*|*,sign,*)
    [ -x .venv-sign/bin/python ] || "${PYTHON:-python3}" -m venv .venv-sign
    echo "installing lenet-export[cpu,sign] into .venv-sign (log: .venv-sign/install.log)"
    if ! .venv-sign/bin/python -m pip install -q -c constraints-sign.txt -e ".[cpu,sign]" > .venv-sign/install.log 2>&1; then
      cat .venv-sign/install.log >&2
      exit 1
    fi ;;
esac
# The serving environment: KServe's ModelServer (lenet-export serve) with the torch-free core and onnxruntime,
# pinned by constraints-serve.txt; verify's oip backends and bench --serve start their servers from it.
case ",$EXTRAS," in
  *,test,*|*,serve,*)
    [ -x .venv-serve/bin/python ] || "${PYTHON:-python3}" -m venv .venv-serve
    echo "installing lenet-export[cpu,serve] into .venv-serve (log: .venv-serve/install.log)"
    if ! { .venv-serve/bin/python -m pip install -q --upgrade pip && \
           .venv-serve/bin/python -m pip install -q -c constraints-serve.txt -e ".[cpu,serve]"; } > .venv-serve/install.log 2>&1; then
      cat .venv-serve/install.log >&2
      exit 1
    fi ;;
esac
# Debian packages, best effort where apt is usable: the data set, and for the tests a real browser (chromium,
# driven by puppeteer-core from examples/web). Tests whose tool is missing skip with the reason.
APT=()
[ -d /usr/share/datasets/fashion-mnist ] || APT+=(dataset-fashion-mnist)
case ",$EXTRAS," in *,test,*) command -v chromium >/dev/null || APT+=(chromium) ;; esac
if [ ${#APT[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${APT[*]} (apt; waits up to 300 s for another apt or dpkg, see .venv/install.log)"
  bash scripts/apt-install.sh "${APT[@]}" >>.venv/install.log 2>&1 \
    || echo "apt-get install ${APT[*]} failed (see .venv/install.log); the tests that need it will skip"
fi
# npm packages, locked by each package-lock.json: examples/web (onnxruntime-web, for the ort-web backend and the
# page) always, examples/node for the tests. --ignore-scripts: onnxruntime-node's install script tries a
# download; its CPU binaries ship inside the package. Without npm, those backends and tests skip with the reason.
APPS=(examples/web)
case ",$EXTRAS," in *,test,*) APPS+=(examples/node) ;; esac
if command -v npm >/dev/null; then
  for app in "${APPS[@]}"; do
    echo "installing $app npm packages"
    (cd "$app" && npm ci --ignore-scripts --no-audit --no-fund) >>.venv/install.log 2>&1 \
      || echo "npm ci in $app failed (see .venv/install.log); what needs it will skip with the reason"
  done
fi
