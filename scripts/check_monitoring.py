"""Checks ferry's monitoring objects as the chart renders them.

The PrometheusRule's groups pass `promtool check rules`, and `promtool test rules` runs the alert
tests on them, which must show every alert both firing and not firing. The Grafana dashboard in
the ConfigMap labelled for Grafana's sidecar is JSON, offers the `datasource` and `endpoint_id`
variables, queries only through the datasource variable, uses no variable it does not define,
and every PromQL expression in it (panel targets and variable queries) parses: they are written
as recording rules for `promtool check rules`. That the metric names exist is checked against a
real scrape (tests/it/metrics.rs).

    check_monitoring.py PROMTOOL ALERT_TESTS DEFAULTS [RENDERED ...]

DEFAULTS is the chart rendered with the rules and the dashboard on and default thresholds, which
the alert tests are written for; each RENDERED that holds the objects is checked too, but the
alert tests are not run on it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

RULES_FILE = "ferry-rules.yaml"
DASHBOARD_LABEL = "grafana_dashboard"
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
VARIABLE_QUERY = re.compile(r"^\s*(?:query_result|label_values)\((.*?)(?:,\s*\w+)?\)\s*$", re.S)


def documents(path):
    with open(path) as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def promtool(promtool_path, *args, cwd=None):
    result = subprocess.run([promtool_path, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        return [f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"]
    return []


def alert_names(groups):
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def check_alert_tests_cover(alerts, tests_path):
    """Every alert has a case where it fires and one where it does not."""
    with open(tests_path) as file:
        tests = yaml.safe_load(file)["tests"]
    firing, quiet = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    errors = [f"{tests_path}: no case where {name} fires" for name in sorted(alerts - firing)]
    errors += [f"{tests_path}: no case where {name} stays quiet" for name in sorted(alerts - quiet)]
    errors += [f"{tests_path}: tests {name}, which no rule defines" for name in sorted((firing | quiet) - alerts)]
    return errors


def check_rules(promtool_path, rule, work, tests_path):
    path = os.path.join(work, RULES_FILE)
    with open(path, "w") as file:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, file, sort_keys=False)
    errors = promtool(promtool_path, "check", "rules", path)
    if tests_path and not errors:
        errors += check_alert_tests_cover(alert_names(rule["spec"]["groups"]), tests_path)
        shutil.copy(tests_path, work)
        errors += promtool(promtool_path, "test", "rules", os.path.basename(tests_path), cwd=work)
    return errors


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr, defined, where, errors):
    def replace(match):
        name = match.group(1) or match.group(2)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        if name not in defined:
            errors.append(f"{where}: ${name} is no variable of the dashboard")
        return "x"
    return VARIABLE.sub(replace, expr)


def check_dashboard(promtool_path, name, text, work):
    where = f"dashboard {name}"
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as error:
        return [f"{where}: not JSON: {error}"]
    errors = []
    variables = {var["name"]: var for var in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        errors.append(f"{where}: no datasource variable")
    if "endpoint_id" not in variables:
        errors.append(f"{where}: no endpoint_id variable")
    expected_source = {"type": "prometheus", "uid": "${datasource}"}
    exprs = []
    for var in variables.values():
        if var["type"] != "query":
            continue
        if var.get("datasource") != expected_source:
            errors.append(f"{where}: variable {var['name']} does not query ${{datasource}}")
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = VARIABLE_QUERY.match(query)
        if not match:
            errors.append(f"{where}: variable {var['name']}: unknown query {query!r}")
            continue
        exprs.append((f"variable {var['name']}", match.group(1)))
    ids = [panel["id"] for panel in panels_of(dashboard)]
    if len(ids) != len(set(ids)):
        errors.append(f"{where}: panel ids repeat")
    for panel in panels_of(dashboard):
        if panel["type"] == "row":
            continue
        title = f"panel {panel['title']!r}"
        targets = panel.get("targets", [])
        if not targets:
            errors.append(f"{where}: {title} has no query")
        sources = [panel.get("datasource")] + [target.get("datasource") for target in targets]
        if any(source != expected_source for source in sources):
            errors.append(f"{where}: {title} does not query ${{datasource}}")
        exprs += [(title, target["expr"]) for target in targets]
    rules = []
    for index, (origin, expr) in enumerate(exprs):
        expr = substitute(expr, variables, f"{where}: {origin}", errors)
        record = re.sub(r"[^a-zA-Z0-9_]+", "_", origin).strip("_")
        rules.append({"record": f"dashboard:{record}:{index}", "expr": expr})
    if not rules:
        errors.append(f"{where}: no PromQL expression")
    path = os.path.join(work, "dashboard-rules.yaml")
    with open(path, "w") as file:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, file, sort_keys=False)
    errors += [f"{where}: {error}" for error in promtool(promtool_path, "check", "rules", path)]
    return errors


def check_rendering(promtool_path, path, tests_path, work):
    """Checks the monitoring objects of one rendering; returns the errors and how many it held."""
    errors, found = [], {"PrometheusRule": 0, "dashboard": 0}
    for doc in documents(path):
        if doc.get("kind") == "PrometheusRule":
            found["PrometheusRule"] += 1
            errors += check_rules(promtool_path, doc, work, tests_path)
        labels = doc.get("metadata", {}).get("labels") or {}
        if doc.get("kind") == "ConfigMap" and DASHBOARD_LABEL in labels:
            for key, text in doc.get("data", {}).items():
                found["dashboard"] += 1
                errors += check_dashboard(promtool_path, key, text, work)
    return errors, found


def main():
    promtool_path, tests_path, defaults, *others = sys.argv[1:]
    others = [path for path in others if os.path.abspath(path) != os.path.abspath(defaults)]
    errors = []
    with tempfile.TemporaryDirectory() as work:
        default_errors, found = check_rendering(promtool_path, defaults, tests_path, work)
        errors += [f"{defaults}: {error}" for error in default_errors]
        errors += [f"{defaults}: no {kind}" for kind, count in found.items() if count == 0]
        total = dict(found)
        for path in others:
            other_errors, other_found = check_rendering(promtool_path, path, None, work)
            errors += [f"{path}: {error}" for error in other_errors]
            total = {kind: total[kind] + other_found[kind] for kind in total}
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"  alert tests passed; {total['PrometheusRule']} PrometheusRules and "
          f"{total['dashboard']} dashboards checked in {1 + len(others)} renderings")


if __name__ == "__main__":
    main()
