"""The security defaults through the whole stack: Docker SDK -> coracled -> runtime."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import APIError

from coracle.runtime import capabilities
from harness import exec_output
from security_support import run_script

TRY_MOUNT = "grep -E '^CapEff|^Seccomp:' /proc/self/status; mkdir /m; mount -t tmpfs t /m && echo MOUNTED"


def mask(names: list[str] | tuple[str, ...]) -> int:
    return sum(1 << capabilities.NAMES.index(n) for n in names)


def cap_eff(text: str) -> int:
    return int(text.split("CapEff:")[1].split()[0], 16)


def test_default_container_is_confined(client: docker.DockerClient) -> None:
    out = run_script(client, TRY_MOUNT)
    assert cap_eff(out) == mask(capabilities.DEFAULT)
    assert "Seccomp:\t2" in out
    assert "MOUNTED" not in out


def test_privileged_starts_with_what_the_host_allows(client: docker.DockerClient) -> None:
    out = run_script(client, TRY_MOUNT,
              privileged=True)
    assert cap_eff(out) == mask(capabilities.bounding())
    assert "Seccomp:\t0" in out
    assert "MOUNTED" in out


def test_exec_gets_the_container_confinement(client: docker.DockerClient) -> None:
    ctr = client.containers.run("busybox", "sleep 60", detach=True)
    plain = exec_output(ctr, "grep -E '^CapEff|^Seccomp:' /proc/self/status").decode()
    assert cap_eff(plain) == mask(capabilities.DEFAULT)
    assert "Seccomp:\t2" in plain
    privileged = exec_output(ctr, "grep CapEff /proc/self/status", privileged=True).decode()
    assert cap_eff(privileged) == mask(capabilities.bounding())


def test_bad_requests_are_refused_at_create_and_leave_nothing(client: docker.DockerClient) -> None:
    before = len(client.containers.list(all=True))
    bad: list[dict[str, Any]] = [{"sysctls": {"kernel.panic": "1"}},
           {"cap_add": ["CAP_FLY"]},
           {"security_opt": ["seccomp=/does/not/exist.json"]},
           {"devices": ["/dev/does-not-exist:/dev/x:rwm"]},
           {"ulimits": [docker.types.Ulimit(name="nofile", soft=2, hard=1)]}]
    for kwargs in bad:
        with pytest.raises(APIError) as err:
            client.containers.create("busybox", "true", **kwargs)
        assert err.value.status_code == 400, kwargs
    assert len(client.containers.list(all=True)) == before


def test_device_flag_grants_one_host_device(client: docker.DockerClient, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"granted-disk" + bytes(4096))
    dev = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        out = run_script(client, "head -c 12 /dev/xvdb; echo; head -c 1 /dev/kmsg || echo NO-KMSG",
                  devices=[f"{dev}:/dev/xvdb:r"])
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert "granted-disk" in out
    assert "NO-KMSG" in out
