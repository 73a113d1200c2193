"""What a partial blob holds (HeldRanges, pure) and its journal across a crash (RangeJournal),
apart from the file and the hash that Ingest keeps; end to end in test_ingest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer.ranges import HeldRanges, RangeJournal, Span


@pytest.mark.parametrize(
    ("added", "spans", "prefix", "missing"),
    [
        ([], [], 0, [(0, 100)]),
        ([(0, 10)], [(0, 10)], 10, [(10, 100)]),
        ([(20, 30), (0, 10)], [(0, 10), (20, 30)], 10, [(10, 20), (30, 100)]),
        ([(0, 10), (10, 20)], [(0, 20)], 20, [(20, 100)]),  # touching ranges merge
        ([(5, 15), (0, 10)], [(0, 15)], 15, [(15, 100)]),  # overlapping ranges merge
        ([(50, 50), (60, 55)], [], 0, [(0, 100)]),  # empty or reversed: nothing held
        ([(0, 100)], [(0, 100)], 100, []),
    ],
)
def test_held_ranges(
    added: list[Span], spans: list[Span], prefix: int, missing: list[Span]
) -> None:
    held = HeldRanges(100)
    for start, end in added:
        held.add(start, end)
    assert held.spans == spans
    assert held.prefix() == prefix
    assert held.missing() == missing
    assert held.received == sum(b - a for a, b in spans)


def test_gap_end_is_the_next_held_byte_or_the_size() -> None:
    held = HeldRanges(100, [(0, 10), (40, 50)])
    assert held.gap_end(10) == 40
    assert held.gap_end(60) == 100


def test_the_journal_keeps_appended_claims_and_drops_a_torn_line(tmp_path: Path) -> None:
    partial = tmp_path / "blob.partial"
    journal = RangeJournal(partial, "sha256:" + "a" * 64)
    assert journal.load(100) is None  # no journal: a plain prefix
    journal.rewrite([(0, 10)])
    journal.append(40, 50)
    journal.close()
    with journal.path.open("a") as torn:
        torn.write("60 7")  # a crash in the middle of an append
    assert journal.load(100) == [(0, 10), (40, 50)]
    assert journal.load(45) == [(0, 10), (40, 45)]  # only what the file really holds
    assert RangeJournal(partial, "sha256:" + "b" * 64).load(100) is None  # another blob's
    journal.path.write_text("{not json\n")
    assert journal.load(100) == []  # damaged: nothing is trusted
    journal.remove()
    assert not journal.path.exists()
