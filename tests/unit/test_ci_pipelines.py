"""The example ops pipelines in ci/ run only commands the CLI has, with options it
takes (issue 15): each `provisioner ...` line of each file is parsed against the real
command tree."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from provisioner.cli import app

CI = Path(__file__).resolve().parents[2] / "ci"
FILES = sorted(CI.glob("*.yml"))


def _scripts(node: Any) -> list[str]:
    """Every shell line under a `script`, `before_script` or `run` key, anywhere."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("script", "before_script", "run"):
                found += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
            else:
                found += _scripts(value)
    elif isinstance(node, list):
        for value in node:
            found += _scripts(value)
    return found


def _commands(path: Path) -> list[list[str]]:
    lines = [line for script in _scripts(yaml.safe_load(path.read_text())) for line in script.splitlines()]
    out = []
    for line in lines:
        words = shlex.split(line, comments=True)
        cut = next((i for i, w in enumerate(words) if w in (">", ">>", "|", "&&", ";")), len(words))
        if words and words[0] == "provisioner":
            out.append(words[1:cut])
    return out


def _check(words: list[str]) -> None:
    """Walk the command tree along ``words``; every option must be one the command takes."""
    command: Any = typer.main.get_command(app)
    path = []
    while words and hasattr(command, "commands") and not words[0].startswith("-"):
        name = words.pop(0)
        assert name in command.commands, f"no command `provisioner {' '.join([*path, name])}`"
        command, path = command.commands[name], [*path, name]
    assert not hasattr(command, "commands"), f"`provisioner {' '.join(path)}` needs a sub-command"
    takes = {opt for p in command.params for opt in getattr(p, "opts", []) if opt.startswith("-")}
    flags = {opt for p in command.params if getattr(p, "is_flag", False) for opt in p.opts}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            assert option in takes, f"`provisioner {' '.join(path)}` has no option {option}"
            i += 1 if (option in flags or "=" in word) else 2
        else:
            i += 1


def test_there_are_pipelines_for_gitlab_and_github() -> None:
    assert {p.name for p in FILES} >= {"gitlab-ci.yml", "github-actions.yml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_provisioner_command_in_the_pipeline_exists_with_its_options(path: Path) -> None:
    commands = _commands(path)
    assert {tuple(c[:2]) for c in commands} >= {("nodes", "drift"), ("nodes", "rollout")}
    assert any(c[:1] == ["sweep"] for c in commands)
    for words in commands:
        _check(list(words))


def test_the_check_refuses_what_does_not_exist() -> None:
    with pytest.raises(AssertionError, match="no option --canry"):
        _check(["nodes", "rollout", "--canry", "1"])
    with pytest.raises(AssertionError, match="no command"):
        _check(["nodes", "rollback"])
