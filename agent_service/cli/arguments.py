"""What the command line is given, read: JSON text, files or standard input, durations."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent_service.errors import TaskValidationError


def parse_json(raw: str, *, what: str) -> Any:
    """The JSON value `raw` holds. Raises: TaskValidationError naming `what` when it is not JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TaskValidationError(f"{what} is not valid JSON: {exc}") from None


def read_text(path: str, *, what: str) -> str:
    """The UTF-8 text of file `path`, or of standard input for `-`, given as option `what`.
    Raises: TaskValidationError when it cannot be read or is not UTF-8."""
    try:
        return (sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()).decode("utf-8")
    except OSError as exc:
        raise TaskValidationError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TaskValidationError(f"{what} {path} is not UTF-8 text") from None


def parse_duration(text: str) -> timedelta:
    """`30m`, `24h`, `7d` (or seconds: `90s`, `90`) as a timedelta, for argparse."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 24h or 7d, got {text!r}")
    unit = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[found.group(2)]
    return timedelta(**{unit: float(found.group(1))})
