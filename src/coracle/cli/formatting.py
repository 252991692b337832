"""Tables and `--format` for list commands: docker's columns, field names and wording.

A row context exposes docker's field names (`.ID`, `.Names`, `.RunningFor` ...)
as attributes, so the same object serves the default table, a user's Go
template and `{{json .}}`. Tables go through `tabwrite`, which lays columns out
the way Go's tabwriter does with docker's settings (min width 10, padding 3).
"""

from __future__ import annotations

from coracle.cli.gotemplate import Template
from coracle.cli.units import ago, go_time, go_timestamp, human_size, parse_iso

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any
    from collections.abc import Iterable, Sequence


def ellipsis(text: str, width: int) -> str:
    """docker's Ellipsis: cut to `width` display columns, the last one an ellipsis."""
    if text.isascii():
        return text if len(text) <= width else text[:width - 1] + "…"
    import unicodedata

    def w(ch: str) -> int:
        return 2 if unicodedata.east_asian_width(ch) in "WF" else 1

    if sum(w(c) for c in text) <= width:
        return text
    out, used = "", 0
    for ch in text:
        if used + w(ch) > width - 1:
            break
        out += ch
        used += w(ch)
    return out + "…"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(text: str) -> str:
    """Go's strconv.Quote, which docker uses for ps's COMMAND: printable characters as they are,
    others as Go escapes (`\\x01`, `\\u00a0`), unlike JSON's `\\u0001`."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or (ch.isascii() and ch.isprintable()):
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        else:
            import unicodedata

            if unicodedata.category(ch)[0] in "LMNPS":
                out.append(ch)
            else:
                out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def short_id(value: str, trunc: bool = True) -> str:
    value = value.split(":", 1)[1] if value.startswith("sha256:") else value
    return value[:12] if trunc else value


def tabwrite(lines: Iterable[str], minwidth: int = 10, padding: int = 3) -> str:
    """Align tab-separated cells like Go's text/tabwriter (the last cell of a line is not padded)."""
    rows = [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for cells in rows:
        for i, cell in enumerate(cells[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell) + padding, minwidth)
    out = []
    for cells in rows:
        out.append("".join(cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])) + cells[-1])
    return "".join(line + "\n" for line in out)


class _Title(str):
    """A header cell: also callable, so `{{.Label "x"}}` renders its title in the header row."""

    def __call__(self, *args: Any) -> _Title:
        return self


class _Header:
    def __init__(self, titles: dict[str, str]) -> None:
        self._titles = titles

    def __getattr__(self, name: str) -> _Title:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Title(self._titles.get(name, name.upper()))


class Row:
    """Base of row contexts: `FIELDS` maps field name -> table header."""

    FIELDS: dict[str, str] = {}

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in sorted(self.FIELDS) if not callable(getattr(self, name))}


def render_rows(rows: Sequence[Row], fmt: str | None, default: str, row_type: type[Row]) -> str:
    """docker's formatter: `table ...` gets a header and aligned columns; other formats one line per row."""
    fmt = fmt or default
    if fmt == "json":
        fmt = "{{json .}}"
    elif fmt == "table":
        fmt = default
    table = fmt.startswith("table")
    body = fmt[len("table"):] if table else fmt
    body = body.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    template = Template(body)
    lines = [template.execute(row) for row in rows]
    if not table:
        return "".join(line + "\n" for line in lines)
    header = template.execute(_Header(row_type.FIELDS))
    return tabwrite([header, *lines])


# ----- containers (ps) -------------------------------------------------------

def display_ports(ports: list[dict[str, Any]]) -> str:
    """`0.0.0.0:8080->80/tcp, [::]:8080->80/tcp, 443/tcp`, consecutive ranges merged."""
    published: dict[tuple[str, str], list[tuple[int, int]]] = {}
    exposed: dict[str, list[int]] = {}
    for p in ports:
        if p.get("PublicPort"):
            published.setdefault((p.get("IP", ""), p.get("Type", "tcp")), []).append(
                (p["PublicPort"], p["PrivatePort"]))
        else:
            exposed.setdefault(p.get("Type", "tcp"), []).append(p["PrivatePort"])

    def host(ip: str) -> str:
        return f"[{ip}]" if ":" in ip else ip

    def runs(pairs: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        out: list[tuple[int, int, int, int]] = []
        for pub, priv in sorted(set(pairs), key=lambda x: (x[1], x[0])):
            if out and pub == out[-1][1] + 1 and priv == out[-1][3] + 1:
                out[-1] = (out[-1][0], pub, out[-1][2], priv)
            else:
                out.append((pub, pub, priv, priv))
        return out

    def span(lo: int, hi: int) -> str:
        return str(lo) if lo == hi else f"{lo}-{hi}"

    items = []
    for (ip, proto), pairs in published.items():
        for pub_lo, pub_hi, priv_lo, priv_hi in runs(pairs):
            items.append((priv_lo, proto, f"{host(ip)}:{span(pub_lo, pub_hi)}->{span(priv_lo, priv_hi)}/{proto}"))
    for proto, privs in exposed.items():
        for _, _, lo, hi in runs([(p, p) for p in privs]):
            items.append((lo, proto, f"{span(lo, hi)}/{proto}"))
    return ", ".join(text for _, _, text in sorted(items))


def _labels(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


class ContainerRow(Row):
    FIELDS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
              "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS", "Size": "SIZE",
              "Names": "NAMES", "Labels": "LABELS", "Label": "LABEL", "Mounts": "MOUNTS",
              "LocalVolumes": "LOCAL VOLUMES", "Networks": "NETWORKS", "Platform": "PLATFORM"}

    def __init__(self, c: dict[str, Any], trunc: bool = True, now: float | None = None) -> None:
        self._c, self._trunc, self._now = c, trunc, now

    @property
    def ID(self) -> str:
        return short_id(self._c["Id"], self._trunc)

    @property
    def Names(self) -> str:
        names = [n.lstrip("/") for n in self._c.get("Names") or []]
        if self._trunc:
            names = [n for n in names if "/" not in n][:1] or names[:1]
        return ",".join(names)

    @property
    def Image(self) -> str:
        image = self._c.get("Image") or ""
        return short_id(image, self._trunc) if image.startswith("sha256:") else image

    @property
    def Command(self) -> str:
        command = self._c.get("Command") or ""
        return go_quote(ellipsis(command, 20) if self._trunc else command)

    @property
    def CreatedAt(self) -> str:
        return go_time(self._c.get("Created", 0))

    @property
    def RunningFor(self) -> str:
        return ago(self._c.get("Created", 0), self._now)

    @property
    def Ports(self) -> str:
        return display_ports(self._c.get("Ports") or [])

    @property
    def State(self) -> str:
        return self._c.get("State") or ""

    @property
    def Status(self) -> str:
        return self._c.get("Status") or ""

    @property
    def Size(self) -> str:
        rw = human_size(self._c.get("SizeRw") or 0)
        rootfs = self._c.get("SizeRootFs") or 0
        return f"{rw} (virtual {human_size(rootfs)})" if rootfs else rw

    @property
    def Labels(self) -> str:
        return _labels(self._c.get("Labels"))

    def Label(self, name: str) -> str:
        return (self._c.get("Labels") or {}).get(name, "")

    @property
    def Mounts(self) -> str:
        names = [m.get("Name") or m.get("Source") or "" for m in self._c.get("Mounts") or []]
        return ",".join(ellipsis(n, 15) if self._trunc else n for n in names)

    @property
    def LocalVolumes(self) -> str:
        return str(sum(1 for m in self._c.get("Mounts") or [] if m.get("Driver") == "local"))

    @property
    def Networks(self) -> str:
        return ",".join(sorted((self._c.get("NetworkSettings") or {}).get("Networks") or {}))

    @property
    def Platform(self) -> dict[str, Any] | None:
        """The platform of the image's manifest, when the daemon names it (null otherwise, as docker)."""
        return (self._c.get("ImageManifestDescriptor") or {}).get("platform")


PS_TABLE = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"


# ----- images ------------------------------------------------------------------

def split_tag(ref: str) -> tuple[str, str]:
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "<none>"


class ImageRow(Row):
    FIELDS = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
              "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE", "Containers": "CONTAINERS",
              "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE", "VirtualSize": "VIRTUAL SIZE"}

    def __init__(self, image: dict[str, Any], repo: str, tag: str, digest: str, trunc: bool = True,
                 now: float | None = None) -> None:
        self._i, self.Repository, self.Tag, self.Digest = image, repo, tag, digest
        self._trunc, self._now = trunc, now

    @property
    def ID(self) -> str:
        return short_id(self._i["Id"]) if self._trunc else self._i["Id"]

    @property
    def CreatedSince(self) -> str:
        return ago(self._i.get("Created", 0), self._now)

    @property
    def CreatedAt(self) -> str:
        return go_time(self._i.get("Created", 0))

    @property
    def Size(self) -> str:
        return human_size(self._i.get("Size") or 0)

    @property
    def VirtualSize(self) -> str:
        return human_size(self._i.get("VirtualSize") or self._i.get("Size") or 0, 4)

    @property
    def SharedSize(self) -> str:
        shared = self._i.get("SharedSize", -1)
        return "N/A" if shared is None or shared < 0 else human_size(shared, 4)

    @property
    def UniqueSize(self) -> str:
        shared = self._i.get("SharedSize", -1)
        return "N/A" if shared is None or shared < 0 else human_size((self._i.get("Size") or 0) - shared, 4)

    @property
    def Containers(self) -> str:
        count = self._i.get("Containers", -1)
        return "N/A" if count is None or count < 0 else str(count)


def image_rows(images: list[dict[str, Any]], trunc: bool = True, now: float | None = None) -> list[ImageRow]:
    """One row per tag (and per digest-only reference); untagged images as <none>."""
    rows = []
    for image in images:
        tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        digests = [d for d in image.get("RepoDigests") or [] if d != "<none>@<none>"]
        by_repo = {d.partition("@")[0]: d.partition("@")[2] for d in digests}
        if tags:
            for tag in tags:
                repo, t = split_tag(tag)
                rows.append(ImageRow(image, repo, t, by_repo.get(repo, "<none>"), trunc, now))
        elif digests:
            for d in digests:
                repo, _, digest = d.partition("@")
                rows.append(ImageRow(image, repo, "<none>", digest, trunc, now))
        else:
            rows.append(ImageRow(image, "<none>", "<none>", "<none>", trunc, now))
    return rows


IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
IMAGES_DIGESTS_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"


# ----- networks ----------------------------------------------------------------

class NetworkRow(Row):
    FIELDS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE", "IPv6": "IPV6",
              "Internal": "INTERNAL", "Labels": "LABELS", "Label": "LABEL", "CreatedAt": "CREATED AT"}

    def __init__(self, net: dict[str, Any], trunc: bool = True) -> None:
        self._n, self._trunc = net, trunc
        self.Name = net.get("Name", "")
        self.Driver = net.get("Driver", "")
        self.Scope = net.get("Scope", "local")

    @property
    def ID(self) -> str:
        return short_id(self._n.get("Id", ""), self._trunc)

    @property
    def IPv6(self) -> str:
        return "true" if self._n.get("EnableIPv6") else "false"

    @property
    def Internal(self) -> str:
        return "true" if self._n.get("Internal") else "false"

    @property
    def Labels(self) -> str:
        return _labels(self._n.get("Labels"))

    def Label(self, name: str) -> str:
        return (self._n.get("Labels") or {}).get(name, "")

    @property
    def CreatedAt(self) -> str:
        from coracle.cli.units import parse_iso

        return go_time(parse_iso(self._n.get("Created", "")))


NETWORKS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"


# ----- volumes -----------------------------------------------------------------

class VolumeRow(Row):
    FIELDS = {"Name": "VOLUME NAME", "Driver": "DRIVER", "Scope": "SCOPE", "Mountpoint": "MOUNTPOINT",
              "Labels": "LABELS", "Label": "LABEL", "Links": "LINKS", "Size": "SIZE", "Group": "GROUP",
              "Availability": "AVAILABILITY", "Status": "STATUS"}

    def __init__(self, vol: dict[str, Any]) -> None:
        self._v = vol
        self.Name = vol.get("Name", "")
        self.Driver = vol.get("Driver", "")
        self.Scope = vol.get("Scope", "local")
        self.Mountpoint = vol.get("Mountpoint", "")
        # what docker shows of a cluster (CSI) volume's state: never one here
        self.Group = self.Availability = self.Status = "N/A"

    @property
    def Labels(self) -> str:
        return _labels(self._v.get("Labels"))

    def Label(self, name: str) -> str:
        return (self._v.get("Labels") or {}).get(name, "")

    @property
    def Links(self) -> str:
        usage = self._v.get("UsageData")
        return "N/A" if not usage else str(usage.get("RefCount", 0))

    @property
    def Size(self) -> str:
        usage = self._v.get("UsageData")
        return "N/A" if not usage or usage.get("Size", -1) < 0 else human_size(usage["Size"], 4)


VOLUMES_TABLE = "table {{.Driver}}\t{{.Name}}"


# ----- search ------------------------------------------------------------------

class SearchRow(Row):
    """One result of `search`: docker shows `[OK]` for official images in a table, true/false in JSON."""

    FIELDS = {"Name": "NAME", "Description": "DESCRIPTION", "StarCount": "STARS", "IsOfficial": "OFFICIAL"}

    def __init__(self, result: dict[str, Any], trunc: bool = True, as_json: bool = False) -> None:
        self.Name = result.get("name", "")
        description = (result.get("description") or "").replace("\n", " ").replace("\r", " ")
        self.Description = ellipsis(description, 45) if trunc else description
        self.StarCount = str(result.get("star_count") or 0)
        official = bool(result.get("is_official"))
        self.IsOfficial = ("true" if official else "false") if as_json else ("[OK]" if official else "")


SEARCH_TABLE = "table {{.Name}}\t{{.Description}}\t{{.StarCount}}\t{{.IsOfficial}}"


# ----- system df ---------------------------------------------------------------

class DiskUsageRow(Row):
    """One line of `system df`."""

    FIELDS = {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE"}

    def __init__(self, kind: str, count: int, active: int, size: int, reclaimable: int, percent: bool = True) -> None:
        self.Type, self.TotalCount, self.Active, self.Size = kind, str(count), str(active), human_size(size, 4)
        self.Reclaimable = human_size(reclaimable, 4)
        if percent and size > 0:
            self.Reclaimable += f" ({reclaimable * 100 // size}%)"


def usage_rows(usage: dict[str, Any]) -> list[DiskUsageRow]:
    """GET /system/df -> docker's four summary lines, counted as docker's CLI counts them.

    Images: active when a container (in any state) uses them; reclaimable is all layer
    bytes but the unique bytes of active images. Containers: active when running, paused
    or restarting; their writable layers are the size. Volumes: active when referenced.
    Build cache: shared records are not counted; those in use are not reclaimable."""
    images = usage.get("Images") or []
    containers = usage.get("Containers") or []
    volumes = [v.get("UsageData") or {"Size": -1, "RefCount": 0} for v in usage.get("Volumes") or []]
    cache = usage.get("BuildCache") or []
    layers = usage.get("LayersSize") or 0
    used_images = [i for i in images if (i.get("Containers") or 0) > 0]
    unique = sum(i["Size"] - i["SharedSize"] for i in used_images
                 if i.get("Size", -1) != -1 and i.get("SharedSize", -1) != -1)
    active = [c for c in containers if any(s in (c.get("State") or "") for s in ("running", "paused", "restarting"))]
    rw = sum(c.get("SizeRw") or 0 for c in containers)
    sized = [v for v in volumes if v.get("Size", -1) != -1]
    own_cache = [c for c in cache if not c.get("Shared")]
    cache_size = sum(c.get("Size") or 0 for c in own_cache)
    return [
        DiskUsageRow("Images", len(images), len(used_images), layers, layers - unique),
        DiskUsageRow("Containers", len(containers), len(active), rw, rw - sum(c.get("SizeRw") or 0 for c in active)),
        DiskUsageRow("Local Volumes", len(volumes), sum(1 for v in volumes if (v.get("RefCount") or 0) > 0),
                     sum(v["Size"] for v in sized), sum(v["Size"] for v in sized if not v.get("RefCount"))),
        DiskUsageRow("Build Cache", len(cache), sum(1 for c in cache if c.get("InUse")), cache_size,
                     cache_size - sum(c.get("Size") or 0 for c in own_cache if c.get("InUse")), percent=False),
    ]


class BuildCacheRow(Row):
    """A build cache record in `system df -v`."""

    FIELDS = {"ID": "CACHE ID", "CacheType": "CACHE TYPE", "Size": "SIZE", "CreatedSince": "CREATED",
              "LastUsedSince": "LAST USED", "UsageCount": "USAGE", "Shared": "SHARED", "Parent": "PARENT",
              "Description": "DESCRIPTION", "CreatedAt": "CREATED AT", "LastUsedAt": "LAST USED AT",
              "InUse": "IN USE"}

    def __init__(self, record: dict[str, Any], trunc: bool = True, now: float | None = None) -> None:
        def cut(text: str) -> str:
            return text[:12] if trunc else text

        self.ID = cut(record.get("ID", "")) + ("*" if record.get("InUse") else "")
        self.Parent = cut(", ".join(record.get("Parents") or []) or record.get("Parent") or "")
        self.CacheType = record.get("Type", "")
        self.Description = record.get("Description", "")
        self.Size = human_size(record.get("Size") or 0)
        self.CreatedAt = go_timestamp(record.get("CreatedAt") or "")
        self.CreatedSince = ago(parse_iso(record["CreatedAt"]), now) if record.get("CreatedAt") else ""
        self.LastUsedAt = go_timestamp(record.get("LastUsedAt") or "")
        self.LastUsedSince = ago(parse_iso(record["LastUsedAt"]), now) if record.get("LastUsedAt") else ""
        self.UsageCount = str(record.get("UsageCount") or 0)
        self.InUse = "true" if record.get("InUse") else "false"
        self.Shared = "true" if record.get("Shared") else "false"


DF_TABLE = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"
DF_IMAGES_TABLE = ("table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}\t{{.SharedSize}}"
                   "\t{{.UniqueSize}}\t{{.Containers}}")
DF_CONTAINERS_TABLE = ("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.LocalVolumes}}\t{{.Size}}\t{{.RunningFor}}"
                       "\t{{.Status}}\t{{.Names}}")
DF_CACHE_TABLE = ("table {{.ID}}\t{{.CacheType}}\t{{.Size}}\t{{.CreatedSince}}\t{{.LastUsedSince}}"
                  "\t{{.UsageCount}}\t{{.Shared}}")


# ----- stats -------------------------------------------------------------------

class StatsRow(Row):
    """One `docker stats` line computed from two samples, the way docker's CLI computes it."""

    FIELDS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %",
              "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O", "BlockIO": "BLOCK I/O",
              "PIDs": "PIDS"}

    def __init__(self, container: str, s: dict[str, Any], trunc: bool = True) -> None:
        from coracle.cli.units import bytes_size

        self.Container = container
        self.ID = short_id(s.get("id", ""), trunc)
        self.Name = (s.get("name") or "").lstrip("/")
        cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
        cpu_delta = ((cpu.get("cpu_usage") or {}).get("total_usage", 0)
                     - (pre.get("cpu_usage") or {}).get("total_usage", 0))
        system_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
        online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
        percent = cpu_delta / system_delta * online * 100.0 if cpu_delta > 0 and system_delta > 0 else 0.0
        mem = s.get("memory_stats") or {}
        stats = mem.get("stats") or {}
        usage = mem.get("usage", 0)
        cache = stats.get("total_inactive_file") if "total_inactive_file" in stats else stats.get("inactive_file", 0)
        used = usage - cache if cache and cache < usage else usage
        limit = mem.get("limit") or 0
        rx = sum(n.get("rx_bytes", 0) for n in (s.get("networks") or {}).values())
        tx = sum(n.get("tx_bytes", 0) for n in (s.get("networks") or {}).values())
        read = write = 0
        for entry in (s.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
            op = (entry.get("op") or "").lower()
            read += entry.get("value", 0) if op == "read" else 0
            write += entry.get("value", 0) if op == "write" else 0
        self.CPUPerc = f"{percent:.2f}%"
        self.MemUsage = f"{bytes_size(used)} / {bytes_size(limit)}"
        self.MemPerc = f"{(used / limit * 100.0) if limit else 0.0:.2f}%"
        self.NetIO = f"{human_size(rx)} / {human_size(tx)}"
        self.BlockIO = f"{human_size(read)} / {human_size(write)}"
        self.PIDs = str((s.get("pids_stats") or {}).get("current", 0))


STATS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}"

