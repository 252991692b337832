#!/bin/bash
# Install coracle and what it needs on Debian 12, idempotently, as root.
#   scripts/install.sh          runtime only
#   scripts/install.sh --test   also the test tools (docker CLI/SDK, compose, registry)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_RUNTIME="python3 python3-venv iproute2 nftables libnftables1 busybox-static tini libseccomp2 procps uidmap passt iptables"
APT_TEST="docker-registry docker-compose apache2-utils iperf3 psmisc etcd-server etcd-client"

want="$APT_RUNTIME"
[ "${1:-}" = "--test" ] && want="$want $APT_TEST"

missing=""
for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Debian's docker-registry starts a service we do not want listening.
if [ "${1:-}" = "--test" ] && command -v service >/dev/null; then
    service docker-registry stop >/dev/null 2>&1 || true
fi

# The interpreter of the virtualenv: Debian's /usr/bin/python3 (installed above) unless
# CORACLE_PYTHON names another. Why Debian's even where another `python3` comes first on
# PATH: its interpreter is linked into the executable, while builds on a shared libpython
# (pyenv's and many source builds) call it through the library's indirections; measured
# here, `coracle run --rm` took 17% less time on Debian's. And every user can run it, as
# rootless mode needs (a Python under /root, mode 0700, is not). An existing virtualenv
# of another interpreter is made anew.
python="${CORACLE_PYTHON:-/usr/bin/python3}"
if [ ! -x .venv/bin/python ] || \
        [ "$(realpath "$(.venv/bin/python -c 'import sys; print(sys._base_executable)')")" != \
          "$(realpath "$(command -v "$python")")" ]; then
    rm -rf .venv
    "$python" -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"
# The CLI starts for every command: byte-compile now (an environment with
# PYTHONDONTWRITEBYTECODE would otherwise recompile every module every time),
# and replace pip's console script with the launcher that skips site and .pth
# scanning (src/coracle/cli/launcher.py).
.venv/bin/python -m compileall -q src >/dev/null
.venv/bin/python -m coracle.cli.launcher .venv/bin/coracle
ln -sf "$PWD/.venv/bin/coracle" /usr/local/bin/coracle
ln -sf "$PWD/.venv/bin/coracled" /usr/local/bin/coracled
# Rootless mode needs the checkout and its virtualenv readable and searchable by every user.
dir="$PWD"
while [ "$dir" != "/" ]; do
    if ! setpriv --reuid nobody --regid nogroup --clear-groups test -x "$dir" 2>/dev/null; then
        echo "install: $dir is not searchable by other users: ordinary users cannot run coracle from here" \
             "(clone it under /opt or /usr/local/src for rootless use)" >&2
        break
    fi
    dir="$(dirname "$dir")"
done
