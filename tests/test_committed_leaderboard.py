"""The committed leaderboards are exactly what their committed records render to (the records are the truth):
`leaderboard/` from the reference-cpu store (the complete 216-trial grid of issue 11), and the older, smaller quick-cpu
protocol in its own store's `leaderboard/`."""

from pathlib import Path

import pytest

from bench.leaderboard import check_leaderboard

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("store, out, n", [("leaderboard/reference-cpu", "leaderboard", 216),
                                           ("leaderboard/quick-cpu", "leaderboard/quick-cpu/leaderboard", 60)])
def test_committed_leaderboard_matches_committed_records(store, out, n):
    records = REPO / store / "records"
    assert records.is_dir(), f"the committed {store} records are missing"
    count = len(list(records.glob("*.json")))
    assert count == n, f"{store} holds {count} records, expected {n}"
    problems = check_leaderboard(REPO / store, REPO / out)
    assert not problems, problems


def test_readme_headline_is_the_generated_summary_table():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_headline.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, "README.md's headline table is stale: run python scripts/readme_headline.py"
