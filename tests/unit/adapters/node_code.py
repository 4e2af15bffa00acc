"""The roles' node-side Python, loaded in this process the way the node loads it.

The module imports ``ansible.module_utils.hosting_names`` (AnsiballZ ships it); the helper
and the node scripts import ``hosting_names`` from /usr/local/lib/hosting. Here both
names resolve to the copy the roles ship (not to ``provisioner.domain``), so a test sees
what a node would run. Templates are rendered with the role's defaults.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROLES = Path(__file__).resolve().parents[3] / "roles"
MODULE = ROLES / "hosting_account" / "library" / "hosting_account.py"
HELPER = ROLES / "hosting_account" / "files" / "usr" / "local" / "sbin" / "hosting-account"
USAGE = ROLES / "hosting_node" / "templates" / "usr" / "local" / "sbin" / "hosting-usage.j2"
BACKUP = ROLES / "hosting_node" / "templates" / "usr" / "local" / "sbin" / "hosting-backup.j2"
#: Where the roles take the account-name rule from (module_utils, and the file installed
#: on the node); each must be provisioner/domain/hosting_names.py, byte for byte.
SHIPPED_RULES = (
    ROLES / "hosting_account" / "module_utils" / "hosting_names.py",
    ROLES / "hosting_node" / "files" / "usr" / "local" / "lib" / "hosting" / "hosting_names.py",
)
_RULE_NAMES = ("hosting_names", "ansible.module_utils.hosting_names")


def load_file(name: str, path: Path) -> Any:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@contextmanager
def node_imports() -> Iterator[Any]:
    """While inside, ``hosting_names`` and ``ansible.module_utils.hosting_names`` are the
    shipped rule; sys.path and sys.modules are as before afterwards."""
    rule = load_file("hosting_names", SHIPPED_RULES[0])
    saved_path = list(sys.path)
    saved = {name: sys.modules.get(name) for name in _RULE_NAMES}
    sys.modules.update(dict.fromkeys(_RULE_NAMES, rule))
    try:
        yield rule
    finally:
        sys.path[:] = saved_path
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def load_node(name: str, path: Path) -> Any:
    """A node-side Python file (the module or the helper) as a module."""
    with node_imports():
        return load_file(name, path)


def load_node_template(name: str, path: Path) -> Any:
    """A node script the role renders (hosting-usage, hosting-backup), with its defaults."""
    defaults = yaml.safe_load((ROLES / "hosting_node" / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701 (Python source, not HTML)
    env.filters["to_json"] = json.dumps
    context = {**defaults, "ansible_managed": "Managed by Ansible (test)", "inventory_hostname": "node1"}
    # defaults refer to each other ("{{ hosting_node_backup_root }}/terminated")
    for key, value in defaults.items():
        if isinstance(value, str) and "{{" in value:
            context[key] = env.from_string(value).render(context)
    source = env.from_string(path.read_text()).render(context)
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    with node_imports():
        exec(compile(source, str(path), "exec"), mod.__dict__)  # noqa: S102 (the role's own script)
    return mod
