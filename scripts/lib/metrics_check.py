"""Parses the Prometheus scrapes an end-to-end run dumped (FERRY_METRICS_DUMP) with the Prometheus project's own
client library parser (OpenMetrics text), and checks: every expected family exists, every counter only grows from
one scrape to the next, and the documents the agent counted as copied equal the documents the run migrated.
Prints "N passed, N failed"; exits non-zero on any failure."""

import json
import pathlib
import re
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

COORDINATOR_FAMILIES = [
    "ferry_tasks", "ferry_task_info", "ferry_task_documents_copied", "ferry_task_documents_estimated",
    "ferry_task_bytes_copied", "ferry_task_oplog_entries_read", "ferry_task_oplog_entries_applied",
    "ferry_task_lag_seconds", "ferry_task_spool_bytes", "ferry_task_spool_cap_bytes",
    "ferry_task_copy_documents_per_second", "ferry_task_apply_entries_per_second",
    "ferry_task_catch_up_eta_seconds", "ferry_task_oplog_headroom_seconds", "ferry_task_verification_mismatches",
    "ferry_task_retries", "ferry_agents", "ferry_rpc_requests", "ferry_rpc_duration_seconds", "ferry_task_events",
]
AGENT_FAMILIES = [
    "ferry_agent_resident_memory_bytes", "ferry_agent_session_connected", "ferry_agent_tasks_running",
    "ferry_agent_documents_copied", "ferry_agent_bytes_copied", "ferry_agent_oplog_entries_read",
    "ferry_agent_oplog_entries_applied", "ferry_agent_retries", "ferry_agent_lag_seconds", "ferry_agent_spool_bytes",
]

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def parse(path):
    families = {}
    for family in text_string_to_metric_families(path.read_text()):
        families[family.name] = family
    return families


def counters(families):
    out = {}
    for family in families.values():
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def main():
    dump = pathlib.Path(sys.argv[1])
    expected = json.loads((dump / "expected.json").read_text())
    for side, wanted in (("coordinator", COORDINATOR_FAMILIES), ("agent", AGENT_FAMILIES)):
        files = sorted(dump.glob(f"{side}-*.txt"))
        check(f"{side}: scrapes dumped", len(files) > 5, f"{len(files)} files")
        scrapes = []
        for f in files:
            try:
                scrapes.append(parse(f))
            except Exception as error:  # a parse failure is the finding
                check(f"{side}: {f.name} parses", False, repr(error))
        check(f"{side}: every scrape parses with prometheus_client's OpenMetrics parser", len(scrapes) == len(files))
        if not scrapes:
            continue
        last = scrapes[-1]
        missing = [f for f in wanted if f not in last]
        check(f"{side}: expected families exist", not missing, f"missing {missing}")
        # Counters only grow within one process; a restarted process starts again from zero (file names carry the
        # process generation: SIDE-GENERATION-INDEX.txt).
        went_down = []
        before = {}
        generation = None
        for f, families in zip(files, scrapes):
            this = f.name.split("-")[1]
            if this != generation:
                generation, before = this, {}
            now = counters(families)
            for key, value in now.items():
                if key in before and value < before[key]:
                    went_down.append((f.name, key, before[key], value))
            before.update(now)
        check(f"{side}: counters only grow across {len(scrapes)} scrapes (per process)", not went_down,
              str(went_down[:5]))
        if side == "agent":
            copied = [
                s.value for s in last["ferry_agent_documents_copied"].samples
                if s.name.endswith("_total") and s.labels.get("task_id") == expected["task_id"]
            ]
            check("agent: documents copied at the end equal the migrated count", copied == [expected["documents"]],
                  f"{copied} != {expected['documents']}")
        else:
            copied = [s.value for s in last["ferry_task_documents_copied"].samples
                      if s.labels.get("task_id") == expected["task_id"]]
            check("coordinator: documents copied at the end equal the migrated count",
                  copied == [expected["documents"]], f"{copied} != {expected['documents']}")
    # The dashboards and alert rules in deploy/monitoring use only exported metrics.
    exported = set()
    for side in ("coordinator", "agent"):
        files = sorted(dump.glob(f"{side}-*.txt"))
        if files:
            for name, family in parse(files[-1]).items():
                exported.add(name)
                exported.update(sample.name for sample in family.samples)
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
                exported.update(name + suffix for suffix in suffixes.get(family.type, []))
    root = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
    used = set()
    for f in list(root.glob("*.yml")) + list(root.glob("*.json")):
        used.update(re.findall(r"\bferry_[a-z0-9_]+", f.read_text()))
    unknown = sorted(name for name in used if name not in exported)
    check(f"deploy/monitoring uses only exported metrics ({len(used)} names)", bool(used) and not unknown,
          f"unknown: {unknown}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


main()
