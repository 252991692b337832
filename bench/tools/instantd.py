"""A stand-in Docker Engine API that answers `docker run --rm IMAGE CMD` at once: the docker CLI's own floor.

`python -m bench.tools.instantd SOCKET` listens on a unix socket, prints one
JSON line when ready, and answers the requests that command makes (ping,
create, attach, wait, start) with canned replies and no container at all: the
attach stream and the wait (condition=removed) end as soon as start is
answered. Timing `docker run --rm` against it gives what the CLI alone costs
(its start, its request gaps, its exit), so the share a real daemon has left
under a start-latency goal can be stated from a measurement, not a guess.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

CID = "0" * 64
HEADERS = "Api-Version: 1.47\r\nOstype: linux\r\nServer: Docker/27.0.0 (linux)\r\n"


class Daemon:
    """One container's worth of state: the wait and attach replies wait for its start."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                method, target = head.split(b" ", 2)[:2]
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                if not await self.answer(method.decode(), target.decode(), writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, method: str, target: str, writer: asyncio.StreamWriter) -> bool:
        """Reply to one request; False when the connection is done."""
        path = target.split("?")[0]
        if path.endswith("/_ping"):
            writer.write(f"HTTP/1.1 200 OK\r\n{HEADERS}Content-Length: 2\r\n\r\n".encode()
                         + (b"" if method == "HEAD" else b"OK"))
        elif path.endswith("/containers/create"):
            self.started.clear()
            body = json.dumps({"Id": CID, "Warnings": []}).encode()
            writer.write(f"HTTP/1.1 201 Created\r\n{HEADERS}Content-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        elif path.endswith("/attach"):
            writer.write(f"HTTP/1.1 101 UPGRADED\r\n{HEADERS}Content-Type: application/vnd.docker.raw-stream\r\n"
                         "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode())
            await writer.drain()
            await self.started.wait()
            return False  # the stream ends: the container is gone
        elif path.endswith("/wait"):
            writer.write(f"HTTP/1.1 200 OK\r\n{HEADERS}Content-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode())
            await writer.drain()
            await self.started.wait()
            body = b'{"StatusCode": 0, "Error": null}\n'
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        elif path.endswith("/start"):
            writer.write(f"HTTP/1.1 204 No Content\r\n{HEADERS}\r\n".encode())
            self.started.set()
        else:
            body = json.dumps({"message": f"not answered here: {method} {path}"}).encode()
            writer.write(f"HTTP/1.1 404 Not Found\r\n{HEADERS}Content-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        return True


async def main(path: str) -> None:
    daemon = Daemon()
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(daemon.serve, path)
    print(json.dumps({"listening": path}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
