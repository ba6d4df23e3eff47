"""The server can take as many sockets as the hard open-file limit allows."""

from __future__ import annotations

import resource
import subprocess
import sys

from tracker.rlimit import raise_open_files


def test_soft_limit_is_raised_to_the_hard_one() -> None:
    # in a child process: this one keeps its limits
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "from tracker.rlimit import raise_open_files\n"
        "print(*raise_open_files(), hard)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    soft, hard, before = (int(word) for word in out.split())
    assert hard == before
    assert soft == hard or (hard == resource.RLIM_INFINITY and soft > 256)


def test_raising_again_changes_nothing() -> None:
    first = raise_open_files()
    assert raise_open_files() == first == resource.getrlimit(resource.RLIMIT_NOFILE)
