#!/bin/bash
# Install coracle and show containers in all four network modes (as root).
#
# The daemon runs inside its own network namespace ("coracle-demo"), which plays
# the host, with a second namespace ("coracle-lan") as a machine on its LAN: the
# demo shows NAT and published ports without touching this machine's network.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

HOSTNS=coracle-demo
LANNS=coracle-lan
ROOT=/tmp/coracle-demo
SOCK=$ROOT/exec/coracle.sock
export CORACLE_HOST=unix://$SOCK
PY=.venv/bin/python

cleanup() {
    set +e
    if [ -S "$SOCK" ]; then
        coracle rm -f $(coracle ps -aq) >/dev/null 2>&1
        coracle network rm demo-net >/dev/null 2>&1
    fi
    [ -f $ROOT/coracled.pid ] && kill "$(cat $ROOT/coracled.pid)" 2>/dev/null
    sleep 0.3
    # the keeper first: it would restart the monitor
    for pidfile in keeper.pid monitor.pid; do
        [ -f $ROOT/exec/monitor/$pidfile ] && kill -9 "$(cat $ROOT/exec/monitor/$pidfile)" 2>/dev/null
    done
    ip netns del $HOSTNS 2>/dev/null
    ip netns del $LANNS 2>/dev/null
    for d in /sys/fs/cgroup/*/coracle-demo; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done
    rm -rf $ROOT
}
trap cleanup EXIT
cleanup
mkdir -p $ROOT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

step "a throwaway 'host' namespace with a LAN neighbour (192.0.2.2)"
ip netns add $HOSTNS
ip netns add $LANNS
ip link add demo-uplink netns $HOSTNS type veth peer name demo-lan netns $LANNS
ip -n $HOSTNS addr add 192.0.2.1/24 dev demo-uplink
ip -n $LANNS addr add 192.0.2.2/24 dev demo-lan
for ns in $HOSTNS $LANNS; do ip -n $ns link set lo up; done
ip -n $HOSTNS link set demo-uplink up
ip -n $LANNS link set demo-lan up
ip -n $HOSTNS route add default via 192.0.2.2

step "start coracled"
nsenter --net=/run/netns/$HOSTNS $PY -m coracle.daemon --data-root $ROOT/data --exec-root $ROOT/exec \
    -H "unix://$SOCK" --cgroup-parent coracle-demo --pidfile $ROOT/coracled.pid >$ROOT/coracled.log 2>&1 &
for _ in $(seq 100); do coracle version >/dev/null 2>&1 && break; sleep 0.1; done
coracle version >/dev/null || { cat $ROOT/coracled.log; exit 1; }
show coracle version

step "none: own network namespace, only loopback"
show coracle run --rm --network none --hostname lonely busybox sh -c 'echo "hostname: $(hostname)"; echo "PID 1: $(cat /proc/1/cmdline | tr "\0" " ")"; ip -o -4 addr'

step "host: the host's interfaces (here: the demo host namespace)"
show coracle run --rm --network host busybox sh -c 'ip -o -4 addr | grep -v " lo "'

step "bridge: veth + bridge coracle0, address from IPAM, NAT to the LAN"
ip netns exec $LANNS busybox nc -ll -p 7001 -e /bin/busybox sh -c 'echo hello from the LAN' >/dev/null 2>&1 &
show coracle run --rm busybox sh -c 'ip -o -4 addr show eth0; ip route | head -1; echo "reach the LAN:"; nc 192.0.2.2 7001 </dev/null'

step "published port: a web server in a container, reached from the LAN through the host's address"
show coracle run -d --name web -p 8080:80 busybox sh -c 'echo "<h1>served by coracle</h1>" > /index.html; httpd -f -p 80 -h /'
sleep 0.3
show ip netns exec $LANNS busybox wget -q -O - http://192.0.2.1:8080/

step "container:web: a second container in web's network namespace (same IP, same loopback)"
show coracle run --rm --network container:web busybox sh -c 'ip -o -4 addr show eth0; wget -q -O - http://127.0.0.1/'

step "user-defined network: containers find each other by name"
show coracle network create demo-net
show coracle run -d --name db --network demo-net busybox sh -c 'echo "db answers" > /index.html; httpd -f -p 80 -h /'
sleep 0.3
show coracle run --rm --network demo-net busybox sh -c 'ping -c1 -W1 db | head -1; wget -q -O - http://db/'

step "limits: 64 MiB memory, 10 processes"
show coracle run --rm --memory 64m --pids-limit 10 busybox sh -c 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || true; for i in $(seq 20); do sleep 5 & done 2>&1 | tail -1; echo "forks were capped"'

step "ps"
show coracle ps

step "done: cleaning up"
