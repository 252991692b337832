"""The CLI's HTTP client against a real socket: keep-alive, streams, errors, hijack."""

from __future__ import annotations

import pytest

from coracle.cli.client import ApiError, Client, DaemonUnreachable, path_with_query
from fakeengine import FakeEngine


def test_query_encoding() -> None:
    assert path_with_query("/containers/json", {"all": True, "limit": None, "filters": {"status": ["running"]}}) == \
        "/containers/json?all=1&filters=%7B%22status%22%3A%5B%22running%22%5D%7D"
    assert path_with_query("/images/get", {"names": ["a", "b:1"]}) == "/images/get?names=a&names=b%3A1"
    assert path_with_query("/x", {"force": False}) == "/x?force=0"


def test_keep_alive_reuses_one_connection(engine: FakeEngine) -> None:
    client = Client(engine.host)
    assert client.get("/version")["ApiVersion"] == "1.47"
    first = client._sock
    assert first is not None
    assert len(client.get("/containers/json", {"all": True})) == 2
    assert client._sock is first  # same socket, no reconnect
    with pytest.raises(ApiError) as exc:
        client.get("/containers/nope/json")
    assert (exc.value.status, exc.value.message) == (404, "No such container: nope")
    assert client.get("/version")["Version"] == "27.0.0"  # errors do not break the connection
    client.close()


def test_streams_and_chunked_uploads(engine: FakeEngine) -> None:
    client = Client(engine.host)
    messages = list(client.json_stream("POST", "/images/load", body=iter([b"a" * 70000, b"b" * 5]),
                                       content_type="application/x-tar"))
    assert messages == [{"stream": "Loaded image: loaded:70005\n"}]
    resp = client.request("GET", "/containers/web/logs", stream=True)
    assert resp.getheader("Content-Type") == "application/vnd.docker.multiplexed-stream"
    data = resp.read()
    assert data.startswith(b"\x01\x00\x00\x00\x00\x00\x00\x09line one\n")
    client.close()


def test_hijack_errors_and_missing_daemon(engine: FakeEngine, tmp_path: object) -> None:
    client = Client(engine.host)
    with pytest.raises(ApiError, match="No such container: ghost"):
        client.hijack("/containers/ghost/attach", {"stream": True})
    with pytest.raises(DaemonUnreachable, match="Is coracled running"):
        Client(f"unix://{tmp_path}/none.sock").get("/version")
    with pytest.raises(DaemonUnreachable, match="unsupported host"):
        Client("ssh://somewhere").get("/version")
