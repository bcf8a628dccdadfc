#!/usr/bin/env bash
# Installs the system packages Berth's daemon and tests need on Debian 12, idempotently and
# quietly: nothing is downloaded when everything is already there.
set -euo pipefail

packages=(busybox-static iproute2 nftables)

if [ "$(id -u)" -ne 0 ]; then
  echo "Error: deploy/install-deps.sh must run as root (it installs apt packages)" >&2
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Network namespaces are created by the tests under /run/netns.
mkdir -p /run/netns
