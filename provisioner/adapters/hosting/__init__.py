"""Hosting nodes and accounts through Ansible (ansible-runner)."""

from provisioner.adapters.hosting.ansible import RunResult, Target, run_playbook

__all__ = ["RunResult", "Target", "run_playbook"]
