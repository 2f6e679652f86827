"""The worker's database role (deploy/postgres/worker-role.sql) decides for every table of the schema: a
table a migration adds must be granted there (or refused by name, when workers never touch it), or a worker
running under that role fails on it."""

from __future__ import annotations

import re

from agent_service.devtools.processes import ROOT
from agent_service.models import Base

ROLE_SQL = ROOT / "deploy" / "postgres" / "worker-role.sql"


def test_the_worker_role_decides_on_every_table_of_the_schema():
    decided_lines = re.findall(
        r"^(?:GRANT [A-Z, ]+|REVOKE ALL) ON ([\w, ]+) (?:TO|FROM)", ROLE_SQL.read_text(), flags=re.MULTILINE
    )
    decided = {name.strip() for line in decided_lines for name in line.split(",")}
    assert set(Base.metadata.tables) <= decided
