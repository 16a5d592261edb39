"""Logging set-up shared by the commands."""

from __future__ import annotations

import logging


def quiet_library_logs(verbose: bool) -> None:
    """pymodbus logs every missed response at ERROR with a hex dump of recent frames. The
    device layer already turns each failure into data and a one-line warning in words, so the
    library's own log is shown only with --verbose."""
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
