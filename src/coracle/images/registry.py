"""A client for the OCI distribution API (Docker Registry HTTP API v2).

Only the standard library: http.client over TCP or TLS. Authentication follows
the registry's `WWW-Authenticate` challenge: Basic (htpasswd-protected
registries) or Bearer, where a token is fetched from the realm with the user's
credentials for the scope the request needs and then cached per scope.
Connection failures are retried a few times; registries on loopback and those
listed as insecure are spoken to over plain http, every other one over https.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterator

from coracle.errors import CoracleError, NotFound
from coracle.images.layers import Readable
from coracle.images.reference import DEFAULT_REGISTRY, is_loopback_registry

DOCKER_HUB_API = "registry-1.docker.io"
RETRIES = 3
TIMEOUT = 60
USER_AGENT = "coracle/0.1"

# What a dropped or refused connection looks like from http.client.
CONNECTION_ERRORS = (ConnectionError, socket.timeout, http.client.HTTPException, ssl.SSLError, OSError)


class Unauthorized(CoracleError):
    """The registry refused the credentials (or wants some)."""

    status = 401


class RegistryError(CoracleError):
    """The registry answered with an error that is not the user's input."""

    status = 500


class Interrupted(CoracleError):
    """The connection broke before the response was complete (retryable)."""

    status = 500


class RegistryUnavailable(CoracleError):
    """No registry or index can answer this request (Docker answers search failures with 500 too)."""

    status = 500


class Unreachable(CoracleError):
    """No connection to the registry even after retrying."""

    status = 500


@dataclass
class Credentials:
    username: str = ""
    password: str = ""
    token: str = ""    # a registry token used as the bearer token directly

    @classmethod
    def from_auth(cls, auth: dict[str, Any] | None) -> Credentials:
        """From the decoded X-Registry-Auth / POST /auth body (Docker's AuthConfig)."""
        auth = auth or {}
        username, password = auth.get("username") or "", auth.get("password") or ""
        if not username and auth.get("auth"):
            username, _, password = base64.b64decode(auth["auth"]).decode().partition(":")
        return cls(username, password, auth.get("registrytoken") or auth.get("identitytoken") or "")

    @property
    def basic(self) -> str | None:
        if not self.username:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def _error_text(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '').lower().replace('_', ' ')}: {e.get('message', '')}" for e in errors)
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


class Response:
    """A response whose body is still to be read (streamed for blobs)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn, self.resp = conn, resp
        self.status = resp.status
        self.headers = resp.headers

    def read(self) -> bytes:
        try:
            return self.resp.read()
        except CONNECTION_ERRORS as exc:
            raise Interrupted(f"connection lost while reading a response: {exc}") from None
        finally:
            self.conn.close()

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        """The body in chunks; Interrupted when it ends before Content-Length said."""
        got = 0
        try:
            while True:
                try:
                    chunk = self.resp.read(size)
                except CONNECTION_ERRORS as exc:
                    raise Interrupted(f"connection lost after {got} bytes: {exc}") from None
                if not chunk:
                    break
                got += len(chunk)
                yield chunk
        finally:
            self.conn.close()
        if self.resp.length:  # http.client leaves what Content-Length still promised
            raise Interrupted(f"connection closed after {got} bytes, {self.resp.length} short")

    def close(self) -> None:
        self.conn.close()


class Registry:
    """One registry host, as one user. Safe to share between download threads."""

    def __init__(self, host: str, credentials: Credentials, insecure: bool = False) -> None:
        self.host = DOCKER_HUB_API if host == DEFAULT_REGISTRY else host
        self.scheme = "http" if insecure or is_loopback_registry(host) else "https"
        self.credentials = credentials
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._lock = threading.Lock()

    # ----- transport -----------------------------------------------------

    def _connect(self, scheme: str, host: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(host, timeout=TIMEOUT, blocksize=1 << 16)
        return http.client.HTTPConnection(host, timeout=TIMEOUT, blocksize=1 << 16)

    def _once(self, method: str, url: str, headers: dict[str, str], body: Any) -> Response:
        parts = urllib.parse.urlsplit(url)
        conn = self._connect(parts.scheme, parts.netloc)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, path, body=body, headers={"User-Agent": USER_AGENT, **headers})
            return Response(conn, conn.getresponse())
        except BaseException:
            conn.close()
            raise

    def _auth_header(self, scope: str) -> dict[str, str]:
        with self._lock:
            if scope in self._tokens:
                return {"Authorization": f"Bearer {self._tokens[scope]}"}
            if self._basic and self.credentials.basic:
                return {"Authorization": self.credentials.basic}
        return {}

    def request(self, method: str, path: str, scope: str, headers: dict[str, str] | None = None,
                body: bytes | Callable[[], Readable] | None = None, ok: tuple[int, ...] = (200,)) -> Response:
        """One API call with auth, retries and redirects; path may be absolute (a Location).

        body is bytes or a callable opening a fresh stream (so a retry can re-send it).
        Raises NotFound for 404, Unauthorized for 401/403, RegistryError otherwise.
        """
        url = path if "://" in path else f"{self.scheme}://{self.host}{path}"
        authorized = False
        attempt = 0
        redirects = 0
        while True:
            sent = {**(headers or {})}
            if urllib.parse.urlsplit(url).netloc == self.host:
                sent.update(self._auth_header(scope))
            try:
                payload = body() if callable(body) else body
                resp = self._once(method, url, sent, payload)
            except CONNECTION_ERRORS as exc:
                attempt += 1
                if attempt >= RETRIES:
                    raise Unreachable(f"cannot reach registry {self.host}: {exc}") from None
                time.sleep(0.2 * 2 ** attempt)
                continue
            if resp.status in ok:
                return resp
            if resp.status in (301, 302, 303, 307, 308) and redirects < 5:
                location = resp.headers.get("Location", "")
                resp.close()
                url = urllib.parse.urljoin(url, location)
                redirects += 1
                if resp.status == 303:
                    method, body = "GET", None
                continue
            if resp.status == 401 and not authorized:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.read()
                self._authenticate(challenge, scope)
                authorized = True
                continue
            text = _error_text(resp.read())
            if resp.status in (401, 403):
                raise Unauthorized(f"{self.host}: {text or 'unauthorized: authentication required'}")
            if resp.status == 404:
                raise NotFound(text or f"{path} not found on {self.host}")
            if resp.status >= 500 and attempt + 1 < RETRIES:
                attempt += 1
                time.sleep(0.2 * 2 ** attempt)
                continue
            raise RegistryError(f"{method} {path} on {self.host}: HTTP {resp.status}: {text}")

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, params = _challenge(challenge)
        if scheme == "basic":
            if not self.credentials.basic:
                raise Unauthorized(f"{self.host}: no basic auth credentials (run login first)")
            with self._lock:
                self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise Unauthorized(f"{self.host}: unsupported authentication challenge {challenge!r}")
        if self.credentials.token and not self.credentials.username:
            token = self.credentials.token
        else:
            token = self._fetch_token(params, scope)
        with self._lock:
            self._tokens[scope] = token

    def _fetch_token(self, params: dict[str, str], scope: str) -> str:
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": self.credentials.basic} if self.credentials.basic else {}
        for attempt in range(RETRIES):
            try:
                resp = self._once("GET", url, headers, None)
                body = resp.read()
                break
            except CONNECTION_ERRORS as exc:
                if attempt + 1 == RETRIES:
                    raise Unreachable(f"cannot reach the token service {realm}: {exc}") from None
                time.sleep(0.2 * 2 ** (attempt + 1))
        if resp.status != 200:
            raise Unauthorized(f"{self.host}: {_error_text(body) or 'authentication failed'}")
        try:
            data = json.loads(body)
            return data.get("token") or data["access_token"]
        except (ValueError, KeyError):
            raise Unauthorized(f"{self.host}: the token service answered without a token") from None

    # ----- API -------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/ (what login checks): fine, or Unauthorized."""
        self.request("GET", "/v2/", "").read()


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"
