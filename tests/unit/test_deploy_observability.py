"""deploy/: the Prometheus rules, their unit tests, the example config and the Grafana dashboard.

The rule files and the config are checked with promtool (Debian/Ubuntu:
``apt-get install prometheus``). Without promtool those tests are skipped,
except under CI (``CI=true``), where they fail. The metric names the
dashboard and the rules use are checked against the series the orchestrator
exports (docs/observability.md) without promtool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "mlbridge.json"
RULE_FILES = [PROM / "alerts.yml", PROM / "recording.yml"]

COUNTERS_AND_GAUGES = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "mlbridge_calls_total",
    "mlbridge_calls_in_flight",
    "mlbridge_workers",
    "mlbridge_spare_target",
    "mlbridge_worker_starts_total",
    "mlbridge_worker_deaths_total",
    "mlbridge_worker_stops_total",
    "mlbridge_worker_memory_bytes",
    "mlbridge_worker_memory_limit_bytes",
    "mlbridge_worker_cpu_seconds_total",
    "mlbridge_worker_pids",
    "mlbridge_bridge_up",
    "mlbridge_bridge_tokens_generated_total",
    "mlbridge_bridge_llm_calls_total",
    "mlbridge_bridge_lm_calls_total",
    "mlbridge_bridge_series_dropped_total",
    "mlbridge_policy_denials_total",
    "mlbridge_quota_rejections_total",
    "mlbridge_auth_failures_total",
    "mlbridge_egress_decisions_total",
    "mlbridge_build_info",
    "mlbridge_resources",
    "mlbridge_worker_start_failures_total",
    "mlbridge_circuit_open",
    "up",
}
HISTOGRAMS = {
    "grpc_server_handling_seconds",
    "mlbridge_call_duration_seconds",
    "mlbridge_call_acquire_seconds",
    "mlbridge_call_runtime_seconds",
    "mlbridge_worker_start_seconds",
    "mlbridge_claim_duration_seconds",
    "mlbridge_bridge_batch_size",
    "mlbridge_bridge_model_load_seconds",
}
KNOWN = COUNTERS_AND_GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

# Words that are PromQL syntax, not series.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (function names and label names left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors and subqueries
    e = _GROUPING.sub(" ", e)  # label lists of by/without/on/ignoring/group_*
    e = re.sub(r"\b\d+(?:\.\d*)?(?:e[+-]?\d+)?\b", " ", e, flags=re.I)  # numbers
    names = set()
    for m in _IDENT.finditer(e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (bridge, le) (rate(mlbridge_claim_duration_seconds_bucket"
        '{bridge=~"$bridge", code!~"a|b"}[$__rate_interval]))) > 1e3 and on (bridge) up{job="x"} == 0'
    )
    assert metric_names(expr) == {"mlbridge_claim_duration_seconds_bucket", "up"}
    assert metric_names("sum(rate(foo_total[5m])) by (tenant) / 60") == {"foo_total"}


# --- promtool ---------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    reason = (
        "promtool not found: install it with `apt-get install prometheus` (Debian/Ubuntu) "
        "or from https://prometheus.io/download/"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(*args: str, cwd: Path = ROOT) -> None:
    proc = subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def test_promtool_check_rules() -> None:
    _run("check", "rules", *(str(f.relative_to(ROOT)) for f in RULE_FILES))


def test_promtool_test_rules() -> None:
    _run("test", "rules", "deploy/prometheus/alerts_test.yml")


def test_promtool_check_config() -> None:
    _run("check", "config", "deploy/prometheus/prometheus.yml")


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query, its Grafana variables filled in, is valid PromQL to promtool."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _fill(expr)}
        for i, (_, expr) in enumerate(_dashboard_exprs())
    ]
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run("check", "rules", str(f))


# --- rules ------------------------------------------------------------------------------


def _rules(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _alerts() -> list[dict]:
    return _rules(PROM / "alerts.yml")


EXPECTED_ALERTS = {
    "MLBridgeTargetDown",
    "MLBridgeBridgeDown",
    "MLBridgeHighErrorRatio",
    "MLBridgeWorkerDeaths",
    "MLBridgeWorkerOOMKilled",
    "MLBridgeClaimLatencyHigh",
    "MLBridgeNoSpares",
    "MLBridgeWorkerMemoryNearLimit",
    "MLBridgeGrpcServerErrors",
    "MLBridgeCircuitOpen",
}


def test_alerts_group_and_shape() -> None:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    assert [g["name"] for g in doc["groups"]] == ["mlbridge"]
    alerts = _alerts()
    assert {a["alert"] for a in alerts} == EXPECTED_ALERTS
    for a in alerts:
        assert "for" in a, a["alert"]
        assert a["labels"]["severity"] in {"critical", "warning"}, a["alert"]
        assert a["annotations"].get("summary"), a["alert"]
        assert a["annotations"].get("description"), a["alert"]


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_use_only_exported_series(path: Path) -> None:
    for rule in _rules(path):
        names = metric_names(rule["expr"])
        assert names, rule
        unknown = names - KNOWN
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown series {unknown}"


def test_circuit_breakers_are_alerted_on() -> None:
    assert "mlbridge_circuit_open" in (PROM / "alerts.yml").read_text()


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    assert {"alerts.yml", "recording.yml"} <= set(doc["rule_files"])
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert firing == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_example_config_scrapes_mlbridge_and_loads_rules() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert set(cfg["rule_files"]) == {"alerts.yml", "recording.yml"}
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "mlbridge"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


# --- dashboard --------------------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _all_panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"]) for p in _all_panels(_dashboard()) for t in p.get("targets", [])
    ]


def _fill(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?(bridge|tenant)\}?", ".*", expr)


def test_dashboard_variables() -> None:
    d = _dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    by_name = {v["name"]: v for v in d["templating"]["list"]}
    assert by_name["datasource"]["type"] == "datasource"
    assert by_name["datasource"]["query"] == "prometheus"
    for name in ("bridge", "tenant"):
        v = by_name[name]
        assert v["type"] == "query"
        assert v["datasource"]["uid"] == "${datasource}"
        assert v["definition"].startswith("label_values(")
        assert v["query"]["query"] == v["definition"]
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
        assert m, v["definition"]
        assert metric_names(_fill(m.group(1))) <= KNOWN


def test_dashboard_rows_and_panels() -> None:
    d = _dashboard()
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    for want in (
        "Traffic",
        "Workers",
        "Resources per worker",
        "Tenants",
        "Policy and egress",
        "Bridge metrics",
        "gRPC",
    ):
        assert want in rows
    ids = [p["id"] for p in _all_panels(d)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in _all_panels(d):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_uses_only_exported_series() -> None:
    exprs = _dashboard_exprs()
    assert exprs
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no series in {expr!r}"
        assert not names - KNOWN, f"{title}: unknown series {names - KNOWN}"
        used |= names
    # the panels the brief asks for are there
    for want in (
        "mlbridge_calls_total",
        "mlbridge_call_duration_seconds_bucket",
        "mlbridge_call_acquire_seconds_bucket",
        "mlbridge_call_runtime_seconds_bucket",
        "mlbridge_workers",
        "mlbridge_worker_starts_total",
        "mlbridge_worker_deaths_total",
        "mlbridge_claim_duration_seconds_bucket",
        "mlbridge_worker_start_seconds_bucket",
        "mlbridge_worker_memory_bytes",
        "mlbridge_worker_memory_limit_bytes",
        "mlbridge_worker_cpu_seconds_total",
        "mlbridge_worker_pids",
        "mlbridge_policy_denials_total",
        "mlbridge_quota_rejections_total",
        "mlbridge_egress_decisions_total",
        "mlbridge_bridge_tokens_generated_total",
        "mlbridge_bridge_batch_size_bucket",
        "mlbridge_bridge_model_load_seconds_bucket",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
    ):
        assert want in used, want
