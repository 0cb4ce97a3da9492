"""Plot and tabulate what analysts get from a published analytics file (the README's figures).

    .venv/bin/python -m pipelines.demo.release_plot [data/analytics.duckdb] [docs/analysts-release.png]

Reads only the file analysts read: the catalogue's per-table release report (numbers) and the daily
audience totals. Writes a PNG (daily audience over the last 90 days; loss, suppression and risk per table;
error of the standard analyst queries) and prints the same figures as a Markdown table.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import duckdb
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from pipelines.pseudo.policy import load_pseudonymisation_policy


def _read(analytics: Path) -> tuple[dict[str, dict], list[tuple[str, int]], str]:
    with duckdb.connect(str(analytics), read_only=True) as con:
        reports = {t: json.loads(r) for t, r in con.execute(
            "SELECT DISTINCT table_name, release_report FROM catalogue ORDER BY 1").fetchall()}
        days = con.execute(
            "SELECT day, max(visitors) FROM audience_daily WHERE page = '*' GROUP BY 1 ORDER BY 1").fetchall()
    last = days[-1][0] if days else dt.date.today().isoformat()
    return reports, days, last


def markdown(reports: dict[str, dict], days: list[tuple[str, int]], last: str, small_class: int) -> str:
    start = (dt.date.fromisoformat(last) - dt.timedelta(days=89)).isoformat()
    recent = [d for d, _ in days if d >= start]
    lines = [
        f"Daily audience series: {len(recent)} of the last 90 days published (to {last}).",
        "",
        "| table | information loss | rows suppressed | prosecutor risk max / avg | journalist risk max / avg "
        f"| rows in classes < {small_class} | distinct values kept (published / finest) |",
        "|---|---|---|---|---|---|---|",
    ]
    for table, r in reports.items():
        kept = ", ".join(f"{c} {p}/{f}" for c, (p, f) in r["distinct_kept"].items())
        lines.append(
            f"| {table} | {r['information_loss']:.3f} | {r['rows_suppressed']:,} ({r['suppression_ratio']:.1%}) "
            f"| {r['prosecutor_max']:.3f} / {r['prosecutor_avg']:.3f} | {r['journalist_max']:.3f} / "
            f"{r['journalist_avg']:.3f} | {r['small_class_share']:.1%} | {kept} |"
        )
    lines += ["", "| analyst query | keys answered | mean relative error |", "|---|---|---|"]
    for r in reports.values():
        for name, e in r["queries"].items():
            lines.append(f"| {name} | {e['answered_share']:.1%} | {e['mean_relative_error']:.1%} |")
    return "\n".join(lines)


def plot(reports: dict[str, dict], days: list[tuple[str, int]], last: str, out: Path) -> None:
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(12, 11))
    start = dt.date.fromisoformat(last) - dt.timedelta(days=89)
    recent = [(dt.date.fromisoformat(d), v) for d, v in days if dt.date.fromisoformat(d) >= start]
    top.bar([d for d, _ in recent], [v for _, v in recent], color="#3b6ea8")
    top.set_title(f"Daily audience (consenting visitors), last 90 days: {len(recent)} days published")
    top.set_ylabel("visitors")
    names = list(reports)
    width = 0.27
    x = range(len(names))
    for offset, key, label in ((-width, "information_loss", "information loss"),
                               (0, "suppression_ratio", "rows suppressed (share)"),
                               (width, "prosecutor_max", "max prosecutor risk")):
        middle.bar([i + offset for i in x], [reports[n][key] for n in names], width, label=label)
    middle.set_xticks(list(x), names, rotation=20, ha="right")
    middle.set_title("Per table: what the release lost and the risk left")
    middle.legend()
    queries = [(f"{q} ({n})", e["mean_relative_error"]) for n in names for q, e in reports[n]["queries"].items()]
    bottom.barh([q for q, _ in queries], [e for _, e in queries], color="#c0504d")
    bottom.set_title("Standard analyst queries: mean relative error vs the warehouse")
    bottom.tick_params(axis="y", labelsize=8)
    bottom.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> None:
    analytics = Path(argv[0] if argv else "data/analytics.duckdb")
    out = Path(argv[1] if len(argv) > 1 else "docs/analysts-release.png")
    reports, days, last = _read(analytics)
    plot(reports, days, last, out)
    small_class = load_pseudonymisation_policy(Path("policies/pseudonymisation.yaml")).report.small_class
    print(markdown(reports, days, last, small_class))
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
