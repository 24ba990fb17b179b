#!/usr/bin/env python3
"""Summarise several rounds of `hla bench --compare` (each round: PyTorch's reference files and
ours measured back to back) into one table: every round's ours / PyTorch ratio per case, and
their median. On a noisy machine a single round can move by a third; the spread of same-run
ratios over rounds says how far one can be trusted. Never mixes figures across rounds: each
ratio is the one its round printed.

usage: python tools/bench/rounds.py ROUND1.md ROUND2.md ...   (the tables `--compare` printed)
"""
import statistics
import sys


def cases(path):
    """(work, ours, pytorch, ratio) rows of one `--compare` table, in order."""
    rows = []
    for line in open(path, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] in ("work", "") or cells[0].startswith("---"):
            continue
        try:
            ours = float(cells[1])
        except ValueError:
            continue
        torch = float(cells[2]) if cells[2] not in ("—", "-") else None
        ratio = float(cells[3]) if cells[3] not in ("—", "-") else None
        rows.append((cells[0], ours, torch, ratio))
    return rows


def main(paths):
    if not paths:
        sys.exit(__doc__)
    rounds = [cases(p) for p in paths]
    works = [r[0] for r in rounds[0]]
    head = "| work | " + " | ".join(f"round {i + 1}" for i in range(len(paths))) + " | median |"
    print(head)
    print("|---" * (len(paths) + 2) + "|")
    for w in works:
        cells, ratios = [], []
        for rnd in rounds:
            row = next((r for r in rnd if r[0] == w), None)
            if row is None or row[3] is None:
                cells.append("—")
                continue
            cells.append(f"{row[3]:.2f} ({row[1]:.1f} / {row[2]:.1f})")
            ratios.append(row[3])
        med = f"**{statistics.median(ratios):.2f}**" if ratios else "—"
        print(f"| {w} | " + " | ".join(cells) + f" | {med} |")


if __name__ == "__main__":
    main(sys.argv[1:])
