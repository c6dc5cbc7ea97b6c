#!/usr/bin/env python3
"""Writes alerts_test.yaml: promtool unit tests for every alert of alerts.yaml.

The cases (input series, evaluation times, which replicas fire) are below;
the expected annotations are taken from alerts.yaml and rendered here
(summaries use only {{ $labels.NAME }}), so a runbook edit needs only
`python3 deploy/prometheus/gen_alerts_test.py`. .ci/ops fails when the
committed alerts_test.yaml differs from this script's output, and when an
alert has no case that fires and none that stays silent.
Needs PyYAML.
"""
import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
J = 'job="vitrine"'

# alert -> (input series, [(eval_time, [labels of each expected alert])]).
# Every alert has at least one evaluation that fires and one that does not.
CASES = {
    "VitrineDown": (
        [(f'up{{{J},instance="a"}}', "0x5"), (f'up{{{J},instance="b"}}', "1x5")],
        [("1m", []), ("3m", [{"instance": "a", "job": "vitrine"}])],
    ),
    "VitrineNotReady": (
        [(f'vitrine_storage_fault{{{J},instance="a"}}', "0 0 1 1 1 1"),
         (f'vitrine_storage_fault{{{J},instance="b"}}', "0x5")],
        [("2m", []), ("4m", [{"instance": "a", "job": "vitrine"}])],
    ),
    "VitrineNotReadyLong": (
        [(f'vitrine_ready{{{J},instance="a"}}', "0x20"), (f'vitrine_ready{{{J},instance="b"}}', "0 0 0 0 0 1x15")],
        [("10m", []), ("17m", [{"instance": "a", "job": "vitrine"}])],
    ),
    "VitrineKafkaDown": (
        [(f'vitrine_kafka_up{{{J},instance="a"}}', "0x5"), (f'vitrine_kafka_up{{{J},instance="b"}}', "1x5")],
        [("1m", []), ("3m", [{"instance": "a", "job": "vitrine"}])],
    ),
    "VitrineKafkaLagging": (
        [(f'vitrine_ingest_lag_messages{{{J},instance="a",partition="0"}}', "20000x10"),
         (f'vitrine_ingest_lag_messages{{{J},instance="a",partition="1"}}', "0x10"),
         (f'vitrine_ingest_lag_messages{{{J},instance="b",partition="0"}}', "500x10")],
        [("3m", []), ("6m", [{"instance": "a"}])],
    ),
    "VitrineEventsTooOld": (
        # a: every event 60-300 s old; b: every event under 60 s old.
        [(f'vitrine_ingest_event_age_seconds_bucket{{{J},instance="a",le="60"}}', "0x20"),
         (f'vitrine_ingest_event_age_seconds_bucket{{{J},instance="a",le="300"}}', "0+10x20"),
         (f'vitrine_ingest_event_age_seconds_bucket{{{J},instance="a",le="+Inf"}}', "0+10x20"),
         (f'vitrine_ingest_event_age_seconds_bucket{{{J},instance="b",le="60"}}', "0+10x20"),
         (f'vitrine_ingest_event_age_seconds_bucket{{{J},instance="b",le="300"}}', "0+10x20"),
         (f'vitrine_ingest_event_age_seconds_bucket{{{J},instance="b",le="+Inf"}}', "0+10x20")],
        [("5m", []), ("16m", [{"instance": "a"}])],
    ),
    "VitrineKafkaErrors": (
        [(f'vitrine_kafka_errors_total{{{J},instance="a",kind="commit"}}', "0+1x20"),
         (f'vitrine_kafka_errors_total{{{J},instance="b",kind="client"}}', "0+1x20")],
        [("5m", []), ("15m", [{"instance": "a", "kind": "commit"}])],
    ),
    "VitrineSnapshotFailing": (
        [(f'vitrine_snapshot_writes_total{{{J},instance="a",result="failed"}}', "0 0 0 1x30"),
         (f'vitrine_snapshot_writes_total{{{J},instance="b",result="failed"}}', "0x33"),
         (f'vitrine_snapshot_writes_total{{{J},instance="b",result="ok"}}', "0+1x33")],
        [("5m", [{"instance": "a", "job": "vitrine", "result": "failed"}]), ("30m", [])],
    ),
    "VitrineSnapshotStale": (
        # a: last ok snapshot at Unix time 0; b: one every minute (the series'
        # value is its own timestamp); c: started, never snapshotted.
        [(f'vitrine_snapshot_last_success_timestamp_seconds{{{J},instance="a"}}', "0x40"),
         (f'vitrine_snapshot_last_success_timestamp_seconds{{{J},instance="b"}}', "0+60x40"),
         (f'vitrine_restore_duration_seconds{{{J},instance="a"}}', "1x40"),
         (f'vitrine_restore_duration_seconds{{{J},instance="b"}}', "1x40"),
         (f'vitrine_restore_duration_seconds{{{J},instance="c"}}', "1x40")],
        [("10m", []), ("31m", [{"instance": "a", "job": "vitrine"}, {"instance": "c", "job": "vitrine"}])],
    ),
    "VitrineSnapshotDamaged": (
        [(f'vitrine_snapshot_load_failures_total{{{J},instance="a"}}', "0 1x150"),
         (f'vitrine_snapshot_load_failures_total{{{J},instance="b"}}', "0x150")],
        [("5m", [{"instance": "a", "job": "vitrine"}]), ("2h", [])],
    ),
    "VitrineJournalFailures": (
        [(f'vitrine_journal_failures_total{{{J},instance="a",journal="claims"}}', "0 0 1 2 2x10"),
         (f'vitrine_journal_failures_total{{{J},instance="a",journal="events"}}', "0x14")],
        [("4m", [{"instance": "a", "journal": "claims"}]), ("13m", [])],
    ),
    "VitrineShedding": (
        # a: 2 calls/s shed; b: 0.5/s, under the threshold.
        [(f'vitrine_requests_shed_total{{{J},instance="a",method="Decide",reason="in_flight"}}', "0+120x20"),
         (f'vitrine_requests_shed_total{{{J},instance="b",method="Decide",reason="deadline"}}', "0+30x20")],
        [("3m", []), ("12m", [{"instance": "a", "method": "Decide", "reason": "in_flight"}])],
    ),
    "VitrineDecideSlow": (
        # a: 10 calls/s between 1 and 10 ms; b: 10/s under 1 ms; c: slow but
        # idle (0.5 calls/s): a p99 of a handful of calls pages nobody.
        [(f'vitrine_decide_duration_seconds_bucket{{{J},instance="a",le="0.001"}}', "0x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="a",le="0.01"}}', "0+600x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="a",le="+Inf"}}', "0+600x30"),
         (f'vitrine_decide_duration_seconds_count{{{J},instance="a"}}', "0+600x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="b",le="0.001"}}', "0+600x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="b",le="0.01"}}', "0+600x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="b",le="+Inf"}}', "0+600x30"),
         (f'vitrine_decide_duration_seconds_count{{{J},instance="b"}}', "0+600x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="c",le="0.001"}}', "0x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="c",le="0.01"}}', "0+30x30"),
         (f'vitrine_decide_duration_seconds_bucket{{{J},instance="c",le="+Inf"}}', "0+30x30"),
         (f'vitrine_decide_duration_seconds_count{{{J},instance="c"}}', "0+30x30")],
        [("8m", []), ("20m", [{"instance": "a"}])],
    ),
    "VitrineRuleFileRejected": (
        [(f'vitrine_rules_pushes_total{{{J},instance="a",origin="file",result="rejected"}}', "0 0 1x20"),
         (f'vitrine_rules_pushes_total{{{J},instance="b",origin="push",result="rejected"}}', "0 0 1x20")],
        [("5m", [{"instance": "a", "job": "vitrine", "origin": "file", "result": "rejected"}]), ("20m", [])],
    ),
    "VitrineRevisionMismatch": (
        # s1 agrees; s2: b stays behind; s3: b catches up within 2 minutes.
        [(f'vitrine_rules_revision{{{J},instance="a",shop="s1"}}', "3x10"),
         (f'vitrine_rules_revision{{{J},instance="b",shop="s1"}}', "3x10"),
         (f'vitrine_rules_revision{{{J},instance="a",shop="s2"}}', "5x10"),
         (f'vitrine_rules_revision{{{J},instance="b",shop="s2"}}', "4x10"),
         (f'vitrine_rules_revision{{{J},instance="a",shop="s3"}}', "2x10"),
         (f'vitrine_rules_revision{{{J},instance="b",shop="s3"}}', "1 1 2x8")],
        [("3m", []), ("7m", [{"shop": "s2"}])],
    ),
    "VitrineDecisionLogDropping": (
        [(f'vitrine_decision_log_dropped_total{{{J},instance="a",reason="queue_full"}}', "0+5x40"),
         (f'vitrine_decision_log_dropped_total{{{J},instance="b",reason="kafka"}}', "0x40")],
        [("5m", []), ("25m", [{"instance": "a", "reason": "queue_full"}])],
    ),
    "VitrineClusterRecordsSkipped": (
        [(f'vitrine_cluster_records_total{{{J},instance="a",topic="claims",result="refused"}}', "0 0 1x20"),
         (f'vitrine_cluster_records_total{{{J},instance="a",topic="rules",result="applied"}}', "0+5x20")],
        [("5m", [{"instance": "a", "topic": "claims", "result": "refused"}]), ("20m", [])],
    ),
}


def render(template, labels):
    def sub(m):
        return labels.get(m.group(1), "")

    out = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", sub, template)
    if "{{" in out:
        sys.exit(f"gen_alerts_test.py: cannot render {template!r}: use only {{{{ $labels.NAME }}}}")
    return out


def main():
    with open(os.path.join(HERE, "alerts.yaml")) as f:
        rules = {r["alert"]: r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r}
    missing = sorted(set(rules) - set(CASES))
    unknown = sorted(set(CASES) - set(rules))
    if missing or unknown:
        sys.exit(f"gen_alerts_test.py: alerts without cases: {missing}; cases of no alert: {unknown}")
    tests = []
    for name, (series, evals) in CASES.items():
        rule = rules[name]
        if not any(exp for _, exp in evals) or all(exp for _, exp in evals):
            sys.exit(f"gen_alerts_test.py: {name} needs an evaluation that fires and one that does not")
        checks = []
        for at, expected in evals:
            exp = []
            for labels in expected:
                full = dict(labels, **rule.get("labels", {}))
                exp.append({
                    "exp_labels": full,
                    "exp_annotations": {k: render(v, full) for k, v in rule.get("annotations", {}).items()},
                })
            checks.append({"eval_time": at, "alertname": name, "exp_alerts": exp})
        tests.append({
            "name": name,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": checks,
        })
    doc = {"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": tests}
    header = "# Generated by gen_alerts_test.py from its cases and alerts.yaml's annotations: edit those, then rerun it.\n"
    text = header + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "alerts_test.yaml")
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
