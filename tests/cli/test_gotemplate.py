"""The Go-template subset, on the templates docker users actually write."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from coracle.cli.gotemplate import Template, TemplateError, render

INSPECT: dict[str, Any] = {
    "Id": "4f3c2a1b" * 8,
    "Name": "/web",
    "State": {"Status": "running", "Running": True, "Paused": False, "Pid": 4242, "ExitCode": 0},
    "Config": {"Image": "busybox", "Env": ["PATH=/bin", "A=1"], "Cmd": ["sh", "-c", "sleep 1"],
               "Labels": {"com.example.role": "web", "app": "shop"}, "Entrypoint": None},
    "HostConfig": {"Memory": 67108864, "NanoCpus": 1500000000, "RestartPolicy": {"Name": "no"}},
    "NetworkSettings": {
        "IPAddress": "172.17.0.2",
        "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
        "Networks": {"bridge": {"IPAddress": "172.17.0.2", "Gateway": "172.17.0.1"},
                     "backend": {"IPAddress": "10.1.0.5", "Gateway": "10.1.0.1"}},
    },
    "Mounts": [{"Source": "/srv", "Destination": "/data", "RW": False}],
}


@pytest.mark.parametrize("template, expected", [
    ("{{.Name}}", "/web"),
    ("{{.State.Status}}", "running"),
    ("{{.State.Running}}", "true"),
    ("{{.State.Pid}}", "4242"),
    ("{{.HostConfig.Memory}}", "67108864"),
    ("{{.Config.Entrypoint}}", "<nil>"),
    ("{{.Config.Nope}}", "<no value>"),
    ("{{.Config.Env}}", "[PATH=/bin A=1]"),
    ("{{.Config.Labels}}", "map[app:shop com.example.role:web]"),
    ("{{.NetworkSettings.IPAddress}}", "172.17.0.2"),
    # docker docs: docker inspect --format='{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}'
    ("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "10.1.0.5172.17.0.2"),
    ("{{range $name, $net := .NetworkSettings.Networks}}{{$name}}={{$net.Gateway}} {{end}}",
     "backend=10.1.0.1 bridge=172.17.0.1 "),
    # docker docs: '{{range $p, $conf := .NetworkSettings.Ports}} {{$p}} -> {{(index $conf 0).HostPort}} {{end}}'
    ("{{range $p, $conf := .NetworkSettings.Ports}} {{$p}} -> {{(index $conf 0).HostPort}} {{end}}",
     " 80/tcp -> 8080 "),
    ('{{index .Config.Labels "com.example.role"}}', "web"),
    ('{{index .Config.Labels "absent"}}', ""),
    ("{{index .Config.Env 1}}", "A=1"),
    ('{{(index .NetworkSettings.Networks "backend").IPAddress}}', "10.1.0.5"),
    ("{{json .Config.Labels}}", '{"app":"shop","com.example.role":"web"}'),  # Go sorts map keys
    ("{{json .State}}", '{"Status":"running","Running":true,"Paused":false,"Pid":4242,"ExitCode":0}'),
    ("{{json .Mounts}}", '[{"Source":"/srv","Destination":"/data","RW":false}]'),
    ('{{join .Config.Cmd " "}}', "sh -c sleep 1"),
    ('{{join .Config.Env ","}}', "PATH=/bin,A=1"),
    ("{{len .Config.Env}}", "2"),
    ("{{len .NetworkSettings.Networks}}", "2"),
    ("{{upper .State.Status}}", "RUNNING"),
    ("{{lower .Config.Image | upper}}", "BUSYBOX"),
    ("{{title .State.Status}}", "Running"),
    ('{{split "a,b,c" ","}}', "[a b c]"),
    ("{{println .Name}}", "/web\n"),
    ('{{printf "%s:%d" .Config.Image .State.Pid}}', "busybox:4242"),
    ('{{printf "%-10s|" .State.Status}}', "running   |"),
    ('{{print "a" 1 2 "b"}}', "a1 2b"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if .State.Paused}}paused{{else if .State.Running}}running{{else}}stopped{{end}}", "running"),
    ('{{if eq .State.Status "exited" "dead"}}gone{{else}}here{{end}}', "here"),
    ('{{if ne .State.ExitCode 0}}failed{{end}}', ""),
    ("{{if and .State.Running (not .State.Paused)}}ok{{end}}", "ok"),
    ("{{if or .State.Paused .Config.Nope}}x{{else}}y{{end}}", "y"),
    ("{{if gt .State.Pid 100}}big{{end}}", "big"),
    ("{{with .HostConfig.RestartPolicy}}{{.Name}}{{end}}", "no"),
    ("{{with .Config.Nope}}x{{else}}none{{end}}", "none"),
    ("{{range .Config.Nope}}x{{else}}empty{{end}}", "empty"),
    ("{{range $i, $e := .Config.Env}}{{$i}}:{{$e}};{{end}}", "0:PATH=/bin;1:A=1;"),
    ("{{range .Mounts}}{{.Source}}:{{.Destination}}{{if not .RW}}:ro{{end}}{{end}}", "/srv:/data:ro"),
    ("{{$n := .Name}}{{range .Config.Env}}{{$n}} {{end}}", "/web /web "),
    ("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}", "2"),
    ("{{range .Config.Env}}{{$.Name}}{{end}}", "/web/web"),
    ("a {{- .Name -}} b", "a/webb"),
    ("{{/* a comment */}}x", "x"),
    ("{{- /* trimmed */ -}}  x", "x"),
    ("{{`raw \\n`}}", "raw \\n"),
    ('{{"esc\\t"}}', "esc\t"),
    ("{{truncate .Config.Image 3}}", "bus"),
    ("{{pad .Config.Image 1 2}}", " busybox  "),
    ("{{.}}", None),  # the whole map prints as a Go map
])
def test_docker_style_templates(template: str, expected: str | None) -> None:
    out = render(template, INSPECT)
    if expected is None:
        assert out.startswith("map[Config:map[")
    else:
        assert out == expected


class Row:
    """A ps-like context: attributes are fields, methods take arguments."""

    ID = "4f3c2a1b4f3c"
    Names = "web"
    Size = "0B"

    def Label(self, name: str) -> str:
        return {"app": "shop"}.get(name, "")

    def as_dict(self) -> dict[str, str]:
        return {"ID": self.ID, "Names": self.Names}


def test_contexts_with_methods_and_json() -> None:
    assert render('{{.ID}}\t{{.Label "app"}}', Row()) == "4f3c2a1b4f3c\tshop"
    assert render("{{json .}}", Row()) == '{"ID":"4f3c2a1b4f3c","Names":"web"}'
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        render("{{.Nope}}", Row())


@pytest.mark.parametrize("bad, message", [
    ("{{.Name", "unclosed action"),
    ("{{if .X}}a", "unexpected EOF"),
    ("{{end}}", "unexpected"),
    ("{{nosuchfunc .X}}", 'function "nosuchfunc" not defined'),
    ("{{(.X}}", "unclosed left paren"),
])
def test_parse_errors_are_reported_like_docker(bad: str, message: str) -> None:
    with pytest.raises(TemplateError, match="template parsing error") as exc:
        Template(bad)
    assert message in str(exc.value)


def test_execution_errors() -> None:
    with pytest.raises(TemplateError, match="index out of range"):
        render("{{index .Config.Env 5}}", INSPECT)
    with pytest.raises(TemplateError, match="nil pointer"):
        render("{{.Config.Entrypoint.X}}", INSPECT)
    with pytest.raises(TemplateError, match="can't give argument to non-function"):
        render('{{. "x"}}', INSPECT)


def test_template_is_reusable_across_rows() -> None:
    t = Template("{{.Names}}")
    assert [t.execute({"Names": n}) for n in ("a", "b")] == ["a", "b"]


@pytest.mark.parametrize("template, expected", [
    ("{{print 0x1f 017 -3 +4}}", "31 15 -3 4"),  # Go's integer literals
    ("{{print 1.5 -2.25e1 .5}}", "1.5 -22.5 0.5"),  # floats, `.5` among them
    ("{{print 'a' '\\n'}}", "97 10"),  # characters print as their code, as in Go
    ('{{print "a\\"b" `c"d`}}', 'a"bc"d'),
    ("{{print (len .Config.Env)|printf \"%d!\"}}", "2!"),  # tokens glued without spaces
    ("{{$a:=1}}{{$a=2}}{{$a}}", "2"),
])
def test_literals_and_punctuation_are_lexed_as_go_does(template: str, expected: str) -> None:
    assert render(template, INSPECT) == expected


@pytest.mark.parametrize("bad", ['{{"open}}', "{{'ab'}}", "{{`open}}", "{{.Name # x}}", "{{$a : 1}}", "{{1 ~ 2}}",
                                 "{{print 019}}"])
def test_what_does_not_lex_is_a_parse_error(bad: str) -> None:
    with pytest.raises(TemplateError, match="template parsing error"):
        Template(bad)


def test_docker_version_default_output_needs_no_regex_engine() -> None:
    """`version` renders its default layout through the template; it must not pay `re`'s import."""
    code = ("import sys; from coracle.cli.gotemplate import Template;"
            "from coracle.cli.commands.system import VERSION_TEMPLATE as T;"
            "Template(T).execute({'Client': {'Version': '1'}, 'Server': None}); print('re' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
