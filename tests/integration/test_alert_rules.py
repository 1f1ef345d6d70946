"""The alert rules in deploy/prometheus: valid (`promtool check rules`), behaving as their unit
tests say (`promtool test rules`, Debian's prometheus package, which make test installs); they
and the Grafana dashboard in deploy/grafana speak of metrics the service really exposes, and
every query of the dashboard is PromQL that Prometheus parses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.live_server import ROOT

RULES = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _promtool(*arguments: str, cwd: Path = RULES) -> None:
    done = subprocess.run(
        [PROMTOOL, *arguments], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(
        (ROOT / "deploy" / "grafana" / "creditapp.json").read_text()
    )["panels"]
    return panels


def test_the_rules_are_valid_and_pass_their_unit_tests() -> None:
    _promtool("check", "rules", "alerts.yml")
    _promtool("test", "rules", "alerts_test.yml")


def test_every_metric_the_rules_and_the_dashboard_use_is_exposed(client: FlaskClient) -> None:
    expressions = [target["expr"] for panel in _dashboard_panels() for target in panel["targets"]]
    used = set(re.findall(r"\bcreditapp_[a-z_]+", (RULES / "alerts.yml").read_text()))
    used |= {name for expr in expressions for name in re.findall(r"\bcreditapp_[a-z_]+", expr)}
    exposed = {
        family.name
        for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    }
    # Counters' samples end in _total, histograms' in _bucket/_count/_sum.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    assert families <= exposed, families - exposed


def test_every_query_of_the_dashboard_parses(tmp_path: Path) -> None:
    # As recording rules (a JSON file is YAML), which promtool parses as Prometheus would.
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": target["expr"]}
        for panel in _dashboard_panels()
        for target in panel["targets"]
    ]
    (tmp_path / "dashboard.yml").write_text(
        json.dumps({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    _promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
