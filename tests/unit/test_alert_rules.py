"""The shipped alert rules: promtool (Debian's `prometheus` package) checks them and runs their unit tests
(input series -> the alerts each rule raises, and a healthy service that raises none); each rule carries a
summary, a description and a runbook link to an existing entry of docs/operations.md; and the reading of
rule and panel expressions that the integration tests rely on finds names and labels, never label values."""

from __future__ import annotations

import subprocess

import yaml

from tests.prometheus import ALERT_RULES, ALERT_TESTS, ROOT, grouping_labels, selectors, shipped_expressions
from tests.unit.test_docs import anchors

PROMTOOL = "/usr/bin/promtool"  # scripts/ensure-services.sh installs it


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ALERT_RULES.parent)


def test_promtool_accepts_the_rules():
    checked = promtool("check", "rules", ALERT_RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_rule_raises_its_alert_on_its_series_and_none_on_a_healthy_service():
    tested = promtool("test", "rules", ALERT_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_is_unit_tested_firing():
    rules = {rule["alert"] for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]}
    fired = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert rules == fired


def test_every_rule_has_a_summary_a_description_and_a_runbook_entry():
    operations = ROOT / "docs" / "operations.md"
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], rule["alert"]
            page, _, anchor = annotations["runbook_url"].partition("#")
            assert (ROOT / page).resolve() == operations.resolve() and anchor in anchors(operations), rule["alert"]
            assert anchor == rule["alert"].lower()  # its own entry, under the alert's name


def test_expressions_are_read_for_names_and_labels_not_for_label_values():
    text = 'sum by (model, status) (rate(agent_service_llm_requests_total{status=~"agent_service_x|5.."}[5m]))'
    assert selectors(text) == {"agent_service_llm_requests_total": {"status"}}
    assert grouping_labels(text) == {"model", "status"}
    unless = "last_over_time(agent_service_worker_up[15m]) == 1 unless on (instance, worker) agent_service_worker_up"
    assert selectors(unless) == {"agent_service_worker_up": set()} and grouping_labels(unless) == {"instance", "worker"}
    assert len(shipped_expressions()) > 30
