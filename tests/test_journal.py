"""The journal records each step durably and hands back exactly what recovery needs."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from digit_inbox.daemon.journal import Entry, Journal, State


def entry(tmp_path: Path, n: int, name: str = "scan.png") -> Entry:
    return Entry(
        claim_id=f"host.1.abcd.{n:08d}",
        claim=tmp_path / "processing" / f"host.1.abcd.{n:08d}_{name}",
        original=tmp_path / "inbox" / name,
        name=name,
        noticed=1000.0 + n,
    )


def classify(e: Entry, tmp_path: Path, sha256: str = "ab" * 32) -> Entry:
    e.dest = tmp_path / "outbox" / "3" / e.name
    e.inode = (1, 42)
    e.report = tmp_path / "reports" / "2026-01-01.csv"
    e.offset = 123
    e.line = b"2026,scan.png,ok\r\n"
    e.sha256, e.moved_to, e.status = sha256, f"outbox/3/{e.name}", "ok"
    return e


def test_a_claim_survives_reopening_with_everything_recovery_needs(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as journal:
        journal.record(claimed=[entry(tmp_path, 1)])
    with Journal(tmp_path / "j.sqlite3") as journal:
        [back] = journal.unfinished()
    assert back == entry(tmp_path, 1)
    assert back.state is State.CLAIMED


def test_classified_entries_keep_their_destination_report_offset_and_exact_line(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as journal:
        e = entry(tmp_path, 1)
        journal.record(claimed=[e])
        journal.record(classified=[classify(e, tmp_path)])
        [back] = journal.unfinished()
    assert back.state is State.CLASSIFIED
    assert (back.dest, back.inode, back.report, back.offset, back.line) == (
        e.dest,
        (1, 42),
        e.report,
        123,
        b"2026,scan.png,ok\r\n",
    )


def test_done_and_forgotten_claims_are_not_unfinished(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as journal:
        a, b, c = (entry(tmp_path, n) for n in (1, 2, 3))
        journal.record(claimed=[a, b, c])
        journal.record(classified=[classify(a, tmp_path)])
        journal.record(done=[a.claim_id], forget=[b.claim_id])
        assert [e.claim_id for e in journal.unfinished()] == [c.claim_id]
        assert journal.knows(a.claim_id) and not journal.knows(b.claim_id)


def test_claiming_again_counts_attempts(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as journal:
        e = entry(tmp_path, 1)
        journal.record(claimed=[e])
        e.attempts = 2
        journal.record(claimed=[e])
        [back] = journal.unfinished()
    assert back.attempts == 2


def test_duplicates_are_found_by_content_among_classified_and_done_files(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as journal:
        first, second = entry(tmp_path, 1, "a.png"), entry(tmp_path, 2, "b.png")
        journal.record(claimed=[first, second])
        assert journal.first_with("ab" * 32) is None
        journal.record(classified=[classify(first, tmp_path)])
        journal.record(done=[first.claim_id])
        assert journal.first_with("ab" * 32) == "outbox/3/a.png"
        assert journal.first_with("cd" * 32) is None
        assert journal.first_with("") is None


def test_names_that_are_not_valid_utf8_survive_the_round_trip(tmp_path):
    name = os.fsdecode(b"scan-\xff.png")
    with Journal(tmp_path / "j.sqlite3") as journal:
        journal.record(claimed=[entry(tmp_path, 1, name)])
        [back] = journal.unfinished()
    assert back.claim.name.endswith(name) and back.original.name == name
    assert back.name == "scan-\\xff.png"


def test_a_failed_transaction_changes_nothing(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as journal:
        e = entry(tmp_path, 1)
        journal.record(claimed=[e])
        broken = classify(entry(tmp_path, 1), tmp_path)
        broken.offset = object()  # type: ignore[assignment]  # SQLite cannot store it
        with pytest.raises(sqlite3.Error):
            journal.record(claimed=[entry(tmp_path, 2)], classified=[broken])
        assert [x.claim_id for x in journal.unfinished()] == [e.claim_id]
        assert journal.unfinished()[0].state is State.CLAIMED


def test_per_file_lookups_use_indexes_so_a_long_journal_is_never_scanned(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as journal:
        journal.record(claimed=[entry(tmp_path, 1)])
        plans = []
        for sql, args in journal.per_file_queries("ab" * 32, "host.1.abcd.00000001"):
            plans += [row[-1] for row in journal.db.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
    assert plans and all("SCAN claims" not in plan for plan in plans), plans
