"""The command line: ``python -m agent_service.devtools.llm_server --port 0 [options]`` serves until SIGTERM
and prints ``llm_server listening on http://HOST:PORT`` once it accepts connections (`devtools.processes`
waits for that line)."""

from __future__ import annotations

import argparse
import asyncio
import json

from agent_service.devtools import llm_server
from agent_service.devtools.llm_server.app import make_app
from agent_service.devtools.llm_server.rate_limits import (
    ALL_MODELS,
    DEFAULT_RATE_BURST_SECONDS,
    LIMIT_KINDS,
    parse_rate_limits,
)
from agent_service.devtools.serving import serve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m agent_service.devtools.llm_server", description=(llm_server.__doc__ or "").partition("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0, help="adds uniform 0..N ms")
    parser.add_argument("--seed", type=int, default=None, help="makes fault rates and jitter reproducible")
    parser.add_argument("--rpm", type=float, help="requests per minute, all models together")
    parser.add_argument("--tpm", type=float, help="tokens per minute, all models together")
    parser.add_argument(
        "--rate-limits", type=json.loads, default={}, help='per model, as JSON: {"gpt-4o-mini": {"rpm": 500}}'
    )
    parser.add_argument(
        "--rate-burst-seconds",
        type=float,
        default=DEFAULT_RATE_BURST_SECONDS,
        help="a limit's bucket holds this many seconds of its rate",
    )
    return parser.parse_args(argv)


def startup_rate_limits(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    overall = {kind: getattr(args, kind) for kind in LIMIT_KINDS if getattr(args, kind)}
    return parse_rate_limits({**args.rate_limits, **({ALL_MODELS: overall} if overall else {})})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = make_app(
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        seed=args.seed,
        rate_limits=startup_rate_limits(args),
        rate_burst_seconds=args.rate_burst_seconds,
    )
    asyncio.run(serve(app, name="llm_server", host=args.host, port=args.port))


if __name__ == "__main__":
    main()
