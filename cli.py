"""The design's command line, `python cli.py ...` from the checkout: the same commands as the installed
`agent-service` console script (`agent_service.cli`)."""

import sys

from agent_service.cli import main

if __name__ == "__main__":
    sys.exit(main())
