"""`manifest inspect`: a registry's manifest (or manifest list) as docker's CLI prints it.

Like docker's, this verb speaks to the registry itself, not through the daemon,
with the credentials `login` stored; `--insecure` allows plain http (registries
on loopback are spoken to over http anyway).
"""

from __future__ import annotations

import base64
import json

from coracle.cli.commands import CommandError, parser
from coracle.cli.main import Cli

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any


def _indented(doc: Any, indent: str = "\t") -> str:
    """docker's layout: tab indentation (three spaces for a list it rebuilt), `"key": value`."""
    return json.dumps(doc, indent=indent, ensure_ascii=False) + "\n"


def _platform(platform: dict[str, Any]) -> dict[str, Any]:
    """A platform with docker's fields in docker's order, empty optional ones left out."""
    out = {"architecture": platform.get("architecture", ""), "os": platform.get("os", "")}
    out.update({k: platform[k] for k in ("os.version", "os.features", "variant", "features") if platform.get(k)})
    return out


def inspect(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.commands.images import stored_auth
    from coracle.errors import CoracleError, NotFound
    from coracle.images import mediatypes as mt
    from coracle.images.distribution import fetch_blob, fetch_manifest
    from coracle.images.reference import parse
    from coracle.images.registry import Credentials, Registry, pull_scope

    p = parser(name, "[OPTIONS] [MANIFEST_LIST] MANIFEST", "Display an image manifest, or manifest list")
    p.add_argument("--insecure", action="store_true", help="allow communication with an insecure registry")
    p.add_argument("-v", "--verbose", action="store_true", help="output additional info including layers and platform")
    p.add_argument("refs", nargs="*")
    p.counts = (1, 2)
    opts = p.parse_args(args)
    p.require(len(opts.refs))
    try:
        ref = parse(opts.refs[-1])
    except CoracleError as exc:
        raise CommandError(str(exc), 1) from None
    if not ref.tag and not ref.digest:
        ref = ref.with_tag("latest")
    reg = Registry(ref.registry, Credentials.from_auth(stored_auth(ref.name)), insecure=opts.insecure)
    scope = pull_scope(ref.repository)

    def image_manifest(body: bytes, media_type: str, digest: str, at: str,
                       platform: dict[str, Any] | None = None) -> dict[str, Any]:
        """docker's verbose record of one image manifest: reference, descriptor with its platform (the
        list's entry, or the image config's), raw bytes."""
        manifest = json.loads(body)
        if platform is None:
            config = json.loads(fetch_blob(reg, ref.repository, manifest["config"]["digest"], scope))
            platform = {k: config[k] for k in ("architecture", "os", "variant") if config.get(k)}
        key = "OCIManifest" if media_type == mt.OCI_MANIFEST else "SchemaV2Manifest"
        return {"Ref": at, "Descriptor": {"mediaType": media_type, "digest": digest, "size": len(body),
                                          "platform": platform},
                "Raw": base64.b64encode(body).decode(), key: manifest}

    try:
        body, media_type, digest = fetch_manifest(reg, ref, ref.digest or ref.tag or "latest")
        top = json.loads(body)
        if "manifests" not in top:
            cli.out(_indented(image_manifest(body, media_type, digest, ref.canonical) if opts.verbose else top))
            return 0
        children = top["manifests"] or []
        if not opts.verbose:  # docker rebuilds the list from its entries
            oci = bool(children) and children[0].get("mediaType") == mt.OCI_MANIFEST
            rebuilt = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX if oci else mt.DOCKER_LIST,
                       "manifests": [{"mediaType": c.get("mediaType", ""), "size": c.get("size", 0),
                                      "digest": c.get("digest", ""), "platform": _platform(c.get("platform") or {})}
                                     for c in children]}
            cli.out(_indented(rebuilt, "   "))
            return 0
        entries = []
        for child in children:
            child_body, child_type, child_digest = fetch_manifest(reg, ref, child["digest"])
            at = f"{ref.name}:{ref.tag}@{child_digest}" if ref.tag else f"{ref.name}@{child_digest}"
            entries.append(image_manifest(child_body, child_type, child_digest, at,
                                          _platform(child.get("platform") or {})))
        cli.out(_indented(entries))
        return 0
    except NotFound:
        raise CommandError(f"no such manifest: {ref.canonical}", 1) from None
    except CoracleError as exc:
        raise CommandError(str(exc), 1) from None
