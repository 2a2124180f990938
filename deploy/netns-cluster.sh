#!/usr/bin/env bash
# A multi-host exo-spec cluster on one Linux machine: one network namespace per
# host, joined by a bridge, so mDNS multicast, gRPC and the mx.distributed ring
# cross real (virtual) network interfaces. Needs root.
#
#   deploy/netns-cluster.sh up N      make N hosts: <prefix>0 .. <prefix>N-1, 10.77.0.1 .. N
#   deploy/netns-cluster.sh start N   up, then a coordinator on host 0 and workers on the rest
#   deploy/netns-cluster.sh down      stop everything in the hosts and remove them
#
# Environment: EXO_NETNS_PREFIX (default exo-h), EXO_NETNS_SUBNET (default 10.77.0),
# EXO_SPEC (the exo-spec command, default: the one on PATH), EXO_NETNS_LOGS
# (default /tmp/exo-spec-netns), WORKER_MEMORY_GB (default: unset, the worker's own).
# The root namespace reaches the hosts through the bridge at <subnet>.254.
set -euo pipefail

PREFIX=${EXO_NETNS_PREFIX:-exo-h}
SUBNET=${EXO_NETNS_SUBNET:-10.77.0}
BRIDGE=${PREFIX}-br
LOGS=${EXO_NETNS_LOGS:-/tmp/exo-spec-netns}
EXO_SPEC=${EXO_SPEC:-$(command -v exo-spec || true)}
COORDINATOR_PORT=50151

die() { echo "netns-cluster: $*" >&2; exit 1; }

hosts() { ip netns list | awk '{print $1}' | grep -E "^${PREFIX}[0-9]+$" | sort -V || true; }

up() {
  local n=$1
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 200 ]] || die "N must be 1..200, got '$n'"
  ip link add "$BRIDGE" type bridge 2>/dev/null || die "cannot make bridge $BRIDGE (root? exists already? try down)"
  # mDNS uses 224.0.0.251, which a bridge floods anyway; no snooping keeps it simple.
  echo 0 > "/sys/class/net/$BRIDGE/bridge/multicast_snooping"
  ip addr add "$SUBNET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for ((i = 0; i < n; i++)); do
    local ns=$PREFIX$i veth=${PREFIX}v$i
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up multicast on
    ip -n "$ns" route add default via "$SUBNET.254"
  done
  echo "netns-cluster: $n hosts ${PREFIX}0..${PREFIX}$((n - 1)) at $SUBNET.1..$SUBNET.$n"
}

start() {
  local n=$1
  [[ -n $EXO_SPEC ]] || die "exo-spec is not on PATH: activate its virtualenv or set EXO_SPEC"
  [[ $n -ge 2 ]] || die "start needs N >= 2: a coordinator host and at least one worker host"
  up "$n"
  mkdir -p "$LOGS"
  # The hosts share this machine's files: one cluster key (made now if there is none)
  # at the default path, or at $EXO_SPEC_KEY_FILE, serves them all.
  "$EXO_SPEC" key >/dev/null
  ip netns exec "${PREFIX}0" "$EXO_SPEC" coordinator --host "$SUBNET.1" \
    --port "$COORDINATOR_PORT" >"$LOGS/coordinator.log" 2>&1 &
  for ((i = 1; i < n; i++)); do
    ip netns exec "$PREFIX$i" "$EXO_SPEC" worker --host "$SUBNET.$((i + 1))" --node-id "host$i" \
      ${WORKER_MEMORY_GB:+--memory-gb "$WORKER_MEMORY_GB"} >"$LOGS/worker$i.log" 2>&1 &
  done
  echo "netns-cluster: coordinator at $SUBNET.1:$COORDINATOR_PORT, logs in $LOGS"
  echo "  exo-spec nodes --coordinator $SUBNET.1:$COORDINATOR_PORT"
}

down() {
  local ns
  for ns in $(hosts); do
    ip netns pids "$ns" | xargs -r kill 2>/dev/null || true
  done
  sleep 0.5
  for ns in $(hosts); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

case ${1:-} in
  up) up "${2:?usage: $0 up N}" ;;
  start) start "${2:?usage: $0 start N}" ;;
  down) down ;;
  *) die "usage: $0 up N | start N | down" ;;
esac
