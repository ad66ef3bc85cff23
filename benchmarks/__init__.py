"""The benchmark suite: ``python -m benchmarks`` (see ``run_all.py``)."""
