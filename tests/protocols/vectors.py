"""The shared conformance corpus: ../shared/vectors beside this repository
(or $TRACKER_VECTORS). Missing vectors fail the tests loudly; they never skip."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

VECTORS = Path(
    os.environ.get("TRACKER_VECTORS") or Path(__file__).resolve().parents[3] / "shared" / "vectors"
)


def load(name: str) -> list[dict[str, Any]]:
    """Every vector of ``name`` (``gt06.jsonl``, ``gt06.frames.jsonl``, ...)."""
    path = VECTORS / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the protocol tests need ../shared/vectors beside the "
            "repository, or TRACKER_VECTORS pointing at it"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def line(vector: dict[str, Any]) -> str:
    """The vector's source line in traccar's test file (``L17``): its name in test ids."""
    return str(vector["source"]).rsplit(":", 1)[-1]
