#!/usr/bin/env bash
# Installs Berth on a real server: builds (or takes) the release binaries, installs them under
# /usr/local/bin, installs the systemd unit and starts berthd. Run as root from a checkout.
#   deploy/install.sh            build with cargo, install, enable and start
#   BERTH_BIN_DIR=dir deploy/install.sh   install prebuilt binaries from dir instead
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "Error: deploy/install.sh must run as root" >&2
  exit 1
fi

bash deploy/install-deps.sh

bin_dir=${BERTH_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  cargo build --release --workspace --bins
  bin_dir=target/release
fi
# berth-runtime beside berthd is its container setup helper and supervisor (smaller per
# container than a fork of berthd); berthd falls back to itself without it.
for bin in berth berthd berth-runtime; do
  [ -x "$bin_dir/$bin" ] || { echo "Error: $bin_dir/$bin not found" >&2; exit 1; }
  install -m 0755 "$bin_dir/$bin" /usr/local/bin/$bin
done
install -d -m 0755 /usr/local/share/doc/berth
install -m 0644 README.md /usr/local/share/doc/berth/README.md
install -m 0644 deploy/berthd.service /etc/systemd/system/berthd.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now berthd
  echo "berthd installed and started; next: berth swarm init (first manager) or berth swarm join"
else
  echo "berthd installed; systemd is not running here, start it with: berthd --data-dir /var/lib/berth"
fi
