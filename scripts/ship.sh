#!/usr/bin/env bash
# Regenerate the shipped models in exported/ (Fashion-MNIST, and CIFAR-10 from the JPEG copy or any
# CIFAR-10 source given as the first argument). Needs the package installed (scripts/main.sh or test.sh).
# LENET_EXPORT_FROM_RUNS=1 packages the existing runs/ship-<dataset> runs instead of training again;
# LENET_EXPORT_SIGNING_KEY=KEY.pem signs each folder afterwards (from .venv-sign; see README, "Signing").
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR=${1:-../shared/datasets}
# verify proves the endpoint too (oip-http, oip-grpc): its servers run from .venv-serve (install.sh serve)
for spec in "fashion-mnist:" "cifar10:--data-dir $CIFAR"; do
  dataset=${spec%%:*}
  extra=${spec#*:}
  from=()
  [ -n "${LENET_EXPORT_FROM_RUNS:-}" ] && from=(--from-run "runs/ship-$dataset")
  # shellcheck disable=SC2086
  .venv/bin/lenet-export ship --dataset "$dataset" $extra "${from[@]}"
done
if [ -n "${LENET_EXPORT_SIGNING_KEY:-}" ]; then
  for folder in exported/*/; do
    .venv-sign/bin/lenet-export sign --exported "$folder" --key "$LENET_EXPORT_SIGNING_KEY"
  done
fi
