"""The installed `coracle` launcher: same command, started without site, bytecode whatever the environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from fakeengine import FakeEngine, coracle

import coracle as package
from coracle.cli import launcher


def test_a_fresh_install_gets_bytecode_even_with_pythondontwritebytecode(tmp_path: Any) -> None:
    root = tmp_path / "lib"
    shutil.copytree(os.path.dirname(package.__file__), root / "coracle",
                    ignore=shutil.ignore_patterns("__pycache__"))
    command = str(tmp_path / "coracle")
    launcher.write(command, root=str(root))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path / "nowhere")}
    res = subprocess.run([command, "--version"], capture_output=True, text=True, env=env, timeout=30)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"coracle version {package.__version__}\n", "")
    assert any(name.startswith("main.") for name in os.listdir(root / "coracle" / "cli" / "__pycache__"))


def test_a_broken_coracle_on_pythonpath_does_not_shadow_the_installed_one(engine: FakeEngine, tmp_path: Any,
                                                                            monkeypatch: Any) -> None:
    (tmp_path / "coracle").mkdir()
    (tmp_path / "coracle" / "__init__.py").write_text("raise SystemExit('shadowed')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    res = coracle(engine.host, "ps", "-aq")
    assert res.returncode == 0 and len(res.stdout.split()) == len(engine.containers)


def test_template_errors_keep_their_message_and_status(engine: FakeEngine) -> None:
    res = coracle(engine.host, "ps", "--format", "{{.Nope}}")
    assert res.returncode == 1
    assert "can't evaluate field Nope" in res.stderr
    res = coracle(engine.host, "version", "--format", "{{.Client.Version")
    assert res.returncode == 1 and "template parsing error" in res.stderr
