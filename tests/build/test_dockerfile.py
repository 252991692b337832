"""The Dockerfile parser and Docker's word rules, without a daemon."""

from __future__ import annotations

import pytest

from coracle.build.dockerfile import ParseError, key_values, parse
from coracle.build.ignore import IgnoreRules
from coracle.build.words import Lexer
from coracle.errors import InvalidParameter


def test_continuations_comments_and_blank_lines() -> None:
    df = parse("FROM busybox\n# a comment\nRUN echo a \\\n    # dropped comment\n\n    && echo b\n\nCMD [\"sh\"]\n")
    assert [i.keyword for i in df.instructions] == ["FROM", "RUN", "CMD"]
    run = df.instructions[1]
    assert run.text == "echo a     && echo b"
    assert run.line == 3
    assert df.instructions[2].json_args() == ["sh"]


def test_escape_directive_backtick() -> None:
    df = parse("# escape=`\nFROM busybox\nRUN echo c:\\windows `\n  && echo done\n")
    assert df.escape == "`"
    assert df.instructions[1].text == "echo c:\\windows   && echo done"


def test_syntax_directive_is_accepted_and_directives_stop_at_first_comment() -> None:
    df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox\n")
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    late = parse("# hello\n# escape=`\nFROM busybox\nRUN echo \\\n x\n")
    assert late.escape == "\\" and late.instructions[1].text == "echo  x"


def test_unknown_instruction_names_its_line() -> None:
    with pytest.raises(ParseError) as err:
        parse("FROM busybox\n\nFOO bar\n")
    assert str(err.value) == "dockerfile parse error on line 3: unknown instruction: FOO"
    assert err.value.status == 400


def test_flags_and_exec_versus_shell_form() -> None:
    df = parse("FROM --platform=linux/amd64 busybox AS base\n"
               "COPY --from=base --chown=1:2 --chmod=600 --link a b /dst/\n"
               "RUN [\"echo\", \"x\"]\nRUN [not json\n")
    frm, copy, run_exec, run_shell = df.instructions
    assert frm.flag("platform") == "linux/amd64" and frm.text == "busybox AS base"
    assert copy.flags == {"from": ["base"], "chown": ["1:2"], "chmod": ["600"], "link": ["true"]}
    assert copy.text == "a b /dst/"
    assert run_exec.json_args() == ["echo", "x"]
    assert run_shell.json_args() is None
    with pytest.raises(ParseError, match="unknown flag: bogus"):
        parse("FROM busybox\nCOPY --bogus=1 a b\n")


def test_heredocs() -> None:
    df = parse("FROM busybox\nRUN <<EOF\necho one\necho two\nEOF\n"
               "COPY <<-\"END\" /greeting\n\thello $NAME\n\tEND\nRUN cat /greeting\n")
    run, copy, last = df.instructions[1:]
    assert run.heredocs[0].content == "echo one\necho two\n" and run.heredocs[0].expand
    assert copy.heredocs[0].content == "hello $NAME\n" and not copy.heredocs[0].expand
    assert copy.text == '<<-"END" /greeting'
    assert last.text == "cat /greeting" and last.line == 9
    with pytest.raises(ParseError, match="unterminated heredoc"):
        parse("FROM busybox\nRUN <<EOF\necho\n")


def test_stages_and_args_before_from() -> None:
    meta, stages = parse("ARG BASE=busybox\nFROM $BASE AS a\nRUN x\nFROM a\nENV k=v\n").stages()
    assert [m.text for m in meta] == ["BASE=busybox"]
    assert [[i.keyword for i in s] for s in stages] == [["FROM", "RUN"], ["FROM", "ENV"]]
    with pytest.raises(ParseError, match="line 1: RUN is not allowed before FROM"):
        parse("RUN x\nFROM busybox\n").stages()


def test_key_values_forms() -> None:
    ins = parse('FROM b\nENV A=1 B="two words" C=three\\ four\n').instructions[1]
    assert key_values(ins) == [("A", "1"), ("B", '"two words"'), ("C", "three\\ four")]
    legacy = parse("FROM b\nENV NAME the whole rest\n").instructions[1]
    assert key_values(legacy) == [("NAME", "the whole rest")]
    arg = parse("FROM b\nARG X Y=2\n").instructions[1]
    assert key_values(arg) == [("X", None), ("Y", "2")]


@pytest.mark.parametrize("text, expected", [
    ("$A", "a"), ("${A}b", "ab"), ("'$A'", "$A"), ('"$A x"', "a x"), ("\\$A", "$A"),
    ("${UNSET:-fallback}", "fallback"), ("${A:-fallback}", "a"), ("${EMPTY:-f}", "f"), ("${EMPTY-f}", ""),
    ("${A:+set}", "set"), ("${UNSET:+set}", ""), ("${EMPTY:+set}", ""), ("${EMPTY+set}", "set"),
    ("${UNSET:-$A/x}", "a/x"), ('"a\\"b"', 'a"b'), ('"c:\\dir"', "c:\\dir"), ("$", "$"), ("a$-b", "a$-b"),
])
def test_expansion_follows_docker(text: str, expected: str) -> None:
    assert Lexer({"A": "a", "EMPTY": ""}).word(text) == expected


def test_word_lists_split_unquoted_expansions_only() -> None:
    lexer = Lexer({"FILES": "a b", "DIR": "/x y"})
    assert lexer.words('$FILES "$DIR" c') == ["a", "b", "/x y", "c"]
    assert lexer.used == {"FILES", "DIR"}


def test_expansion_errors_are_clear() -> None:
    with pytest.raises(InvalidParameter, match="REQ: needed"):
        Lexer({}).word("${REQ:?needed}")
    with pytest.raises(InvalidParameter, match="matching single-quote"):
        Lexer({}).word("'open")


def test_dockerignore_rules() -> None:
    rules = IgnoreRules("# comment\n*.log\n/build\n**/secret*\n!keep.log\ndocs/**/*.md\n")
    assert rules.ignored("x.log") and not rules.ignored("keep.log")
    assert rules.ignored("build/out/a.o")  # a parent directory matched
    assert rules.ignored("deep/down/secret.txt") and rules.ignored("secret.key")
    assert rules.ignored("docs/a/b/c.md") and not rules.ignored("docs/a/b/c.txt")
    assert not rules.ignored("sub/x.log")  # `*` does not cross `/`
