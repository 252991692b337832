"""A simulated cluster: hosts as network namespaces on one underlay bridge, each with its own coracled, and etcd.

    underlay netns: bridge `ul` 192.0.2.1-3/24 = etcd members e0..e2 (real etcd, Debian's etcd-server)
        |-- veth -- host h0 netns: 192.0.2.11, coracled --cluster-store etcd://... --cluster-advertise 192.0.2.11
        |-- veth -- host h1 netns: 192.0.2.12, coracled ...
        `-- veth -- host h2 netns: 192.0.2.13, coracled ...

Every host's daemon has its own data root, exec root, socket and cgroup parent
(tests/harness.py's Daemon). The underlay namespace is also "the LAN": a
server there stands for anything outside the overlay. Everything is made by
`Cluster.up()` and removed by `Cluster.down()`, which never raises and is
called even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterator

from harness import Daemon, unique

UNDERLAY = "192.0.2"
ETCD_IPS = [f"{UNDERLAY}.{i}" for i in (1, 2, 3)]
HOST_IPS = [f"{UNDERLAY}.{i}" for i in (11, 12, 13)]
CLIENT_PORT, PEER_PORT = 2379, 2380


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Etcd:
    """The etcd members of a test, on the underlay bridge's addresses."""

    def __init__(self, netns: str, root: Path, members: int, tls: bool = False) -> None:
        self.netns = netns
        self.root = root
        self.ips = ETCD_IPS[:members]
        self.procs: dict[int, subprocess.Popen] = {}
        self.tls = tls
        self.pki: Path | None = None  # made by the first start()
        self.scheme = "https" if tls else "http"

    def client_opts(self) -> list[str]:
        """coracled's flags for this etcd's TLS (none without)."""
        if self.pki is None:
            return []
        return [f"kv.cacertfile={self.pki / 'ca.pem'}", f"kv.certfile={self.pki / 'client.pem'}",
                f"kv.keyfile={self.pki / 'client-key.pem'}"]

    @property
    def store(self) -> str:
        return "etcd://" + ",".join(f"{ip}:{CLIENT_PORT}" for ip in self.ips)

    def start(self, index: int | None = None) -> None:
        """All members (or one, restarted on its old data directory), then wait until they serve."""
        cluster = ",".join(f"e{i}=http://{ip}:{PEER_PORT}" for i, ip in enumerate(self.ips))
        if self.tls and self.pki is None:
            self.pki = make_pki(self.root / "pki", self.ips)
        for i in ([index] if index is not None else range(len(self.ips))):
            ip = self.ips[i]
            with open(self.root / f"etcd{i}.log", "ab") as log:
                self.procs[i] = subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{self.netns}", "etcd", "--name", f"e{i}",
                     "--data-dir", str(self.root / f"etcd{i}"),
                     "--listen-client-urls", f"{self.scheme}://{ip}:{CLIENT_PORT}", "--advertise-client-urls",
                     f"{self.scheme}://{ip}:{CLIENT_PORT}", "--listen-peer-urls", f"http://{ip}:{PEER_PORT}",
                     "--initial-advertise-peer-urls", f"http://{ip}:{PEER_PORT}", "--initial-cluster", cluster,
                     "--initial-cluster-state", "new", "--initial-cluster-token", self.netns,
                     "--heartbeat-interval", "50", "--election-timeout", "500", *self._tls_flags()],
                    stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self.healthy(i) for i in self.procs):
                return
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy:\n" + (self.root / "etcd0.log").read_text()[-3000:])

    def _tls_flags(self) -> list[str]:
        if self.pki is None:
            return []
        return ["--cert-file", str(self.pki / "server.pem"), "--key-file", str(self.pki / "server-key.pem"),
                "--trusted-ca-file", str(self.pki / "ca.pem"), "--client-cert-auth"]

    def _get(self, ip: str, path: str, body: dict | None = None) -> dict:
        """One gateway call, made from inside the underlay namespace (where the members are)."""
        context = "None"
        if self.pki is not None:
            context = (f"ssl.create_default_context(cafile={str(self.pki / 'ca.pem')!r}); "
                       f"ctx.load_cert_chain({str(self.pki / 'client.pem')!r}, {str(self.pki / 'client-key.pem')!r})")
        code = ("import sys, json, ssl, urllib.request\n"
                f"ctx = {context}\n"
                f"r = urllib.request.urlopen(urllib.request.Request('{self.scheme}://{ip}:{CLIENT_PORT}{path}', "
                f"data={json.dumps(body).encode() if body is not None else None!r}), timeout=2, context=ctx)\n"
                "sys.stdout.write(r.read().decode())")
        out = sh("nsenter", f"--net=/run/netns/{self.netns}", "python3", "-c", code, check=False)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}

    def healthy(self, i: int) -> bool:
        return self._get(self.ips[i], "/health").get("health") == "true"

    def listing(self, prefix: str = "/coracle/") -> list[str]:
        """Every key under `prefix` (asked of any live member)."""
        import base64

        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = {"key": base64.b64encode(prefix.encode()).decode(),
                "range_end": base64.b64encode(end.encode()).decode(), "keys_only": True}
        for i in self.procs:
            if self.procs[i].poll() is None:
                answer = self._get(self.ips[i], "/v3/kv/range", body)
                if answer:
                    return sorted(base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs", []))
        raise RuntimeError("no etcd member answered")

    def lease_of(self, key: str) -> str | None:
        """The lease `key` is bound to (None when the key does not exist)."""
        import base64

        for i in self.procs:
            if self.procs[i].poll() is None:
                answer = self._get(self.ips[i], "/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
                if answer:
                    return str(answer["kvs"][0].get("lease", "0")) if answer.get("kvs") else None
        raise RuntimeError("no etcd member answered")

    def revoke(self, lease: str) -> None:
        """Revoke a lease: every key of its holder vanishes at once."""
        for i in self.procs:
            if self.procs[i].poll() is None and self._get(self.ips[i], "/v3/lease/revoke", {"ID": lease}):
                return
        raise RuntimeError("no etcd member answered")

    def put(self, key: str, value: str) -> None:
        """Write a key (as another user of the same etcd would)."""
        import base64

        body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()}
        for i in self.procs:
            if self.procs[i].poll() is None and self._get(self.ips[i], "/v3/kv/put", body):
                return
        raise RuntimeError("no etcd member answered")

    def compact(self) -> None:
        """Drop the history of every change so far (what etcd's auto-compaction does): a watch from an older
        revision is refused from now on."""
        import base64

        for i in self.procs:
            if self.procs[i].poll() is None:
                answer = self._get(self.ips[i], "/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
                if answer and self._get(self.ips[i], "/v3/kv/compaction",
                                        {"revision": answer["header"]["revision"], "physical": True}):
                    return
        raise RuntimeError("no etcd member answered")

    def kill(self, index: int | None = None) -> None:
        for i in ([index] if index is not None else list(self.procs)):
            proc = self.procs.pop(i, None)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Host:
    """One host of the cluster: a namespace on the underlay and its daemon."""

    def __init__(self, index: int, tag: str, daemon: Daemon) -> None:
        self.index = index
        self.ip = HOST_IPS[index]
        self.tag = tag
        self.daemon = daemon

    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.daemon.docker(*args, check=check, timeout=timeout)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.daemon.cli(*args, check=check, timeout=timeout)

    def ip_json(self, *args: str) -> list[dict]:
        out = sh("ip", "-n", self.daemon.netns, "-j", *args).stdout
        return json.loads(out) if out.strip() else []

    def overlay_links(self) -> list[str]:
        return [link["ifname"] for link in self.ip_json("link") if link["ifname"].startswith(("ov-", "vx-"))]

    def permanent_neighbours(self) -> list[dict]:
        return [n for n in self.ip_json("neigh", "show", "nud", "permanent")]

    def remote_fdb(self) -> list[str]:
        """FDB entries pointing at another host (`dst` set): what this host knows of remote containers."""
        out = sh("bridge", "-n", self.daemon.netns, "fdb", "show").stdout
        return [line for line in out.splitlines() if " dst " in line]

    def nft_elements(self) -> list[str]:
        """The overlay bridges named in this host's nftables sets (the firewall's per-network elements)."""
        ruleset = sh("ip", "netns", "exec", self.daemon.netns, "nft", "list", "ruleset").stdout
        return re.findall(r'"ov-[0-9a-f]+"', ruleset)

    def pid_of(self, container: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", container).stdout)

    def address_of(self, container: str, network: str, field: str = "IPAddress") -> str:
        """The container's address on `network` (field GlobalIPv6Address for its IPv6 one)."""
        return self.docker("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{network}\").{field}}}}}",
                           container).stdout.strip()


class Cluster:
    """The underlay, etcd and the hosts (see the module docstring)."""

    def __init__(self, hosts: int = 3, etcd_members: int = 1, ttl: int = 4, tls: bool = False) -> None:
        self.tag = unique("")
        self.underlay = unique("ul")
        self.root = Path(f"/tmp/coracle-test-cluster-{self.tag}")
        self.etcd = Etcd(self.underlay, self.root, etcd_members, tls)
        self.ttl = ttl
        self.hosts: list[Host] = []
        self.dead: list[Host] = []
        self._count = hosts

    def up(self) -> None:
        self.root.mkdir(parents=True)
        sh("ip", "netns", "add", self.underlay)
        sh("ip", "-n", self.underlay, "link", "set", "lo", "up")
        sh("ip", "-n", self.underlay, "link", "add", "ul", "type", "bridge")
        for ip in ETCD_IPS:
            sh("ip", "-n", self.underlay, "addr", "add", f"{ip}/24", "dev", "ul")
        sh("ip", "-n", self.underlay, "link", "set", "ul", "up")
        self.etcd.start()
        for i in range(self._count):
            self.hosts.append(self._host(i))
        for host in self.hosts:
            host.daemon.start()

    def _host(self, i: int) -> Host:
        tag = f"{self.tag}h{i}"
        daemon = Daemon(tag, extra_args=["--cluster-store", self.etcd.store, "--cluster-advertise", HOST_IPS[i],
                                         "--cluster-store-opt", f"kv.ttl={self.ttl}",
                                         *(a for o in self.etcd.client_opts() for a in ("--cluster-store-opt", o))])
        daemon.create_netns()
        sh("ip", "-n", self.underlay, "link", "add", f"h{i}", "type", "veth", "peer", "name", "ul0",
           "netns", daemon.netns)
        sh("ip", "-n", self.underlay, "link", "set", f"h{i}", "master", "ul", "up")
        sh("ip", "-n", daemon.netns, "addr", "add", f"{HOST_IPS[i]}/24", "dev", "ul0")
        sh("ip", "-n", daemon.netns, "link", "set", "ul0", "up")
        sh("ip", "-n", daemon.netns, "route", "add", "default", "via", ETCD_IPS[0])
        return Host(i, tag, daemon)

    def down(self) -> None:
        for host in self.hosts + self.dead:
            with contextlib.suppress(Exception):  # teardown goes on: each part is removed on its own
                host.daemon.destroy()
        self.etcd.kill()
        sh("ip", "netns", "del", self.underlay, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_host(self, host: Host) -> None:
        """A host dies: its daemon, monitor and containers at once, and its namespace with them."""
        host.daemon.destroy()
        self.hosts.remove(host)
        self.dead.append(host)

    @contextmanager
    def cut_off(self, host: Host) -> Iterator[None]:
        """`host` cannot reach etcd (connections refused, from inside its namespace) until the block ends, and
        the block starts once its lease has expired (etcd has dropped everything it published)."""
        node = f"/coracle/nodes/{host.ip}"
        nft = ["ip", "netns", "exec", host.daemon.netns, "nft"]
        sh(*nft, "add table ip cutoff { chain out { type filter hook output priority filter; "
                 f"tcp dport {CLIENT_PORT} reject with tcp reset; }}; }}")
        try:
            wait_for(lambda: self.etcd.lease_of(node) is None, "the cut-off host's lease expired")
            yield
        finally:
            sh(*nft, "delete table ip cutoff", check=False)

    @contextmanager
    def watch_lost(self, host: Host) -> Iterator[None]:
        """`host`'s daemon misses whatever happens meanwhile and then runs on, its lease intact if the TTL
        outlasts the block: it is frozen (SIGSTOP), what etcd sends it is dropped, and its connections to etcd
        are aborted before it runs again, so nothing sent meanwhile ever reaches it: it must ask etcd again."""
        assert host.daemon.proc is not None
        pid = host.daemon.proc.pid
        netns = ["ip", "netns", "exec", host.daemon.netns]
        os.kill(pid, signal.SIGSTOP)
        try:
            sh(*netns, "nft", "add table ip lostwatch { chain in { type filter hook input priority filter; "
                              f"tcp sport {CLIENT_PORT} drop; }}; chain out {{ type filter hook output priority "
                              f"filter; tcp dport {CLIENT_PORT} drop; }}; }}")
            yield
        finally:
            sh(*netns, "ss", "-K", "dport", "=", f":{CLIENT_PORT}", check=False)
            sh(*netns, "nft", "delete table ip lostwatch", check=False)
            os.kill(pid, signal.SIGCONT)

    def visible_everywhere(self, network: str) -> bool:
        return all(h.docker("network", "inspect", network, check=False).returncode == 0 for h in self.hosts)

    def overlay(self, *args: str, on: int = 0) -> str:
        """A new overlay network made on host `on`, once every host has it; returns its name."""
        name = unique("ov")
        self.hosts[on].docker("network", "create", "-d", "overlay", *args, name)
        wait_for(lambda: self.visible_everywhere(name), "the network on every host")
        return name

    def clean(self) -> dict[str, list]:
        """What is left of the overlay anywhere: etcd keys (besides live hosts' membership), kernel state and
        firewall elements."""
        left: dict[str, list] = {"keys": [k for k in self.etcd.listing() if not k.startswith("/coracle/nodes/")]}
        for host in self.hosts:
            left[f"h{host.index} links"] = host.overlay_links()
            left[f"h{host.index} neighbours"] = host.permanent_neighbours()
            left[f"h{host.index} fdb"] = host.remote_fdb()
            left[f"h{host.index} nft elements"] = host.nft_elements()
        return {k: v for k, v in left.items() if v}


SNIFFER = """
import json, signal, socket, sys
marker = sys.argv[1].encode()
seen = {"esp": 0, "vxlan": 0, "marker": 0}
def done(*_):
    print(json.dumps(seen), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
print("ready", flush=True)
while True:
    frame = sock.recv(65535)
    ipv4, proto, udp = frame[12:14] == b"\\x08\\x00", frame[23], 14 + (frame[14] & 15) * 4
    if ipv4 and proto == 50:
        seen["esp"] += 1
    elif ipv4 and proto == 17 and frame[udp + 2:udp + 4] == b"\\x12\\xb5":
        seen["vxlan"] += 1
    seen["marker"] += marker in frame
"""


@contextmanager
def underlay_capture(c: Cluster, marker: str) -> Iterator[dict[str, int]]:
    """What crosses the underlay meanwhile (a raw socket in its namespace): ESP packets, VXLAN packets (UDP
    4789) and frames carrying `marker` in clear; filled in when the block ends."""
    sniffer = subprocess.Popen(["nsenter", f"--net=/run/netns/{c.underlay}", "python3", "-c", SNIFFER, marker],
                               stdout=subprocess.PIPE, text=True)
    seen: dict[str, int] = {}
    try:
        assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
        yield seen
    finally:
        sniffer.terminate()
        out, _ = sniffer.communicate(timeout=10)
        seen.update(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})


def make_pki(root: Path, ips: list[str]) -> Path:
    """A throwaway CA, a server certificate for the members' addresses and a client certificate."""
    root.mkdir()

    def ssl(*args: str) -> None:
        sh("openssl", *args)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(root / "ca-key.pem"), "-out", str(root / "ca.pem"))
    for name, extension in (("server", "subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips)),
                            ("client", "extendedKeyUsage=clientAuth")):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(root / f"{name}-key.pem"),
            "-out", str(root / f"{name}.csr"))
        (root / f"{name}.ext").write_text(extension + "\n")
        ssl("x509", "-req", "-in", str(root / f"{name}.csr"), "-CA", str(root / "ca.pem"), "-CAkey",
            str(root / "ca-key.pem"), "-CAcreateserial", "-days", "1", "-extfile", str(root / f"{name}.ext"),
            "-out", str(root / f"{name}.pem"))
    return root


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 20) -> None:
    """Poll until `predicate()` is true (no timing is asserted: the timeout only bounds a broken run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def cluster(hosts: int = 3, etcd_members: int = 1, ttl: int = 4, tls: bool = False) -> Iterator[Cluster]:
    c = Cluster(hosts, etcd_members, ttl, tls)
    try:
        c.up()
        yield c
    finally:
        c.down()
