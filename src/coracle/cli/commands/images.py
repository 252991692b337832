"""Image verbs: images, pull, push, rmi, tag, import, load, save, history, prune, commit, search, login/logout."""

from __future__ import annotations

import os
import sys

from coracle.cli import wirejson
from coracle.cli.client import ApiError, file_chunks, quote_name
from coracle.cli.commands import CommandError, confirm, filters, parser, save_stream
from coracle.cli.main import Cli

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, TextIO

DEFAULT_REGISTRY = "https://index.docker.io/v1/"


def _image_path(name: str, suffix: str = "") -> str:
    return f"/images/{quote_name(name)}{suffix}"


def _split_repo_tag(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        return ref, None
    slash, colon = ref.rfind("/"), ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, None


# ----- credentials (`login` stores them, pull/push send them) ---------------------------

def _config_path() -> str:
    return os.path.join(os.environ.get("CORACLE_CONFIG") or os.path.expanduser("~/.coracle"), "config.json")


def _load_config() -> dict[str, Any]:
    import json  # here, with base64 below: with the `re` they import, ~14 ms of every `coracle images`

    try:
        with open(_config_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_config(config: dict[str, Any]) -> None:
    import json

    path = _config_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent="\t")
    os.replace(tmp, path)


def _registry_of(repo: str) -> str:
    first = repo.split("/", 1)[0]
    if "/" in repo and ("." in first or ":" in first or first == "localhost"):
        return first
    return DEFAULT_REGISTRY


def stored_auth(repo: str) -> dict[str, str]:
    """The stored login for `repo`'s registry ({} when none)."""
    server = _registry_of(repo)
    entry = (_load_config().get("auths") or {}).get(server) or {}
    if not entry.get("auth"):
        return {}
    import base64

    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return {"username": user, "password": password, "serveraddress": server}


def auth_header(repo: str) -> dict[str, str]:
    """X-Registry-Auth for `repo`'s registry from stored logins ("{}" when none, as docker sends)."""
    import base64

    encoded = base64.urlsafe_b64encode(wirejson.dumps(stored_auth(repo), compact=True).encode()).decode()
    return {"X-Registry-Auth": encoded}


# ----- progress streams -----------------------------------------------------------------

def print_progress(cli: Cli, stream: Any, out: TextIO | None) -> dict[str, Any]:
    """Print a JSON progress stream the way docker does without a terminal (None: silently); raise its error."""
    last: dict[str, Any] = {}
    for msg in stream:
        if msg.get("error"):
            raise ApiError(500, msg["error"])
        last = msg
        if out is None or (msg.get("progressDetail") and msg.get("id")):
            continue  # byte counts are only useful on a terminal that redraws
        if "stream" in msg:
            out.write(msg["stream"])
        elif msg.get("status"):
            out.write((f"{msg['id']}: " if msg.get("id") else "") + msg["status"] + "\n")
        out.flush()
    return last


def pull_image(cli: Cli, repo: str, tag: str | None, out: TextIO = sys.stdout, quiet: bool = False) -> None:
    stream = cli.client.json_stream("POST", "/images/create", {"fromImage": repo, "tag": tag or None},
                                    headers=auth_header(repo))
    print_progress(cli, stream, None if quiet else out)


# ----- verbs ------------------------------------------------------------------------------

def images(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import IMAGES_DIGESTS_TABLE, IMAGES_TABLE, ImageRow, image_rows, render_rows, short_id

    p = parser(name, "[OPTIONS] [REPOSITORY[:TAG]]", "List images")
    p.add_argument("-a", "--all", action="store_true", help="show all images (default hides intermediate images)")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("-f", "--filter", action="append", default=[], help="filter output based on conditions provided")
    p.add_argument("--format", help="format output using a custom template")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("reference", nargs="?")
    opts = p.parse_args(args)
    flt = filters(opts.filter) or {}
    if opts.reference:
        flt.setdefault("reference", []).append(opts.reference)
    found = cli.client.get("/images/json", {"all": opts.all or None, "filters": flt or None}) or []
    if opts.quiet:
        seen: list[str] = []
        for image in found:
            ident = image["Id"] if opts.no_trunc else short_id(image["Id"])
            if ident not in seen:
                seen.append(ident)
        cli.out("".join(i + "\n" for i in seen))
        return 0
    rows = image_rows(found, trunc=not opts.no_trunc)
    default = IMAGES_DIGESTS_TABLE if opts.digests else IMAGES_TABLE
    cli.out(render_rows(rows, opts.format, default, ImageRow))
    return 0


def inspect(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.commands.system import inspect_objects

    return inspect_objects(cli, name, args, kind="image")


def rmi(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] IMAGE [IMAGE...]", "Remove one or more images")
    p.add_argument("-f", "--force", action="store_true", help="force removal of the image")
    p.add_argument("--no-prune", action="store_true", help="do not delete untagged parents")
    p.add_argument("images", nargs="+")
    opts = p.parse_args(args)
    failed = False
    for image in opts.images:
        try:
            result = cli.client.call("DELETE", _image_path(image), {"force": opts.force or None,
                                                                     "noprune": opts.no_prune or None})
        except ApiError as exc:
            cli.err(f"Error response from daemon: {exc.message}")
            failed = True
            continue
        for item in result or []:
            for key, label in (("Untagged", "Untagged"), ("Deleted", "Deleted")):
                if item.get(key):
                    cli.out(f"{label}: {item[key]}\n")
    return 1 if failed else 0


def search(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import SEARCH_TABLE, SearchRow, render_rows

    p = parser(name, "[OPTIONS] TERM", "Search for images")
    p.add_argument("-f", "--filter", action="append", default=[], help="filter output based on conditions provided")
    p.add_argument("--format", help="pretty-print search using a Go template")
    p.add_argument("--limit", type=int, default=0, help="max number of search results")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("term")
    opts = p.parse_args(args)
    query = {"term": opts.term, "limit": opts.limit or None, "filters": filters(opts.filter)}
    resp = cli.client.request("GET", "/images/search", query, headers=auth_header(opts.term))
    found = wirejson.loads(resp.read() or b"[]")
    json_fields = opts.format in ("json", "{{json .}}")
    rows = [SearchRow(r, trunc=not opts.no_trunc, as_json=json_fields) for r in found]
    cli.out(render_rows(rows, opts.format, SEARCH_TABLE, SearchRow))
    return 0


def tag(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE")
    p.add_argument("source")
    p.add_argument("target")
    opts = p.parse_args(args)
    repo, tag_ = _split_repo_tag(opts.target)
    cli.client.post(_image_path(opts.source, "/tag"), {"repo": repo, "tag": tag_ or "latest"})
    return 0


def pull(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] NAME[:TAG|@DIGEST]", "Download an image from a registry")
    p.add_argument("-a", "--all-tags", action="store_true", help="download all tagged images in the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")
    p.add_argument("--platform", help="set platform if server is multi-platform capable")
    p.add_argument("image")
    opts = p.parse_args(args)
    repo, tag_ = _split_repo_tag(opts.image)
    if tag_ is None and "@" not in repo and not opts.all_tags:
        tag_ = "latest"
        if not opts.quiet:
            cli.out("Using default tag: latest\n")
    pull_image(cli, repo, tag_, quiet=opts.quiet)
    cli.out(f"{repo}:{tag_}\n" if tag_ else f"{repo}\n")
    return 0


def push(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] NAME[:TAG]", "Upload an image to a registry")
    p.add_argument("-a", "--all-tags", action="store_true", help="push all tags of an image to the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")
    p.add_argument("image")
    opts = p.parse_args(args)
    repo, tag_ = _split_repo_tag(opts.image)
    stream = cli.client.json_stream("POST", _image_path(repo, "/push"), {"tag": tag_},
                                    headers=auth_header(repo))
    print_progress(cli, stream, None if opts.quiet else sys.stdout)
    if opts.quiet:
        cli.out(opts.image + "\n")
    return 0


def import_(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] file|URL|- [REPOSITORY[:TAG]]",
               "Import the contents from a tarball to create a filesystem image")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", help="set commit message for imported image")
    p.add_argument("--platform", help="set platform if server is multi-platform capable")
    p.add_argument("source")
    p.add_argument("reference", nargs="*")  # docker's takes at least one argument and ignores a third
    opts = p.parse_args(args)
    opts.reference = (opts.reference or [None])[0]
    repo, tag_ = _split_repo_tag(opts.reference) if opts.reference else (None, None)
    query: dict[str, Any] = {"repo": repo, "tag": tag_, "message": opts.message, "changes": opts.change or None}
    body: Any = None
    if opts.source == "-":
        query["fromSrc"] = "-"
        body = file_chunks(sys.stdin.buffer)
    elif "://" in opts.source:
        query["fromSrc"] = opts.source
    else:
        query["fromSrc"] = "-"
        try:
            body = open(opts.source, "rb")  # noqa: SIM115  (streamed as the request body below)
        except OSError as exc:
            raise CommandError(f"open {opts.source}: {(exc.strerror or str(exc)).lower()}", 1) from None
    stream = cli.client.json_stream("POST", "/images/create", query, body, content_type="application/x-tar")
    last = print_progress(cli, stream, None)
    cli.out((last.get("status") or last.get("stream") or "").strip() + "\n")
    return 0


def load(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS]", "Load an image from a tar archive or STDIN")
    p.add_argument("-i", "--input", help="read from tar archive file, instead of STDIN")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the load output")
    opts = p.parse_args(args)
    if opts.input:
        try:
            body: Any = open(opts.input, "rb")  # noqa: SIM115  (streamed as the request body below)
        except OSError as exc:
            raise CommandError(f"open {opts.input}: {(exc.strerror or str(exc)).lower()}", 1) from None
    else:
        if sys.stdin.isatty():
            raise CommandError("requested load from stdin, but stdin is empty", 1)
        body = file_chunks(sys.stdin.buffer)
    stream = cli.client.json_stream("POST", "/images/load", {"quiet": opts.quiet or None}, body,
                                    content_type="application/x-tar")
    print_progress(cli, stream, sys.stdout)
    return 0


def save(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] IMAGE [IMAGE...]",
               "Save one or more images to a tar archive (streamed to STDOUT by default)")
    p.add_argument("-o", "--output", help="write to a file, instead of STDOUT")
    p.add_argument("images", nargs="+")
    opts = p.parse_args(args)
    save_stream(cli.client.request("GET", "/images/get", {"names": opts.images}, stream=True), opts.output)
    return 0


def history(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.formatting import Row, ellipsis, render_rows, short_id
    from coracle.cli.units import ago, go_time, human_size

    p = parser(name, "[OPTIONS] IMAGE", "Show the history of an image")
    p.add_argument("-H", "--human", default="true", help="print sizes and dates in human readable format")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("--format", help="format output using a custom template")
    p.add_argument("image")
    opts = p.parse_args(args)
    entries = cli.client.get(_image_path(opts.image, "/history")) or []
    human = opts.human.lower() not in ("false", "0")

    class HistoryRow(Row):
        FIELDS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY",
                  "Size": "SIZE", "Comment": "COMMENT"}

        def __init__(self, h: dict[str, Any]) -> None:
            ident = h.get("Id") or "<missing>"
            self.ID = ident if opts.no_trunc or ident == "<missing>" else short_id(ident)
            self.CreatedSince = ago(h.get("Created", 0)) if human else go_time(h.get("Created", 0))
            self.CreatedAt = go_time(h.get("Created", 0))
            created_by = (h.get("CreatedBy") or "").replace("\t", " ")
            self.CreatedBy = created_by if opts.no_trunc else ellipsis(created_by, 45)
            self.Size = human_size(h.get("Size") or 0) if human else str(h.get("Size") or 0)
            self.Comment = h.get("Comment") or ""

    rows = [HistoryRow(h) for h in entries]
    if opts.quiet:
        cli.out("".join(r.ID + "\n" for r in rows))
        return 0
    default = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
    cli.out(render_rows(rows, opts.format, default, HistoryRow))
    return 0


def prune(cli: Cli, name: str, args: list[str]) -> int:
    from coracle.cli.units import human_size

    p = parser(name, "[OPTIONS]", "Remove unused images")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused images, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", default=[], help="provide filter values (e.g. 'until=<timestamp>')")
    opts = p.parse_args(args)
    warning = ("WARNING! This will remove all images without at least one container associated to them."
               if opts.all else "WARNING! This will remove all dangling images.")
    if not opts.force and not confirm(f"{warning}\nAre you sure you want to continue?"):
        return 0
    flt = filters(opts.filter) or {}
    flt["dangling"] = ["false" if opts.all else "true"]
    result = cli.client.post("/images/prune", {"filters": flt}) or {}
    cli.out(format_deleted_images(result.get("ImagesDeleted") or []))
    cli.out(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed') or 0)}\n")
    return 0


def format_deleted_images(deleted: list[dict[str, str]]) -> str:
    if not deleted:
        return ""
    lines = ["Deleted Images:"]
    for item in deleted:
        if item.get("Untagged"):
            lines.append(f"untagged: {item['Untagged']}")
        if item.get("Deleted"):
            lines.append(f"deleted: {item['Deleted']}")
    return "\n".join(lines) + "\n\n"


def commit(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] CONTAINER [REPOSITORY[:TAG]]", "Create a new image from a container's changes")
    p.add_argument("-a", "--author", help="author (e.g., \"John Hannibal Smith <hannibal@a-team.com>\")")
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("-p", "--pause", default="true", help="pause container during commit")
    p.add_argument("container")
    p.add_argument("reference", nargs="?")
    opts = p.parse_args(args)
    repo, tag_ = _split_repo_tag(opts.reference) if opts.reference else (None, None)
    query = {"container": opts.container, "repo": repo, "tag": tag_, "author": opts.author,
             "comment": opts.message, "changes": opts.change or None,
             "pause": opts.pause.lower() not in ("false", "0")}
    result = cli.client.post("/commit", query, {})
    cli.out(result["Id"] + "\n")
    return 0


def login(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[OPTIONS] [SERVER]", "Log in to a registry")
    p.add_argument("-u", "--username", help="username")
    p.add_argument("-p", "--password", help="password or personal access token")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")
    p.add_argument("server", nargs="?")
    opts = p.parse_args(args)
    server = opts.server or DEFAULT_REGISTRY
    password = opts.password
    if opts.password_stdin:
        if opts.password:
            raise CommandError("--password and --password-stdin are mutually exclusive", 1)
        if not opts.username:
            raise CommandError("Must provide --username with --password-stdin", 1)
        password = sys.stdin.read().rstrip("\r\n")
    username = opts.username
    if not username:
        if not sys.stdin.isatty():
            raise CommandError("Error: Cannot perform an interactive login from a non TTY device", 1)
        username = input("Username: ").strip()
    if password is None:
        if not sys.stdin.isatty():
            raise CommandError("Error: Cannot perform an interactive login from a non TTY device", 1)
        import getpass

        password = getpass.getpass("Password: ")
    result = cli.client.post("/auth", body={"username": username, "password": password, "serveraddress": server}) or {}
    config = _load_config()
    import base64

    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    config.setdefault("auths", {})[server] = {"auth": token}
    _save_config(config)
    cli.out((result.get("Status") or "Login Succeeded") + "\n")
    return 0


def logout(cli: Cli, name: str, args: list[str]) -> int:
    p = parser(name, "[SERVER]", "Log out from a registry")
    p.add_argument("server", nargs="?")
    server = p.parse_args(args).server or DEFAULT_REGISTRY
    config = _load_config()
    if server not in (config.get("auths") or {}):
        cli.out(f"Not logged in to {server}\n")
        return 0
    cli.out(f"Removing login credentials for {server}\n")
    del config["auths"][server]
    _save_config(config)
    return 0
