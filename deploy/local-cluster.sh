#!/usr/bin/env bash
# A local Berth cluster on one machine: test hosts in network namespaces joined by a bridge
# that lives in its own namespace (nothing is added to the machine's own network), one berthd
# per host, the busybox test image loaded on every node and a replicated service deployed.
#
#   deploy/local-cluster.sh up     [MANAGERS] [WORKERS]   (default 1 manager, 2 workers)
#   deploy/local-cluster.sh status
#   deploy/local-cluster.sh down
#   deploy/local-cluster.sh berth NODE ARGS...          (run the CLI against node NODE: h0, h1, ...)
#
# Needs root and the binaries from `cargo build --workspace --bins` (BERTH_BIN overrides the
# directory). State lives under BERTH_CLUSTER_DIR (default /tmp/berth-local-cluster); a second
# cluster beside the first needs its own BERTH_CLUSTER_PREFIX (namespace, interface and cgroup
# prefix, default blc) and BERTH_CLUSTER_SUBNET (its /24 as three octets, default 10.199.77).
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
bin=${BERTH_BIN:-$root_dir/target/debug}
dir=${BERTH_CLUSTER_DIR:-/tmp/berth-local-cluster}
prefix=${BERTH_CLUSTER_PREFIX:-blc}
subnet=${BERTH_CLUSTER_SUBNET:-10.199.77}
port=4377
service=${BERTH_SERVICE:-web}
replicas=${BERTH_REPLICAS:-6}

die() { echo "Error: $*" >&2; exit 1; }
[[ $prefix =~ ^[a-z][a-z0-9]{0,5}$ ]] || die "BERTH_CLUSTER_PREFIX must be 1-6 lowercase letters or digits, got '$prefix'"
[[ $subnet =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "BERTH_CLUSTER_SUBNET must be three octets like 10.199.77, got '$subnet'"
[ "$(id -u)" -eq 0 ] || die "local-cluster.sh must run as root (network namespaces, containers)"
for b in berth berthd berth-test-image; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing: run cargo build --workspace --bins first"
done

hosts() { cat "$dir/hosts" 2>/dev/null || true; }
sock() { echo "$dir/$1/berthd.sock"; }
# nsenter joins only the network namespace; `ip netns exec` would also remount /sys and hide
# the cgroup hierarchies the runtime needs.
in_host() { local h=$1; shift; nsenter --net="/run/netns/$prefix-$h" "$@"; }
berth_on() { local h=$1; shift; in_host "$h" "$bin/berth" -H "unix://$(sock "$h")" "$@"; }

up() {
  local managers=${1:-1} workers=${2:-2} n i h
  n=$((managers + workers))
  [ ! -e "$dir/hosts" ] || die "a cluster is already up in $dir: run '$0 down' first"
  mkdir -p "$dir"
  ip netns add "$prefix-sw"
  ip -n "$prefix-sw" link add "${prefix}br" type bridge
  ip -n "$prefix-sw" link set "${prefix}br" up
  for ((i = 0; i < n; i++)); do
    h=h$i
    echo "$h" >> "$dir/hosts"
    ip netns add "$prefix-$h"
    ip -n "$prefix-sw" link add "${prefix}s$i" type veth peer name eth0 netns "$prefix-$h"
    ip -n "$prefix-sw" link set "${prefix}s$i" master "${prefix}br" up
    ip -n "$prefix-$h" addr add "$subnet.$((10 + i))/24" dev eth0
    ip -n "$prefix-$h" link set eth0 up
    ip -n "$prefix-$h" link set lo up
    mkdir -p "$dir/$h"
    in_host "$h" "$bin/berthd" --data-dir "$dir/$h/state" --socket "$(sock "$h")" \
      --cgroup-parent "berth-$prefix-$h" --hostname "node-$i" > "$dir/$h/berthd.log" 2>&1 &
    echo $! > "$dir/$h/berthd.pid"
  done
  for h in $(hosts); do
    for _ in $(seq 100); do berth_on "$h" info >/dev/null 2>&1 && break; sleep 0.1; done
    berth_on "$h" info >/dev/null || die "berthd on $h did not start; see $dir/$h/berthd.log"
  done
  local addr0="$subnet.10:$port"
  berth_on h0 swarm init --advertise-addr "$addr0" --listen-addr "$addr0"
  local mtoken wtoken
  mtoken=$(berth_on h0 swarm join-token -q manager)
  wtoken=$(berth_on h0 swarm join-token -q worker)
  for ((i = 1; i < n; i++)); do
    local addr="$subnet.$((10 + i)):$port" token=$wtoken
    [ "$i" -lt "$managers" ] && token=$mtoken
    berth_on "h$i" swarm join --token "$token" --advertise-addr "$addr" --listen-addr "$addr" "$addr0"
  done
  "$bin/berth-test-image" --format docker-archive --out "$dir/busybox.tar" --ref berth-test/busybox:latest >/dev/null
  for h in $(hosts); do berth_on "$h" image load -i "$dir/busybox.tar"; done
  berth_on h0 service create --name "$service" --replicas "$replicas" --update-monitor 1s \
    berth-test/busybox:latest sh -c 'trap "exit 0" TERM; while true; do sleep 1; done'
  status
}

status() {
  [ -e "$dir/hosts" ] || die "no cluster is up in $dir"
  echo "== berth node ls"; berth_on h0 node ls
  echo "== berth service ls"; berth_on h0 service ls
  echo "== berth service ps $service"; berth_on h0 service ps "$service" || true
}

down() {
  local h
  for h in $(hosts); do
    berth_on "$h" service rm "$service" >/dev/null 2>&1 || true
  done
  sleep 1
  for h in $(hosts); do
    # Containers first (they outlive berthd by design), then the daemon.
    for c in $(berth_on "$h" ps -aq 2>/dev/null); do berth_on "$h" rm -f "$c" >/dev/null 2>&1 || true; done
    [ -f "$dir/$h/berthd.pid" ] && kill "$(cat "$dir/$h/berthd.pid")" 2>/dev/null || true
  done
  sleep 1
  for h in $(hosts); do
    # Anything left in the host's namespace goes too.
    for pid in $(ip netns pids "$prefix-$h" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$prefix-$h" 2>/dev/null || true
    # The node's (now empty) cgroup parents, in every hierarchy.
    for cg in /sys/fs/cgroup/*/"berth-$prefix-$h" /sys/fs/cgroup/"berth-$prefix-$h"; do
      [ -d "$cg" ] && rmdir "$cg" 2>/dev/null || true
    done
  done
  ip netns del "$prefix-sw" 2>/dev/null || true
  rm -rf "$dir"
  echo "cluster removed"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) status ;;
  down) down ;;
  berth) shift; h=$1; shift; berth_on "$h" "$@" ;;
  *) echo "usage: $0 up [MANAGERS] [WORKERS] | status | down | berth NODE ARGS..." >&2; exit 2 ;;
esac
