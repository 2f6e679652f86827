"""Flower's configuration file, which Flower reads from the directory it starts in: the design's
`celery -A worker flower` serves under the same rule as `python cli.py flower` (loopback without a login; any other
address only with FLOWER_BASIC_AUTH), with the address, port and logins of the settings (`.env` too)."""

from tornado.options import options

from agent_service.cli.processes import flower_config
from agent_service.config import get_settings
from agent_service.errors import ConfigurationError

# Flower has read FLOWER_* from the environment and its command line before this file; it reads the command
# line again after it, so what it was given there still wins.
try:
    _config = flower_config(
        get_settings(), address=options.address, port=options.port, logins=list(options.basic_auth or [])
    )
except ConfigurationError as exc:
    raise SystemExit(f"error: {exc}") from None
address, port = _config["address"], _config["port"]
if "basic_auth" in _config:
    basic_auth = _config["basic_auth"]
