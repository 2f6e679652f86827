"""`python -m agent_service ...`: the command line, as the `agent-service` console script."""

import sys

from agent_service.cli import main

sys.exit(main())
