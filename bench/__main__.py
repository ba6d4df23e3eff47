"""``python -m bench``: run every benchmark (today: ingest)."""

from bench.ingest import main

raise SystemExit(main())
