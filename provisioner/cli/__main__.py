"""`python -m provisioner.cli`, the same as the `provisioner` entry point."""

from provisioner.cli import main

main()
