"""Registry work beyond push/pull of one tag: pull -a, by digest, distribution inspect, search.

Docker behaviour checked: `pull -a NAME` pulls every tag; `pull NAME@sha256:...`
gets exactly that manifest and can be run by the digest; GET
/distribution/{name}/json (the SDK's get_registry_data) gives the manifest's
descriptor and platforms; `search` on a registry lists its matching
repositories, and with no reachable index it fails with a message. The
`pull` event's actor is the reference pulled (`repo` for `pull -a`,
`repo@sha256:…` by digest), its `name` attribute the repository.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import docker
import pytest

from compat_helpers import Docker
from harness import Daemon, start_registry, unique

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/docker-registry"), reason="needs docker-registry")


def test_pull_all_tags_by_digest_inspect_and_search(docker: Docker, daemon: Daemon, client: docker.DockerClient,
                                                    tmp_path: Path) -> None:
    registry, port = start_registry(daemon.netns, tmp_path)
    repo = f"127.0.0.1:{port}/dist/{unique('bb')}"
    since = str(int(time.time()))
    try:
        for tag in ("1", "2"):
            docker("tag", "busybox", f"{repo}:{tag}")
            docker("push", f"{repo}:{tag}", timeout=60)
            docker("rmi", f"{repo}:{tag}")
        docker("pull", "-a", repo, timeout=60)
        tags = docker("images", repo, "--format", "{{.Tag}}").stdout.split()
        assert sorted(tags) == ["1", "2"]

        # the shared busybox image may carry digests of other tests' registries too: find this repo's
        digests = docker("inspect", "--format", "{{json .RepoDigests}}", f"{repo}:1").stdout
        digest = next((d for d in json.loads(digests) if d.startswith(f"{repo}@sha256:")), "")
        assert digest, digests
        docker("rmi", f"{repo}:1", f"{repo}:2")
        docker("pull", digest, timeout=60)
        assert docker("run", "--rm", digest, "echo", "by-digest").stdout == "by-digest\n"
        pulls = docker("events", "--since", since, "--until", str(int(time.time()) + 1), "--filter", "event=pull",
                       "--format", "{{.Actor.ID}} {{.Actor.Attributes.name}}").stdout.splitlines()
        assert pulls == [f"{repo} {repo}", f"{digest} {repo}"]

        data = client.images.get_registry_data(f"{repo}:2")
        assert data.id == digest.split("@")[1]
        assert data.has_platform("linux/amd64")

        found = docker("search", f"127.0.0.1:{port}/dist", "--format", "{{.Name}}").stdout.split()
        assert repo in found
        missing = docker("search", "busybox", check=False)
        assert missing.returncode != 0 and "no search index is reachable" in missing.stderr
        absent = docker("pull", "-a", f"127.0.0.1:{port}/dist/nothing-here", check=False, timeout=60)
        assert absent.returncode != 0 and "not found" in absent.stderr
    finally:
        registry.kill()
        registry.wait()
