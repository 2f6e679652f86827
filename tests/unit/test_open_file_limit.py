"""A worker process raises its soft open-file limit to the hard one before it starts its LLM process: the
function itself, in a child process started under a low soft limit (the test process keeps its own)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAISE = """
import resource
from agent_service.llm.runners import raise_open_file_limit
from tests.support import make_settings
print(raise_open_file_limit(make_settings(llm_concurrency=100, worker_concurrency=100)),
      *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def in_child_limited_to(soft: int, hard: int) -> subprocess.CompletedProcess:
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [sys.executable, "-c", RAISE], cwd=ROOT, preexec_fn=limited, capture_output=True, text=True, check=True
    )


def test_the_soft_open_file_limit_is_raised_to_the_hard_one_without_a_warning_when_that_is_enough() -> None:
    done = in_child_limited_to(256, 2048)
    assert done.stdout.split() == ["2048", "2048", "2048"] and "open-file limit" not in done.stderr


def test_a_hard_limit_below_what_the_settings_need_is_used_and_named_in_a_warning() -> None:
    # 100 LLM calls at once and a Redis pool of 132 need 296 files with the spare
    done = in_child_limited_to(128, 256)
    assert done.stdout.split() == ["256", "256", "256"]
    assert "open-file limit (256) is below the 296 files LLM_CONCURRENCY=100 may need" in done.stderr
