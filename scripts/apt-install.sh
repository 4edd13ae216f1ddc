#!/usr/bin/env bash
# apt-get install PACKAGE..., as scripts/install.sh uses it: another apt or dpkg (an unattended upgrade) may
# hold the dpkg lock; wait for it, up to $APT_LOCK_TIMEOUT seconds (default 300), and say so, instead of failing
# at once (apt's DPkg::Lock::Timeout).
set -euo pipefail
TIMEOUT=${APT_LOCK_TIMEOUT:-300}
echo "installing $* (apt)"
if command -v fuser >/dev/null && fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; then
  echo "waiting for another apt/dpkg process to release its lock (up to $TIMEOUT s)"
fi
LOCK=(-o "DPkg::Lock::Timeout=$TIMEOUT")
apt-get "${LOCK[@]}" update -qq
DEBIAN_FRONTEND=noninteractive apt-get "${LOCK[@]}" install -y -qq "$@"
