"""docker-compose (Debian's 1.29, docker-py inside) against coracled.

Two services on a user-defined network: `web` publishes a port, `client`
fetches from `web` by its service name through the network's resolver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from compat_helpers import Docker, env_for
from harness import Daemon, unique

COMPOSE = shutil.which("docker-compose") or ""

COMPOSE_FILE = """\
version: "3.7"
services:
  web:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports:
      - "{port}:80"
    networks: [appnet]
  client:
    image: busybox
    command: ["sh", "-c", "until wget -q -O /tmp/got http://web/; do sleep 0.2; done; cat /tmp/got; exec sleep 300"]
    networks: [appnet]
    depends_on: [web]
networks:
  appnet: {{}}
"""


@pytest.mark.skipif(not COMPOSE, reason="needs docker-compose")
def test_compose_up_ps_logs_exec_down(daemon: Daemon, docker: Docker, tmp_path: Path) -> None:
    project = unique("cp")
    port = 20000 + int.from_bytes(os.urandom(2), "big") % 20000
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE.format(port=port))

    def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([COMPOSE, "-p", project, "--no-ansi", *args], cwd=tmp_path, capture_output=True,
                             text=True, env=env_for(daemon), timeout=60)
        if check and res.returncode:
            raise AssertionError(f"docker-compose {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    try:
        compose("up", "-d")
        ps = compose("ps").stdout
        assert f"{project}_web_1" in ps and f"{project}_client_1" in ps and f"0.0.0.0:{port}->80/tcp" in ps
        assert ps.count(" Up ") == 2
        deadline = time.monotonic() + 15
        while "hello-from-web" not in (logs := compose("logs", "client").stdout):
            assert time.monotonic() < deadline, logs
            time.sleep(0.2)
        out = compose("exec", "-T", "client", "wget", "-q", "-O", "-", "http://web/").stdout
        assert out == "hello-from-web\n"
        res = compose("exec", "-T", "client", "sh", "-c", "exit 4", check=False)
        assert res.returncode == 4
        host_side = daemon.netns_exec("wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/", check=False)
        assert host_side.stdout == "hello-from-web\n"  # the published port, from the daemon's host
        net = json.loads(docker("network", "inspect", f"{project}_appnet").stdout)[0]
        assert net["Labels"]["com.docker.compose.project"] == project
        compose("down", "-t", "1")
        assert docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout.strip() == ""
        assert docker("network", "inspect", f"{project}_appnet", check=False).returncode == 1
    finally:
        compose("down", "-t", "0", check=False)
