#!/usr/bin/env python3
"""Writes vitrine.json, the Grafana dashboard, from the rows below (stdlib
only). Each row answers one SRE question; each panel's PromQL uses only
metrics the server exports (.ci/ops checks them against a live /metrics).
Edit here, run `python3 deploy/grafana/gen_dashboard.py`; .ci/ops fails
when the committed vitrine.json differs from this script's output."""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job",instance=~"$instance"'
ROWS = [
    ("Golden signals: is Decide fast, busy, refusing? (per replica)", [
        ("Decide calls/s by replica", "reqps",
         [(f"sum by (instance) (rate(vitrine_decide_duration_seconds_count{{{SEL}}}[$__rate_interval]))", "{{instance}}")]),
        ("Decide latency p50 / p99 / p99.9 (all replicas)", "s",
         [(f"histogram_quantile({q}, sum by (le) (rate(vitrine_decide_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", f"p{n}")
          for q, n in [("0.5", "50"), ("0.99", "99"), ("0.999", "99.9")]]),
        ("Decide p99 by replica (alert: 5 ms)", "s",
         [(f"histogram_quantile(0.99, sum by (instance, le) (rate(vitrine_decide_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "{{instance}}")]),
        ("Shed calls/s (errors before the handler)", "reqps",
         [(f"sum by (instance, method, reason) (rate(vitrine_requests_shed_total{{{SEL}}}[$__rate_interval]))", "{{instance}} {{method}} {{reason}}")]),
        ("Decisions/s by slot and outcome", "ops",
         [(f"sum by (slot, outcome) (rate(vitrine_decisions_total{{{SEL}}}[$__rate_interval]))", "{{slot}} {{outcome}}")]),
        ("Connections open / refused at the limit", "short",
         [(f"sum by (instance, port) (vitrine_connections_open{{{SEL}}})", "{{instance}} {{port}} open"),
          (f'sum by (instance, port) (rate(vitrine_connections_closed_total{{{SEL},reason="limit"}}[$__rate_interval]))', "{{instance}} {{port}} refused/s")]),
    ]),
    ("Per shop: which revision, how many visitors, how much memory?", [
        ("Rule revision served, by shop and replica (lines must overlap)", "short",
         [(f"vitrine_rules_revision{{{SEL}}}", "{{shop}} @ {{instance}}")]),
        ("Visitors known, by shop", "short",
         [(f"max by (shop) (vitrine_index_visitors{{{SEL}}})", "{{shop}}")]),
        ("Behavior entries, by shop", "short",
         [(f"max by (shop) (vitrine_index_entries{{{SEL}}})", "{{shop}}")]),
        ("Audience bitmaps, by shop", "bytes",
         [(f"max by (shop) (vitrine_index_bitmap_bytes{{{SEL}}})", "{{shop}}")]),
        ("Rule files by origin and result", "short",
         [(f"sum by (origin, result) (increase(vitrine_rules_pushes_total{{{SEL}}}[$__range]))", "{{origin}} {{result}}")]),
    ]),
    ("Ingest: is behavior flowing in, fresh, and clean?", [
        ("Kafka up, by replica", "short",
         [(f"vitrine_kafka_up{{{SEL}}}", "{{instance}}")]),
        ("Lag (messages behind), by replica and partition", "short",
         [(f"vitrine_ingest_lag_messages{{{SEL}}}", "{{instance}} p{{partition}}")]),
        ("Event age at apply, p50 / p99 (freshness)", "s",
         [(f"histogram_quantile({q}, sum by (le) (rate(vitrine_ingest_event_age_seconds_bucket{{{SEL}}}[$__rate_interval])))", f"p{n}")
          for q, n in [("0.5", "50"), ("0.99", "99")]]),
        ("Events applied/s by action", "ops",
         [(f"sum by (action) (rate(vitrine_ingest_events_applied_total{{{SEL}}}[$__rate_interval]))", "{{action}}")]),
        ("Events rejected/s by reason, dead-lettered, skipped", "ops",
         [(f"sum by (reason) (rate(vitrine_ingest_rejected_total{{{SEL}}}[$__rate_interval]))", "rejected {{reason}}"),
          (f"sum(rate(vitrine_ingest_dead_lettered_total{{{SEL}}}[$__rate_interval]))", "dead-lettered"),
          (f"sum(rate(vitrine_ingest_skipped_total{{{SEL}}}[$__rate_interval]))", "other shop (skipped)")]),
        ("Kafka errors/s by kind", "ops",
         [(f"sum by (instance, kind) (rate(vitrine_kafka_errors_total{{{SEL}}}[$__rate_interval]))", "{{instance}} {{kind}}")]),
    ]),
    ("Claims and budgets: are benefits granted or refused?", [
        ("Claims/s by result", "ops",
         [(f"sum by (result) (rate(vitrine_claims_total{{{SEL}}}[$__rate_interval]))", "{{result}}")]),
        ("Share of claims refused for budget or cap", "percentunit",
         [(f'sum(rate(vitrine_claims_total{{{SEL},result=~"BUDGET_EXHAUSTED|CAP_REACHED"}}[$__rate_interval])) / sum(rate(vitrine_claims_total{{{SEL}}}[$__rate_interval]))', "refused for budget or cap")]),
        ("Claims journal compactions", "short",
         [(f"sum by (instance, result) (increase(vitrine_claims_compactions_total{{{SEL}}}[$__range]))", "{{instance}} {{result}}"),
          (f"sum by (instance) (increase(vitrine_claims_compacted_bytes_total{{{SEL}}}[$__range]))", "{{instance}} bytes deleted")]),
    ]),
    ("Storage: can this replica restart fast, and does it trust its disk?", [
        ("Seconds since the last good snapshot (alert: 900)", "s",
         [(f"time() - vitrine_snapshot_last_success_timestamp_seconds{{{SEL}}}", "{{instance}}")]),
        ("Snapshot writes by result", "short",
         [(f"sum by (instance, result) (increase(vitrine_snapshot_writes_total{{{SEL}}}[$__range]))", "{{instance}} {{result}}")]),
        ("Last snapshot duration (encode, write, fsync)", "s",
         [(f"vitrine_snapshot_last_duration_seconds{{{SEL}}}", "{{instance}} seconds")]),
        ("Last snapshot size", "bytes",
         [(f"vitrine_snapshot_last_bytes{{{SEL}}}", "{{instance}}")]),
        ("Restore time of the last start; damaged snapshots", "s",
         [(f"vitrine_restore_duration_seconds{{{SEL}}}", "{{instance}} restore"),
          (f"vitrine_snapshot_load_failures_total{{{SEL}}}", "{{instance}} damaged snapshots")]),
        ("Storage fault (1 = NOT_SERVING) and journal failures", "short",
         [(f"vitrine_storage_fault{{{SEL}}}", "{{instance}} fault"),
          (f"sum by (instance, journal) (increase(vitrine_journal_failures_total{{{SEL}}}[$__range]))", "{{instance}} {{journal}} failures")]),
    ]),
    ("Cluster topics: do replicas apply the rules and claims topics alike?", [
        ("Records/s by topic and result, per replica (should match across replicas)", "ops",
         [(f"sum by (instance, topic, result) (rate(vitrine_cluster_records_total{{{SEL}}}[$__rate_interval]))", "{{instance}} {{topic}} {{result}}")]),
        ("Refused or unreadable records (alert)", "short",
         [(f'sum by (instance, topic, result) (increase(vitrine_cluster_records_total{{{SEL},result=~"refused|unreadable"}}[$__range]))', "{{instance}} {{topic}} {{result}}")]),
    ]),
    ("Decision log: is every decision measured?", [
        ("Decisions logged / dropped per second, by replica", "ops",
         [(f"sum by (instance) (rate(vitrine_decision_log_logged_total{{{SEL}}}[$__rate_interval]))", "{{instance}} logged"),
          (f"sum by (instance, reason) (rate(vitrine_decision_log_dropped_total{{{SEL}}}[$__rate_interval]))", "{{instance}} dropped {{reason}}")]),
        ("Queue depth (against --decision-log-queue)", "short",
         [(f"vitrine_decision_log_queue_depth{{{SEL}}}", "{{instance}}")]),
        ("Exposures applied/s (every replica applies every replica's decisions)", "ops",
         [(f"sum by (instance) (rate(vitrine_exposures_applied_total{{{SEL}}}[$__rate_interval]))", "{{instance}}")]),
        ("Decision records refused on read-back, by reason", "short",
         [(f"sum by (instance, reason) (increase(vitrine_decision_log_rejected_total{{{SEL}}}[$__range]))", "{{instance}} {{reason}}")]),
    ]),
]


def main():
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (ptitle, unit, targets) in enumerate(row):
            panels.append({
                "type": "timeseries", "title": ptitle, "id": pid, "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": [{"refId": chr(65 + k), "datasource": DS, "expr": e, "legendFormat": l}
                            for k, (e, l) in enumerate(targets)],
            })
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    var = lambda name, query: {
        "name": name, "type": "query", "datasource": DS, "refresh": 2, "includeAll": True, "multi": True,
        "current": {"text": "All", "value": "$__all"}, "query": {"query": query, "refId": name},
        "definition": query, "allValue": ".*",
    }
    dash = {
        "uid": "vitrine", "title": "Vitrine", "tags": ["vitrine"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "current": {"text": "Prometheus", "value": "Prometheus"}},
            var("job", "label_values(vitrine_restore_duration_seconds, job)"),
            var("instance", 'label_values(vitrine_restore_duration_seconds{job=~"$job"}, instance)'),
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vitrine.json")
    import sys
    if len(sys.argv) > 1:
        out = sys.argv[1]
    with open(out, "w") as f:
        json.dump(dash, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
