"""Docker's units: sizes in and out, durations and timestamps, the way docker prints them."""

from __future__ import annotations

import time

_BINARY = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_DECIMAL_UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
_BINARY_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"]


def parse_bytes(text: str) -> int:
    """`64m` -> 67108864: docker's RAMInBytes (binary multiples, optional b/ib suffix)."""
    import re  # imported where used: it costs every command start-up time

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"invalid size: '{text}'")
    return int(float(m.group(1)) * _BINARY[m.group(2)])


def _scaled(size: float, base: float, units: list[str]) -> tuple[float, str]:
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return size, units[i]


def _g(value: float, precision: int) -> str:
    """Go's %.Ng: like Python's but never an exponent for the sizes we print."""
    text = f"{value:.{precision}g}"
    if "e" in text:
        text = str(int(round(value)))
    return text


def human_size(size: float, precision: int = 3) -> str:
    """Decimal units (`4.26MB`): image sizes, block and network I/O."""
    value, unit = _scaled(float(size), 1000.0, _DECIMAL_UNITS)
    return _g(value, precision) + unit


def bytes_size(size: float) -> str:
    """Binary units (`1.5MiB`): memory in `stats`."""
    value, unit = _scaled(float(size), 1024.0, _BINARY_UNITS)
    return _g(value, 4) + unit


def human_duration(seconds: float) -> str:
    """go-units HumanDuration: "Less than a second", "About a minute", "3 hours", "2 weeks"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


def ago(timestamp: float, now: float | None = None) -> str:
    return human_duration((time.time() if now is None else now) - timestamp) + " ago"


def parse_iso(text: str) -> float:
    """RFC 3339 with nanoseconds (the API's timestamps) -> epoch seconds."""
    import re  # imported where used: it costs every command start-up time

    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", text or "")
    if not m:
        return 0.0
    import calendar

    base = calendar.timegm(tuple(int(m.group(i)) for i in range(1, 7)) + (0, 0, 0))
    frac = float("0" + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8) or "Z"
    offset = 0 if zone == "Z" else (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * (1 if zone[0] == "+" else -1)
    return base + frac - offset


def go_time(timestamp: float) -> str:
    """Go's time.Time.String() in local time: `2026-11-28 15:14:04 +0000 UTC`."""
    local = time.localtime(timestamp)
    offset = time.strftime("%z", local)
    return time.strftime("%Y-%m-%d %H:%M:%S ", local) + offset + " " + time.strftime("%Z", local)


def go_timestamp(text: str) -> str:
    """Go's time.Time.String() of an API timestamp as docker's CLI decodes it: in the timestamp's own
    zone, with its fraction of a second (`2026-11-30 16:39:55.236692 +0000 UTC`); "" if not one."""
    import re  # imported where used: it costs every command start-up time

    m = re.match(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text or "")
    if not m:
        return ""
    fraction = (m.group(3) or "").rstrip("0")
    zone = (m.group(4) or "Z").replace(":", "")
    return f"{m.group(1)} {m.group(2)}{'.' + fraction if fraction else ''} " + \
        ("+0000 UTC" if zone == "Z" else f"{zone} {zone}")


def parse_duration(text: str) -> float:
    """Go durations (`10s`, `1m30s`, `250ms`) -> seconds."""
    import re  # imported where used: it costs every command start-up time

    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration: {text}")
    scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def api_time(text: str, now: float | None = None) -> str:
    """docker's --since/--until: a Go duration relative to now, an RFC 3339 date, or a Unix timestamp."""
    import re  # imported where used: it costs every command start-up time

    if re.fullmatch(r"\d+(\.\d+)?", text):
        return text
    try:
        return "%.9f" % ((time.time() if now is None else now) - parse_duration(text))
    except ValueError:
        pass
    if re.match(r"\d{4}-\d\d-\d\d", text):
        if "T" not in text:
            text += "T00:00:00Z"
        elif not re.search(r"(Z|[+-]\d\d:\d\d)$", text):
            text += "Z"
        return f"{parse_iso(text):.9f}"
    raise ValueError(f"failed to parse value as time or duration: \"{text}\"")
