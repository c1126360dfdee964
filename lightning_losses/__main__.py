"""``python -m lightning_losses`` runs the CLI."""

from lightning_losses.cli import main

main()
