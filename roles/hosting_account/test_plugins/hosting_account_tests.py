"""Jinja test ``hosting_account_name`` for the roles' asserts: the account-name rule of
module_utils/hosting_names.py (a link to provisioner/domain/hosting_names.py), so a
playbook run by hand refuses the same names the controller and the module refuse.

roles/hosting_backup/test_plugins/ holds a link to this file; the rule is found next
to where the link points.
"""

import importlib.machinery
import importlib.util
import os

SOURCE = os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "module_utils",
                      "hosting_names.py")


def _load_rule():
    loader = importlib.machinery.SourceFileLoader("hosting_account_names_rule", SOURCE)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class TestModule:
    """The role's Jinja tests."""

    def tests(self):
        return {"hosting_account_name": _load_rule().is_account_name}
