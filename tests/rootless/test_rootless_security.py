"""A rootless daemon never does more than its user can: the attacks of a container's root fail."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from rootless_support import RootlessUser

# makes throwaway users with subordinate ids: the root tier
pytestmark = pytest.mark.root


def test_container_root_cannot_read_another_users_file(user: RootlessUser) -> None:
    secret_dir = user.root / "secret"
    secret_dir.mkdir(mode=0o755)
    (secret_dir / "key").write_text("root's secret\n")
    os.chmod(secret_dir / "key", 0o600)  # root's, like /etc/shadow
    res = user.docker("run", "--rm", "-v", f"{secret_dir}:/mnt", "busybox", "cat", "/mnt/key", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    assert "secret" not in res.stdout
    # not even by taking the file's ownership first
    res = user.docker("run", "--rm", "-v", f"{secret_dir}:/mnt", "busybox", "sh", "-c",
                      "chown 0 /mnt/key; chmod 644 /mnt/key; cat /mnt/key", check=False)
    assert "secret" not in res.stdout


def test_container_root_cannot_bind_a_privileged_host_port(user: RootlessUser) -> None:
    res = user.docker("run", "--rm", "--network", "host", "busybox", "nc", "-l", "-p", "80", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    refused = user.docker("run", "--rm", "-p", "80:80", "busybox", "true", check=False)
    assert refused.returncode != 0 and "host port 80 is privileged" in refused.stderr


def test_container_root_cannot_signal_another_users_host_process(user: RootlessUser) -> None:
    victim = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "sleep", "300"])
    try:
        res = user.docker("run", "--rm", "--pid", "host", "busybox", "kill", "-9", str(victim.pid), check=False)
        assert res.returncode != 0 and "Operation not permitted" in res.stderr
        assert victim.poll() is None
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
