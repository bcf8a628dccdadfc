#!/usr/bin/env bash
# Installs the system packages Berth's daemon and tests need on Debian 12, idempotently and
# quietly: nothing is downloaded when everything is already there.
set -euo pipefail

# docker-registry + apache2-utils (htpasswd): registry pull tests; crun + runc: runtime bench
packages=(busybox-static iproute2 nftables docker-registry apache2-utils crun runc)

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
  # The tests start their own registries; the packaged service is not needed.
  if command -v systemctl >/dev/null && systemctl is-enabled docker-registry >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi

# Network namespaces are created by the tests under /run/netns.
mkdir -p /run/netns
