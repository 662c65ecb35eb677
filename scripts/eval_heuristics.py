#!/usr/bin/env python3
"""Detection per attack class and per source, and false positives per benign source, of a config's rails.

    NEMO_GUARDRAILS_NO_USAGE_STATS=1 python scripts/eval_heuristics.py \
        [--split heldout|dev] [--config configs/no-models] [--data-dir ../shared/data] [--markdown] \
        [--show-misses] [--show-fp]

Rows, each run through ``railstack.tools.check.check_rows`` (input rows, tool results in
``messages``, and answers for the output rails):

* the labelled attack-family set of ``scripts/attack_families.py``, one split: attacks and their
  benign counterparts, reported per class;
* the attack rows of ``injection_eval.jsonl`` in the shared data, per upstream source;
* the benign corpora of ``scripts/benign_sources.py``: the shared data's benign rows per source and
  the external corpora the rules were not written against.

The false-positive target is at most 1% on every benign source, each marked PASS or FAIL; the exit
status is 1 when one fails, 2 when a row could not be checked (its error is printed). Rules are
written against ``--split dev``; ``heldout`` (the default) is for reporting. ``--show-misses`` and
``--show-fp`` print rows only with ``--split dev``, and never rows of the external corpora, so that
no rule is tuned on what measures it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attack_families  # noqa: E402
import benign_sources  # noqa: E402

FP_TARGET = 0.01
ATTACK_FILE = "injection_eval.jsonl"
CHECKED_FIELDS = ("text", "answer", "messages")


def load_rows(split: str, data_dir: Path) -> list[dict]:
    rows = [{**r, "group": f"class {r['class']}", "viewable": split == "dev"} for r in attack_families.generate(split)]
    with (data_dir / ATTACK_FILE).open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if row["label"] != "benign":
                rows.append({"text": row["text"], "label": "attack", "source": f"{ATTACK_FILE}: {row['source']}",
                             "group": f"source {ATTACK_FILE}: {row['source']}", "viewable": split == "dev"})
    for row in benign_sources.shared_rows(data_dir):
        rows.append({**row, "group": f"source {row['source']}", "viewable": split == "dev"})
    for row in benign_sources.external_rows():
        rows.append({**row, "group": f"source {row['source']}", "viewable": False})
    return rows


def _checked(row: dict) -> dict:
    # A tool-result row keeps its text (the user's turn) for the reports; the rails read its messages.
    fields = {k: row[k] for k in CHECKED_FIELDS if k in row}
    if "messages" in fields:
        fields.pop("text", None)
    return fields


def run(config: Path, rows: list[dict]) -> list[dict]:
    from railstack.tools.check import check_rows

    results = list(check_rows(config, [_checked(r) for r in rows]))
    if [res["row"] for res in results] != list(range(len(rows))):
        raise SystemExit("error: check_rows did not answer every row once, in order")
    return results


def tally(rows: list[dict], results: list[dict]) -> dict[tuple[str, str], dict[str, int]]:
    """(group, label) -> rows, blocked, errors. The generated benign rows count once per class and
    once more under their source, so that the source has a false-positive rate of its own."""
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"rows": 0, "blocked": 0, "errors": 0})
    for row, res in zip(rows, results):
        groups = [row["group"]]
        if row["group"].startswith("class ") and row["label"] == "benign":
            groups.append(f"source {row['source']}")
        for group in groups:
            bucket = counts[(group, row["label"])]
            bucket["rows"] += 1
            bucket["errors"] += "error" in res
            bucket["blocked"] += res.get("verdict") == "block"
    return counts


def table(counts: dict[tuple[str, str], dict[str, int]]) -> list[tuple[str, str, int, int, int, str]]:
    out = []
    for label in ("attack", "benign"):
        keys = sorted(k for k in counts if k[1] == label)
        for group, _ in keys:
            c = counts[(group, label)]
            verdict = ""
            if label == "benign" and group.startswith("source "):
                verdict = "PASS" if c["blocked"] <= FP_TARGET * c["rows"] and not c["errors"] else "FAIL"
            out.append((group, label, c["rows"], c["blocked"], c["errors"], verdict))
        if keys:
            # A generated benign row is in its class and its source: count it once in the total.
            total = [counts[k] for k in keys if label == "attack" or k[0].startswith("source ")]
            out.append(("ALL", label, *(sum(c[f] for c in total) for f in ("rows", "blocked", "errors")), ""))
    return out


def print_table(lines: list[tuple[str, str, int, int, int, str]], split: str, markdown: bool) -> None:
    head = ("group", "label", "rows", "blocked", "rate", "errors", f"FP <= {FP_TARGET:.0%}")
    body = [(g, lab, str(n), str(b), f"{b / n:.1%}" if n else "-", str(e), v) for g, lab, n, b, e, v in lines]
    print(f"split: {split} (attack-family set); rate = detection for attack rows, false positives for benign\n")
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|---|---:|---:|---:|---:|---|")
        for line in body:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    for line in [head, *body]:
        print("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))))


def show(rows: list[dict], results: list[dict], misses: bool, fps: bool) -> None:
    for row, res in zip(rows, results):
        if not row["viewable"] or "error" in res:
            continue
        blocked = res["verdict"] == "block"
        if misses and row["label"] == "attack" and not blocked:
            print(f"MISS [{row['group']}] {row.get('answer') or row['text']!r:.300}", file=sys.stderr)
        if fps and row["label"] == "benign" and blocked:
            print(f"FP [{row['group']}] {res['rail']}: {res['reason']}: {row.get('answer') or row['text']!r:.300}",
                  file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=attack_families.SPLITS, default="heldout")
    parser.add_argument("--config", type=Path, default=None, help="config dir (default: packaged no-models)")
    parser.add_argument("--data-dir", type=Path, default=benign_sources.SHARED_DATA)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--show-misses", action="store_true", help="print the attack rows let through (dev only)")
    parser.add_argument("--show-fp", action="store_true", help="print the benign rows blocked (dev only)")
    args = parser.parse_args()
    if (args.show_misses or args.show_fp) and args.split != "dev":
        parser.error("--show-misses and --show-fp print rows of --split dev only: heldout rows measure the rules "
                     "and must not be read while writing them")

    from railstack.paths import config_dir

    try:
        rows = load_rows(args.split, args.data_dir)
    except benign_sources.MissingSource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = run(args.config or config_dir("no-models"), rows)
    show(rows, results, args.show_misses, args.show_fp)
    lines = table(tally(rows, results))
    print_table(lines, args.split, args.markdown)

    errors = [(row, res) for row, res in zip(rows, results) if "error" in res]
    for row, res in errors[:20]:
        print(f"error [{row['group']}] row {res['row']}: {res['error']}", file=sys.stderr)
    failed = [g for g, label, *_, v in lines if v == "FAIL"]
    print(f"\n{len(failed)} benign source(s) over the {FP_TARGET:.0%} false-positive target"
          + (f": {', '.join(g.removeprefix('source ') for g in failed)}" if failed else ""))
    if errors:
        print(f"{len(errors)} row(s) could not be checked", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
