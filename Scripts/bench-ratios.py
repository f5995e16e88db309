#!/usr/bin/env python3
"""Prints Gatehouse's figures from a bench.py JSON report as ratios against direct access
and Squid measured in the same run, next to the targets of the performance issue.

    Scripts/bench-ratios.py REPORT.json
"""
import json
import statistics
import sys


def medians(report):
    by_target = {}
    for row in report["results"]:
        target = row["target"]
        name = "gatehouse" if target == "cmd" or target.startswith("cmd:") else target
        for key, value in (row.get("metrics") or {}).items():
            if isinstance(value, (int, float)):
                by_target.setdefault(name, {}).setdefault(key, []).append(value)
    return {t: {k: statistics.median(v) for k, v in m.items()} for t, m in by_target.items()}


def main():
    report = json.load(open(sys.argv[1]))
    m = medians(report)
    g, d, s = m.get("gatehouse", {}), m.get("direct", {}), m.get("squid", {})

    def ratio(a, b):
        return "n/a" if a is None or not b else f"{a / b:.2f}x"

    rows = [
        ("S1 CPU per request (keep-alive), us", "s1_cpu_us", "squid", "<= 0.30x squid"),
        ("S1 requests/s (keep-alive)", "s1_rps", "squid", ">= 2.5x squid"),
        ("S2 CPU per request (new connection), us", "s2_cpu_us", "squid", "<= 0.50x squid"),
        ("S3 100 MiB forward, MiB/s", "s3_mibs", "direct", ">= 0.5x direct"),
        ("S4 100 MiB CONNECT tunnel, MiB/s", "s4_mibs", "direct", ">= 0.95x direct"),
        ("S6 RSS per idle keep-alive connection, KiB", "s6_kib_per_conn", "squid", "<= 8 KiB"),
        ("S7 CPU per 407 answer, us", "s7_cpu_us", "squid", "<= 15 us"),
    ]
    print(f"{'figure':46s} {'gatehouse':>11s} {'squid':>10s} {'direct':>10s} {'ratio':>9s}  target")
    for label, key, base, target in rows:
        gv, sv, dv = g.get(key), s.get(key), d.get(key)
        fmt = lambda v: "-" if v is None else (f"{v:,.1f}" if v < 10000 else f"{v:,.0f}")
        print(f"{label:46s} {fmt(gv):>11s} {fmt(sv):>10s} {fmt(dv):>10s} {ratio(gv, s.get(key) if base == 'squid' else d.get(key)):>9s}  {target}")


if __name__ == "__main__":
    main()
