"""``python -m qnect`` runs the CLI."""

from qnect.cli import main

main()
