"""Copy the first table of leaderboard/SUMMARY.md (generated from the committed records) into README.md between
the headline markers, with the number of records it rests on, so the README's numbers are never typed by hand.

    python scripts/readme_headline.py [--check]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- headline:start (scripts/readme_headline.py) -->", "<!-- headline:end -->"


def headline() -> str:
    summary = (ROOT / "leaderboard" / "SUMMARY.md").read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(summary) if line.startswith("| "))
    table = []
    for line in summary[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    # the count the pages themselves were made from (the index's "Records: N ok"), not the store directory's,
    # which a running sweep keeps adding to
    index = (ROOT / "leaderboard" / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^Records: (\d+) ok", index, re.M)
    if found is None:
        raise SystemExit("leaderboard/README.md has no 'Records: N ok' line: regenerate it with bench leaderboard")
    records = int(found.group(1))
    anchors = [f"- {page.stem}: {line.removeprefix('Reference anchor: ')}"
               for page in sorted((ROOT / "leaderboard").glob("*.md"))
               for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("Reference anchor:")]
    return "\n".join([
        START,
        f"Change of CGCNN's test MAE against one-hot (negative = better), copied from "
        f"[`leaderboard/SUMMARY.md`](leaderboard/SUMMARY.md) as it stands on {records} committed records; "
        "* = paired t-test over seeds p < 0.05, uncorrected; a cell with fewer than two seeds carries no test "
        "(the task pages give means, stds and seeds):",
        "",
        *table,
        *(["", "Anchor checks against published MAEs on the same split (from the task pages):", "", *anchors]
          if anchors else []),
        END,
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md is not up to date")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 2
    new = pattern.sub(lambda _m: headline(), text)
    if args.check:
        if new != text:
            print("README.md's headline differs from leaderboard/SUMMARY.md: run python scripts/readme_headline.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
