"""What every command shares: logging set-up and turning library errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable


def run_command(body: Callable[[], int]) -> int:
    """Returns the exit code of ``body``; FacefuseErrors become one line on stderr and exit 2."""
    level = os.environ.get("FACEFUSE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    from facefuse.errors import FacefuseError

    try:
        return body()
    except FacefuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
