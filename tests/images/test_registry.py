"""pull/push against a real registry (docker-registry, the distribution server) on loopback."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

from coracle.errors import InvalidParameter, NotFound
from coracle.images.registry import Unauthorized
from coracle.images.content import Image, ImageStore

REGISTRY = "/usr/bin/docker-registry"
pytestmark = pytest.mark.skipif(not os.path.exists(REGISTRY), reason="needs Debian's docker-registry")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One docker-registry process; start() may be called again after kill() (same storage)."""

    def __init__(self, root: Path, htpasswd: str | None = None) -> None:
        self.root, self.port = root, free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.auth_header: dict[str, str] = {}
        auth = ""
        if htpasswd:
            (root / "htpasswd").write_text(htpasswd)
            auth = f"auth:\n  htpasswd:\n    realm: coracle-test\n    path: {root / 'htpasswd'}\n"
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n  secret: test-secret\n{auth}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.root / "log", "ab") as log:
            self.proc = subprocess.Popen([REGISTRY, "serve", str(self.root / "config.yml")],
                                         stdout=subprocess.DEVNULL, stderr=log)
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.root / "log").read_text()) from None
                time.sleep(0.05)
        raise RuntimeError("the registry did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        req = urllib.request.Request(f"http://{self.host}{path}", data=body, method=method,
                                     headers={**self.auth_header, **(headers or {})})
        return urllib.request.urlopen(req, timeout=30)

    def upload(self, repo: str, data: bytes) -> str:
        """Put a blob with a plain HTTP client (an independent witness of the protocol)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self.call("POST", f"/v2/{repo}/blobs/uploads/", b"") as resp:
            location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        path = location.split(self.host, 1)[-1] + f"{sep}digest={digest}"
        self.call("PUT", path, data, {"Content-Type": "application/octet-stream"}).close()
        return digest


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "registry").mkdir()
    server = Server(tmp_path / "registry")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "auth-registry").mkdir()
    line = subprocess.run(["htpasswd", "-Bbn", "alice", "s3cret"], check=True, capture_output=True,
                          text=True).stdout
    server = Server(tmp_path / "auth-registry", htpasswd=line)
    server.auth_header = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
    server.start()
    try:
        yield server
    finally:
        server.kill()


def busybox_plus_layer(images: ImageStore, tmp_path: Path, name: str) -> Image:
    """The built-in busybox with one more layer (/hello) committed on top."""
    upper = tmp_path / "upper-extra"
    upper.mkdir()
    (upper / "hello").write_text("hello from the registry\n")
    base = images.resolve("busybox")
    return images.commit(str(upper), base, {**base.config, "Cmd": ["cat", "/hello"]}, name)


def test_push_then_pull_into_a_clean_store(images, make_store, registry, tmp_path, in_overlay):
    name = f"{registry.host}/coracle/bb:1"
    image = busybox_plus_layer(images, tmp_path, name)
    pushed: list[dict] = []
    digest = images.push(name, None, pushed.append)
    assert pushed[0] == {"status": f"The push refers to repository [{registry.host}/coracle/bb]"}
    assert sum(m.get("status") == "Pushed" for m in pushed) == 2
    assert pushed[-1]["aux"] == {"Tag": "1", "Digest": digest, "Size": pushed[-1]["aux"]["Size"]}
    assert images.resolve(name).repo_digests == [f"{registry.host}/coracle/bb@{digest}"]

    # What the registry holds, read back with a plain HTTP client.
    with registry.call("GET", "/v2/coracle/bb/manifests/1",
                       headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}) as resp:
        body = resp.read()
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    manifest = json.loads(body)
    assert manifest["config"]["digest"] == image.id
    for layer in manifest["layers"]:
        with registry.call("GET", f"/v2/coracle/bb/blobs/{layer['digest']}") as resp:
            assert "sha256:" + hashlib.sha256(resp.read()).hexdigest() == layer["digest"]

    clean = make_store("clean")
    progress: list[dict] = []
    pulled = clean.pull(name, None, progress.append)
    assert pulled.id == image.id and pulled.layers == image.layers
    assert pulled.repo_digests == [f"{registry.host}/coracle/bb@{digest}"]
    statuses = [m["status"] for m in progress]
    assert statuses[0] == "Pulling from coracle/bb"
    assert statuses.count("Pull complete") == 2
    assert any(m["status"] == "Downloading" and m["progressDetail"]["total"] > 0 for m in progress)
    assert statuses[-2:] == [f"Digest: {digest}", f"Status: Downloaded newer image for {name}"]
    done = in_overlay(clean.layer_dirs(pulled), "cat /hello; busybox true && echo ok")
    assert done.stdout == "hello from the registry\nok\n", done.stderr

    again: list[dict] = []
    clean.pull(name, None, again.append)
    assert [m["status"] for m in again].count("Already exists") == 2
    assert again[-1]["status"] == f"Status: Image is up to date for {name}"
    assert clean.pull(f"{registry.host}/coracle/bb@{digest}").id == image.id
    assert clean.remove(name) == [{"Untagged": name}, {"Untagged": f"{registry.host}/coracle/bb@{digest}"},
                                  {"Deleted": image.id}, *({"Deleted": d} for d in image.layers)]
    assert clean.list() == [] and list(clean.layers_dir.iterdir()) == []


def test_pull_picks_linux_amd64_from_an_index(images, make_store, registry, tmp_path):
    amd = busybox_plus_layer(images, tmp_path, f"{registry.host}/multi:amd64")
    amd_digest = images.push(f"{registry.host}/multi:amd64")
    images.tag("busybox", f"{registry.host}/multi", "other")
    other_digest = images.push(f"{registry.host}/multi:other")
    sizes = {}
    for ref, d in (("amd64", amd_digest), ("other", other_digest)):
        with registry.call("GET", f"/v2/multi/manifests/{d}",
                           headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}) as resp:
            sizes[ref] = len(resp.read())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": other_digest,
         "size": sizes["other"], "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": amd_digest,
         "size": sizes["amd64"], "platform": {"os": "linux", "architecture": "amd64"}}]}
    body = json.dumps(index).encode()
    registry.call("PUT", "/v2/multi/manifests/all", body,
                  {"Content-Type": "application/vnd.oci.image.index.v1+json"}).close()
    pulled = make_store("clean").pull(f"{registry.host}/multi:all")
    assert pulled.id == amd.id
    assert pulled.repo_digests == [f"{registry.host}/multi@sha256:{hashlib.sha256(body).hexdigest()}"]


def test_unknown_image_is_not_found(images, registry):
    with pytest.raises(NotFound, match="manifest unknown"):
        images.pull(f"{registry.host}/nothing/here:1")


def test_htpasswd_auth(images, make_store, auth_registry, tmp_path):
    name = f"{auth_registry.host}/private/bb:1"
    busybox_plus_layer(images, tmp_path, name)
    with pytest.raises(Unauthorized, match="no basic auth credentials"):
        images.push(name, None, None)
    with pytest.raises(Unauthorized, match="authentication required"):
        images.push(name, {"username": "alice", "password": "wrong"}, None)
    with pytest.raises(Unauthorized):
        images.login({"username": "alice", "password": "wrong", "serveraddress": auth_registry.host})
    images.login({"username": "alice", "password": "s3cret", "serveraddress": auth_registry.host})
    images.push(name, {"username": "alice", "password": "s3cret"}, None)
    clean = make_store("clean")
    with pytest.raises(Unauthorized):
        clean.pull(name, {"username": "alice", "password": "nope"}, None)
    assert clean.list() == []
    auth = {"auth": base64.b64encode(b"alice:s3cret").decode()}
    assert clean.pull(name, auth, None).id == images.resolve(name).id


def put_image(registry: Server, repo: str, tar: bytes, gzipped: bool = False) -> str:
    """An image of one layer (the tar, gzipped or not), put by hand; returns the config digest."""
    layer = gzip.compress(tar) if gzipped else tar
    registry.upload(repo, layer)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_digest = registry.upload(repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzipped else ""),
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": len(layer)}]}).encode()
    registry.call("PUT", f"/v2/{repo}/manifests/1", manifest,
                  {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).close()
    return config_digest


def one_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def big_image(registry: Server, repo: str, size: int) -> str:
    """An image with one large, incompressible, uncompressed layer, put by hand."""
    return put_image(registry, repo, one_file_tar("big.bin", os.urandom(size)))


def assert_consistent(store: ImageStore) -> None:
    """Every blob hashes to its name; every layer directory has a record; nothing staged."""
    for digest in store.blobs.digests():
        assert "sha256:" + hashlib.sha256(store.blobs.read(digest)).hexdigest() == digest
    for entry in store.layers_dir.iterdir():
        assert store.has_layer("sha256:" + entry.name), entry
    assert list(store.blobs.tmp.iterdir()) == []


def test_registry_killed_mid_pull_leaves_the_store_consistent(make_store, registry):
    # Larger than what loopback socket buffers can hold, so the kill really cuts the transfer.
    image_id = big_image(registry, "big/image", 48 << 20)
    name = f"{registry.host}/big/image:1"
    store = make_store("clean")
    seen: list[dict] = []

    def kill_on_first_bytes(msg: dict) -> None:
        seen.append(msg)
        if msg["status"] == "Downloading":
            registry.kill()

    with pytest.raises(Exception, match="connection|reach"):
        store.pull(name, None, kill_on_first_bytes)
    assert any(m["status"] == "Downloading" for m in seen)
    with pytest.raises(NotFound):
        store.resolve(name)
    assert_consistent(store)
    registry.start()
    image = store.pull(name)
    assert image.id == image_id
    assert Path(store.layer_dirs(image)[0], "big.bin").stat().st_size == 48 << 20
    assert_consistent(store)


class BearerFront:
    """A token service plus a gate in front of the real registry, as Docker Hub works:
    /v2/ calls need `Bearer <token>` for their scope; /token hands tokens to alice."""

    def __init__(self, backend: Server) -> None:
        import http.client
        import http.server
        import threading

        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, headers: dict, body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_one(self) -> None:
                if self.path.startswith("/token"):
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
                    if self.headers.get("Authorization") != good:
                        return self._send(401, {}, b'{"details":"bad credentials"}')
                    front.issued.append(query.get("scope", [""])[0])
                    return self._send(200, {}, json.dumps({"token": "tok:" + query.get("scope", [""])[0]}).encode())
                parts = self.path.split("/")
                scope = f"repository:{'/'.join(parts[2:4])}:" if len(parts) > 4 else ""
                token = self.headers.get("Authorization", "").removeprefix("Bearer tok:")
                if not scope or not token.startswith(scope):
                    challenge = f'Bearer realm="http://{front.host}/token",service="test"'
                    if scope:
                        challenge += f',scope="{scope}pull"'
                    return self._send(401, {"WWW-Authenticate": challenge}, b'{"errors":[]}')
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(backend.host, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                out = {k: v.replace(backend.host, front.host) for k, v in resp.getheaders()
                       if k.lower() not in ("content-length", "connection", "transfer-encoding")}
                conn.close()
                self._send(resp.status, out, data if self.command != "HEAD" else b"")

            do_GET = do_PUT = do_POST = do_HEAD = do_PATCH = handle_one

        self.issued: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_bearer_token_flow(images, make_store, registry, tmp_path):
    front = BearerFront(registry)
    try:
        name = f"{front.host}/team/app:1"
        busybox_plus_layer(images, tmp_path, name)
        with pytest.raises(Unauthorized):
            images.push(name, {"username": "alice", "password": "wrong"}, None)
        images.push(name, {"username": "alice", "password": "s3cret"}, None)
        assert "repository:team/app:pull,push" in front.issued
        pulled = make_store("clean").pull(name, {"username": "alice", "password": "s3cret"}, None)
        assert pulled.id == images.resolve(name).id
        assert front.issued[-1] == "repository:team/app:pull"
    finally:
        front.close()


def test_pull_stops_at_the_unpacked_size_bound_and_leaves_nothing(make_store, registry):
    """A few kilobytes of gzip that unpack to 8 MiB, against a store bounded at 1 MiB."""
    put_image(registry, "bomb/image", one_file_tar("zeros", bytes(8 << 20)), gzipped=True)
    store = make_store("bounded")
    store.max_image_size = 1 << 20
    with pytest.raises(InvalidParameter, match="unpacks to more than 1048576 bytes"):
        store.pull(f"{registry.host}/bomb/image:1")
    assert list(store.blobs.digests()) == [] and list(store.layers_dir.iterdir()) == []
    assert_consistent(store)
    store.max_image_size = 16 << 20
    assert store.pull(f"{registry.host}/bomb/image:1").layers  # within the bound: pulled
