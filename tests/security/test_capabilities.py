"""Capabilities, no_new_privs and setuid, seen from inside real containers."""

from __future__ import annotations

import pytest
from security_support import SUID_BUSYBOX, Containers, caps

from coracle.errors import InvalidParameter
from coracle.runtime import capabilities


def mask(names: list[str] | tuple[str, ...]) -> int:
    return sum(1 << capabilities.NAMES.index(n) for n in names)


HOST_BOUNDING = mask(capabilities.bounding())
SHOW = ["grep", "-E", "^(Cap|Uid|NoNewPrivs)", "/proc/self/status"]


def test_root_gets_only_docker_default_capabilities(containers: Containers) -> None:
    r = containers.run(SHOW)
    assert r.exit_code == 0, r.output
    default = mask(capabilities.DEFAULT)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert caps(r.output, field) == default, field
    assert caps(r.output, "CapInh") == 0
    assert caps(r.output, "CapAmb") == 0
    # the clock and the system stay out of reach
    assert not caps(r.output) & mask(["CAP_SYS_TIME", "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_NET_ADMIN"])


def test_cap_add_and_drop(containers: Containers) -> None:
    only = containers.run(SHOW, {"CapDrop": ["ALL"], "CapAdd": ["net_admin"]})
    assert caps(only.output, "CapEff") == caps(only.output, "CapBnd") == mask(["CAP_NET_ADMIN"])
    less = containers.run(SHOW, {"CapDrop": ["CAP_CHOWN", "kill"]})
    assert caps(less.output) == mask(capabilities.DEFAULT) & ~mask(["CAP_CHOWN", "CAP_KILL"])
    everything = containers.run(SHOW, {"CapAdd": ["ALL"], "CapDrop": ["SYS_ADMIN"]})
    assert caps(everything.output) == HOST_BOUNDING & ~mask(["CAP_SYS_ADMIN"])


def test_dropped_net_raw_forbids_raw_sockets(containers: Containers) -> None:
    ping = ["sh", "-c", "ip link set lo up && ping -c 1 -W 2 127.0.0.1"]
    allowed = containers.run(ping, {"CapAdd": ["NET_ADMIN"]})
    assert allowed.exit_code == 0, allowed.output
    assert "1 packets received" in allowed.output
    dropped = containers.run(ping, {"CapAdd": ["NET_ADMIN"], "CapDrop": ["NET_RAW"]})
    assert dropped.exit_code != 0
    assert "permission denied" in dropped.output.lower()


def test_non_root_user_has_no_effective_capabilities(containers: Containers) -> None:
    r = containers.run(SHOW, {"CapAdd": ["NET_ADMIN"]}, user="nobody")
    assert r.exit_code == 0, r.output
    assert caps(r.output, "CapEff") == caps(r.output, "CapPrm") == caps(r.output, "CapAmb") == 0
    assert caps(r.output, "CapBnd") == mask([*capabilities.DEFAULT, "CAP_NET_ADMIN"])


def test_setuid_binaries_work_by_default_but_not_under_no_new_privileges(containers: Containers) -> None:
    """Docker keeps setuid working unless no-new-privileges is asked for (per container or daemon-wide)."""
    probe = [SUID_BUSYBOX, *SHOW]
    default = containers.run(probe, user="nobody")
    assert default.exit_code == 0, default.output
    assert "Uid:\t65534\t0\t" in default.output  # the setuid bit made it root...
    assert caps(default.output) == mask(capabilities.DEFAULT)  # ...but still boxed in by the bounding set
    for hc, daemon_flag in (({"SecurityOpt": ["no-new-privileges"]}, False),
                            ({"SecurityOpt": ["no-new-privileges:true"]}, False),
                            ({}, True)):
        r = containers.run(probe, hc, user="nobody", daemon_no_new_privs=daemon_flag)
        assert r.exit_code == 0, r.output
        assert "Uid:\t65534\t65534\t" in r.output
        assert caps(r.output) == 0
        assert "NoNewPrivs:\t1" in r.output
    opted_out = containers.run(probe, {"SecurityOpt": ["no-new-privileges=false"]}, user="nobody",
                               daemon_no_new_privs=True)
    assert "Uid:\t65534\t0\t" in opted_out.output


def test_privileged_gets_every_capability_the_host_allows_and_can_mount(containers: Containers) -> None:
    r = containers.run(["sh", "-c", "grep -E '^Cap(Eff|Bnd)|^Seccomp:' /proc/self/status; "
                                    "mkdir /mnt && mount -t tmpfs t /mnt && echo mounted; "
                                    "mkdir /sys/fs/cgroup/pids/sub && echo cgroups-writable; "
                                    "test -e /dev/loop-control && echo hostdevs"],
                       {"Privileged": True})
    assert r.exit_code == 0, r.output
    assert caps(r.output) == caps(r.output, "CapBnd") == HOST_BOUNDING
    assert "Seccomp:\t0" in r.output
    assert "mounted" in r.output
    assert "cgroups-writable" in r.output
    assert "hostdevs" in r.output


def test_bad_capability_requests_are_refused_at_create(containers: Containers) -> None:
    with pytest.raises(InvalidParameter, match="unknown capability"):
        containers.spec(["true"], {"CapAdd": ["CAP_FLY"]})
    absent = [n for n in capabilities.NAMES[:capabilities.NAMES.index("CAP_AUDIT_READ") + 1]
              if n not in capabilities.bounding()]
    if absent:  # e.g. hosts whose bounding set lacks CAP_SYS_RESOURCE
        with pytest.raises(InvalidParameter, match=absent[0]):
            containers.spec(["true"], {"CapAdd": [absent[0]]})
