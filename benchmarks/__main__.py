"""``python -m benchmarks``: run the suite (``run_all.py``)."""

from .run_all import main

raise SystemExit(main())
