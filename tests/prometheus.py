"""Prometheus for the tests: a worker's /metrics read with prometheus_client's own parser, a real Prometheus
server (Debian's `prometheus`) on a free loopback port with a data folder and a configuration of its own, and
the metric names and labels that the shipped alert rules and dashboard use."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent_service.devtools.processes import stop_process
from tests.support import wait_until

PROMETHEUS = "/usr/bin/prometheus"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> Samples:
    """Every sample a /metrics page serves, by name and labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (found, have), value in samples.items() if found == name and wanted <= have)


@contextmanager
def prometheus_server(
    folder: Path, *, targets: list[str], rule_files: list[Path] = (), interval: str = "1s"
) -> Iterator[httpx.Client]:
    """A Prometheus server scraping `targets` (host:port) and evaluating `rule_files` every `interval`;
    yields a client of its HTTP API, once it answers."""
    port = free_port()
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "agent_service", "static_configs": [{"targets": targets}]}],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    command = [
        PROMETHEUS,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with (folder / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_until(lambda: _ready(client), what="Prometheus ready", timeout=30)
        yield client
    finally:
        client.close()
        stop_process(process)


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "agent-service.json"


@dataclass(frozen=True)
class Expression:
    """One PromQL expression the repository ships: where it is, its text, and the `$labels.x` its alert's
    annotations print."""

    where: str
    text: str
    printed_labels: frozenset[str] = frozenset()


def shipped_expressions() -> list[Expression]:
    """Every alert rule's expression and every dashboard panel's."""
    found = []
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            printed = re.findall(r"\$labels\.(\w+)", " ".join(rule.get("annotations", {}).values()))
            found.append(Expression(f"alert {rule['alert']}", rule["expr"], frozenset(printed)))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found += [Expression(f"panel {panel['title']!r}", target["expr"]) for target in panel.get("targets", ())]
    return found


# PromQL read with regular expressions, string literals blanked out first so that a label's value can never
# pass for a name. Every metric of ours starts with agent_service_; what a rule or a panel names is then a
# selector (a name, with or without a {matcher list}) and grouping lists (by, without, on, ignoring,
# group_left/right). Whether each expression parses is Prometheus's own call (its query API).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\b(agent_service_\w+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def selectors(text: str) -> dict[str, set[str]]:
    """The metric names an expression selects, each with the labels its matchers name."""
    blanked = _STRING.sub('""', text)
    found: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(blanked):
        found.setdefault(name, set()).update(_MATCHER.findall(matchers))
    return found


def grouping_labels(text: str) -> set[str]:
    """The labels an expression groups or matches by."""
    blanked = _STRING.sub('""', text)
    return {label.strip() for labels in _GROUPING.findall(blanked) for label in labels.split(",") if label.strip()}
