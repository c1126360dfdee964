"""Speed and memory benchmarks of ``lightning_losses``: ``python -m benchmarks.run`` (see ``benchmarks/README.md``)."""
