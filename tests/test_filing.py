"""Moves that never overwrite: claims, destinations with _1, _2..., error notes, releases."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from digit_inbox.daemon import filing


def make(path: Path, data: bytes = b"scan") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_candidates_number_before_the_extension():
    names = filing.candidates("scan.png")
    assert [next(names) for _ in range(4)] == ["scan.png", "scan_1.png", "scan_2.png", "scan_3.png"]
    assert [next(filing.candidates("README")), "README_1"] == ["README", "README_1"]


def test_names_are_shortened_to_fit_the_filesystem_keeping_the_extension():
    name = "x" * 300 + ".png"
    fitted = filing.fit(name, "_12")
    assert len(fitted.encode()) == 255 and fitted.endswith("_12.png")


def test_free_name_skips_taken_names(tmp_path):
    make(tmp_path / "scan.png")
    make(tmp_path / "scan_1.png")
    assert filing.free_name(tmp_path, "scan.png") == tmp_path / "scan_2.png"


def test_place_never_overwrites_an_existing_file(tmp_path):
    claimed = make(tmp_path / "claim", b"new")
    existing = make(tmp_path / "out" / "scan.png", b"old")
    with pytest.raises(FileExistsError):
        filing.place(claimed, existing)
    assert existing.read_bytes() == b"old" and claimed.read_bytes() == b"new"


def test_place_then_release_leaves_the_file_only_at_its_destination(tmp_path):
    claimed = make(tmp_path / "processing" / "claim", b"scan")
    dest = tmp_path / "out" / "3" / "scan.png"
    filing.place(claimed, dest)
    assert claimed.exists() and dest.exists()  # both names until the row is written
    assert filing.release(claimed, dest)
    assert not claimed.exists() and dest.read_bytes() == b"scan"
    assert filing.release(claimed, dest)  # releasing again is a no-op


def test_release_keeps_the_claim_if_the_destination_no_longer_holds_it(tmp_path):
    claimed = make(tmp_path / "claim", b"scan")
    dest = tmp_path / "out" / "scan.png"
    filing.place(claimed, dest)
    dest.unlink()
    make(dest, b"someone else's file")
    assert not filing.release(claimed, dest)
    assert claimed.read_bytes() == b"scan"


def test_colliding_names_get_numbered_and_nothing_is_overwritten(tmp_path):
    out = tmp_path / "out"
    for i in range(3):
        claimed = make(tmp_path / f"claim{i}", f"scan {i}".encode())
        dest = filing.free_name(out, "scan.png")
        filing.place(claimed, dest)
        assert filing.release(claimed, dest)
    assert sorted(p.name for p in out.iterdir()) == ["scan.png", "scan_1.png", "scan_2.png"]
    assert {p.read_bytes() for p in out.iterdir()} == {b"scan 0", b"scan 1", b"scan 2"}


def test_racing_placements_on_one_name_let_exactly_one_win(tmp_path):
    dest = tmp_path / "out" / "scan.png"
    claims = [make(tmp_path / f"claim{i}", f"{i}".encode()) for i in range(8)]
    wins: list[Path] = []
    barrier = threading.Barrier(len(claims))

    def race(claimed: Path) -> None:
        barrier.wait()
        try:
            filing.place(claimed, dest)
            wins.append(claimed)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=race, args=(c,)) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and dest.read_bytes() == wins[0].read_bytes()


def test_claiming_a_file_another_process_took_raises_file_not_found(tmp_path):
    source = make(tmp_path / "inbox" / "scan.png")
    (tmp_path / "processing").mkdir()
    filing.claim(source, tmp_path / "processing" / "a_scan.png")
    with pytest.raises(FileNotFoundError):
        filing.claim(source, tmp_path / "processing" / "b_scan.png")


def test_symlinks_are_placed_as_links_never_followed(tmp_path):
    target = make(tmp_path / "secret", b"not yours")
    link = tmp_path / "claim"
    link.symlink_to(target)
    dest = tmp_path / "failed" / "link.png"
    filing.place(link, dest)
    filing.release(link, dest)
    assert dest.is_symlink() and os.readlink(dest) == str(target)
    assert target.read_bytes() == b"not yours"


def test_folders_and_fifos_can_be_placed_without_being_opened(tmp_path):
    folder = tmp_path / "claim-dir"
    make(folder / "inside.png")
    fifo = tmp_path / "claim-fifo"
    os.mkfifo(fifo)
    filing.place(folder, tmp_path / "failed" / "sub")
    filing.place(fifo, tmp_path / "failed" / "pipe.png")
    filing.release(fifo, tmp_path / "failed" / "pipe.png")
    assert (tmp_path / "failed" / "sub" / "inside.png").exists() and not folder.exists()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "failed" / "pipe.png").st_mode)
    assert not fifo.exists()


def test_rename_noreplace_refuses_to_replace(tmp_path):
    a, b = make(tmp_path / "a", b"a"), make(tmp_path / "b", b"b")
    with pytest.raises(FileExistsError):
        filing.rename_noreplace(a, b)
    assert b.read_bytes() == b"b"


def test_an_error_note_is_written_once_and_never_replaced(tmp_path):
    dest = make(tmp_path / "failed" / "bad.png")
    filing.write_note(dest, "cannot decode\n")
    filing.write_note(dest, "something else\n")
    assert Path(f"{dest}.error.txt").read_text() == "cannot decode\n"


def test_claim_names_carry_host_pid_tag_and_counter_and_parse_back():
    names = filing.ClaimNames("abcd1234")
    first, second = names.next_id(), names.next_id()
    assert first != second
    parsed = filing.ClaimNames.parse(names.file_name(first, "my_scan.png"))
    assert parsed == (first, "abcd1234", "my_scan.png")
    assert f".{os.getpid()}." in first
    assert filing.ClaimNames.parse("random_file.png") is None


def test_disk_full_and_permission_errors_are_transient_but_bugs_are_not():
    assert filing.is_transient(OSError(28, "No space left on device"))
    assert filing.is_transient(PermissionError(13, "Permission denied"))
    assert not filing.is_transient(ValueError("bug"))
    assert not filing.is_transient(IsADirectoryError(21, "Is a directory"))
