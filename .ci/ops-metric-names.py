#!/usr/bin/env python3
"""Fails when the dashboard or the alerts query a metric the server does not
export (so neither can rot when a metric is renamed or removed).

usage: ops-metric-names.py SCRAPE... [--declared metrics.rs]
  SCRAPE       a /metrics text read from a live `vitrine serve`
  --declared   also accept names declared as `pub const` in metrics.rs, for
               metrics no scrape here could show (Kafka mode without a broker)
The names come from every PromQL expression of deploy/prometheus/alerts.yaml
and deploy/grafana/vitrine.json (targets and template variables). Histogram
series (_bucket, _sum, _count) are accepted as the exporter renders them.
Stdlib only, except PyYAML for alerts.yaml.
"""
import json
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
# Metrics that Prometheus itself adds to every scrape target.
PROMETHEUS = {"up"}


def metric_names(expr):
    """The metric names one PromQL expression selects."""
    e = re.sub(r'"(\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\blabel_values\s*\(([^,()]*),[^)]*\)", r"\1", e)  # Grafana: label_values(metric, label)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name in KEYWORDS or re.fullmatch(r"\d+\w*", name):
            continue
        names.add(name)
    return names


def queried():
    """(where, expression) of every query in the alerts and the dashboard."""
    with open(os.path.join(ROOT, "deploy/prometheus/alerts.yaml")) as f:
        for group in yaml.safe_load(f)["groups"]:
            for rule in group["rules"]:
                yield f"alerts.yaml {rule.get('alert') or rule.get('record')}", rule["expr"]
    with open(os.path.join(ROOT, "deploy/grafana/vitrine.json")) as f:
        dash = json.load(f)
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield f"vitrine.json panel '{panel['title']}'", target["expr"]
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            q = var["query"]
            yield f"vitrine.json variable ${var['name']}", q["query"] if isinstance(q, dict) else q


def main(argv):
    declared_from = None
    if "--declared" in argv:
        i = argv.index("--declared")
        declared_from = argv[i + 1]
        del argv[i : i + 2]
    exported = set(PROMETHEUS)
    for path in argv:
        with open(path) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    exported.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    declared = set()
    if declared_from:
        with open(declared_from) as f:
            declared = set(re.findall(r'pub const \w+: &str = "(vitrine_\w+)";', f.read()))
    unknown, only_declared, count = [], set(), 0
    for where, expr in queried():
        for name in sorted(metric_names(expr)):
            count += 1
            if name in exported:
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in declared or (base != name and base in declared):
                only_declared.add(name)
                continue
            unknown.append(f"{where}: {name}")
    if only_declared:
        print("ops-metric-names: not seen in a live scrape, accepted as declared in metrics.rs: "
              + ", ".join(sorted(only_declared)))
    if unknown:
        print("ops-metric-names: metrics queried but not exported by the server:", file=sys.stderr)
        for u in unknown:
            print("  " + u, file=sys.stderr)
        return 1
    print(f"ok: {count} metric references in alerts and dashboard, all exported ({len(exported)} names scraped)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
