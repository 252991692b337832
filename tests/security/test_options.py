"""--ulimit, --sysctl, --group-add, --read-only, --security-opt seccomp=..., --device and their refusals."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
from security_support import Containers

from coracle.errors import InvalidParameter


def test_ulimits_apply_and_refuse_what_the_daemon_cannot_grant(containers: Containers) -> None:
    r = containers.run(["sh", "-c", "ulimit -n; ulimit -Hn"],
                       {"Ulimits": [{"Name": "nofile", "Soft": 256, "Hard": 512}]})
    assert r.output.split() == ["256", "512"]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with pytest.raises(InvalidParameter, match="soft limit must be less than or equal to hard limit"):
        containers.spec(["true"], {"Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 5}]})
    with pytest.raises(InvalidParameter, match="invalid ulimit type: bogus"):
        containers.spec(["true"], {"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]})
    from coracle.runtime import capabilities

    if "CAP_SYS_RESOURCE" not in capabilities.bounding():
        with pytest.raises(InvalidParameter, match="above the daemon's own hard limit"):
            containers.spec(["true"], {"Ulimits": [{"Name": "nofile", "Soft": hard + 1, "Hard": hard + 1}]})


def test_namespaced_sysctls_apply_and_host_wide_ones_are_refused(containers: Containers) -> None:
    host_shmmni = Path("/proc/sys/kernel/shmmni").read_text()
    r = containers.run(["sh", "-c", "cat /proc/sys/kernel/shmmni /proc/sys/net/ipv4/ip_unprivileged_port_start"],
                       {"Sysctls": {"kernel.shmmni": "1234", "net.ipv4.ip_unprivileged_port_start": "80"}})
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["1234", "80"]
    assert Path("/proc/sys/kernel/shmmni").read_text() == host_shmmni
    with pytest.raises(InvalidParameter, match="not namespaced"):
        containers.spec(["true"], {"Sysctls": {"kernel.panic": "1"}})
    with pytest.raises(InvalidParameter, match="does not own"):
        containers.spec(["true"], {"Sysctls": {"net.ipv4.ip_forward": "1"}, "NetworkMode": "host"})


def test_group_add_and_read_only_root(containers: Containers) -> None:
    r = containers.run(["sh", "-c", "id -G; touch /x && echo WROTE; touch /tmp/x && echo TMP; true"],
                       {"GroupAdd": ["1234", "nogroup"], "ReadonlyRootfs": True,
                        }, user="nobody")
    groups = r.output.split("\n")[0].split()
    assert {"65534", "1234"} <= set(groups)
    assert "WROTE" not in r.output and "TMP" not in r.output
    assert "Read-only file system" in r.output


def test_custom_seccomp_profile_from_file_or_json(containers: Containers, tmp_path: Path) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    hc = {"SecurityOpt": [f"seccomp={path}"]}
    r = containers.run(["sh", "-c", "mkdir /made && echo MADE; unshare -U true && echo USERNS"], hc)
    assert "MADE" not in r.output and "Permission denied" in r.output
    assert "USERNS" in r.output  # this profile allows what the default one denies
    assert json.loads(hc["SecurityOpt"][0].split("=", 1)[1]) == profile  # kept in the record, not the path
    as_json = containers.run(["sh", "-c", "mkdir /made && echo MADE"],
                             {"SecurityOpt": ["seccomp=" + json.dumps(profile)]})
    assert "MADE" not in as_json.output
    with pytest.raises(InvalidParameter, match="seccomp profile"):
        containers.spec(["true"], {"SecurityOpt": ["seccomp=" + str(tmp_path / "missing.json")]})
    with pytest.raises(InvalidParameter, match="seccomp profile"):
        containers.spec(["true"], {"SecurityOpt": ['seccomp={"syscalls": []}']})
    with pytest.raises(InvalidParameter, match="invalid --security-opt"):
        containers.spec(["true"], {"SecurityOpt": ["no-new-privileges=maybe"]})


def test_profile_entries_follow_kernel_version_and_architecture(containers: Containers) -> None:
    """Docker's profile format: entries selected by minKernel and by the host's (Go-named) architecture."""
    deny = {"action": "SCMP_ACT_ERRNO", "errnoRet": 13}
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], **deny, "includes": {"minKernel": "99.0"}},
        {"names": ["rmdir"], **deny, "includes": {"minKernel": "3.0"}},
        {"names": ["symlink", "symlinkat"], **deny, "includes": {"arches": ["amd64", "arm64"]}},
        {"names": ["link", "linkat"], **deny, "includes": {"arches": ["s390x"]}},
    ]}
    r = containers.run(["sh", "-c", "mkdir /a && echo MADE; rmdir /a && echo REMOVED; "
                                    "ln -s /a /s && echo SYMLINKED; ln /bin/busybox /h && echo LINKED"],
                       {"SecurityOpt": ["seccomp=" + json.dumps(profile)]})
    assert "MADE" in r.output and "REMOVED" not in r.output
    assert "SYMLINKED" not in r.output and "LINKED" in r.output


def test_devices_that_do_not_exist_are_refused_at_create(containers: Containers) -> None:
    with pytest.raises(InvalidParameter, match="no such file"):
        containers.spec(["true"], {"Devices": [{"PathOnHost": "/dev/does-not-exist", "PathInContainer": "/dev/x",
                                                "CgroupPermissions": "rwm"}]})
    with pytest.raises(InvalidParameter, match="not a device"):
        containers.spec(["true"], {"Devices": [{"PathOnHost": "/etc/hostname", "CgroupPermissions": "rwm"}]})
