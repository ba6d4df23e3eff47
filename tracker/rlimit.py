"""The open-file limit: every connected unit holds one socket, so one file descriptor.

Distributions start processes with a soft ``RLIMIT_NOFILE`` of 1,024, which would
cap the gateway at about a thousand units whatever ``gateway.max_connections``
says. A process may raise its own soft limit up to the hard limit without any
privilege; going past the hard limit takes the service manager
(``LimitNOFILE=`` in systemd, ``ulimits`` in Docker Compose) or root.
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

NR_OPEN = Path("/proc/sys/fs/nr_open")  # Linux: the most RLIMIT_NOFILE may ever be
NR_OPEN_DEFAULT = 1_048_576


def raise_open_files() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; return (soft, hard) as they now are.

    An unlimited hard limit is taken as the kernel's ``fs.nr_open`` (setting the
    soft limit to "unlimited" fails for this resource). When the system refuses,
    the limits stay as they were: the caller compares them with what it needs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard
    if hard == resource.RLIM_INFINITY:
        try:
            ceiling = int(NR_OPEN.read_text())
        except (OSError, ValueError):
            ceiling = NR_OPEN_DEFAULT
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        # refused (e.g. macOS caps it lower, at OPEN_MAX): keep what we have
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard
