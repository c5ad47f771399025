"""`open_record`: which file a run records to, and clear errors when it cannot."""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from pathlib import Path

import pytest

from gradtui.wire import codec as wire
from gradtui.wire import record as rec
from gradtui.wire.record import (
    RecordExistsError,
    RecordPathError,
    RecordWriter,
    is_record_folder,
    open_record,
    read_record,
    safe_run_name,
)

STAMPED = re.compile(r"^(?P<run>.+)-(?P<date>\d{8})-(?P<time>\d{6})(?:-(?P<n>\d+))?\.gtr$")
NOON = 1_750_000_000.0


def _is_fresh_record(path: Path) -> bool:
    """A file that starts with a record hello and holds no events yet."""
    head = path.read_bytes()
    return head.startswith(wire.MAGIC) and read_record(path).events == []


# ---------------------------------------------------------------- the folder rule


def test_the_folder_rule(tmp_path: Path) -> None:
    (tmp_path / "made.d").mkdir()
    (tmp_path / "plainfile").write_bytes(b"x")
    assert is_record_folder(tmp_path / "made.d")  # an existing directory, whatever its name
    assert is_record_folder(str(tmp_path / "new.d") + os.sep)  # a trailing separator
    assert is_record_folder(tmp_path / "runs")  # no suffix, does not exist
    assert is_record_folder("runs/") and is_record_folder("runs")
    assert not is_record_folder(tmp_path / "run.gtr")  # a suffix: a file
    assert not is_record_folder(tmp_path / "runs" / "today.gtr")
    assert not is_record_folder(tmp_path / "plainfile")  # exists as a file, no suffix
    assert not is_record_folder(Path("run.gtr"))


def test_a_folder_gets_a_new_stamped_file_each_run(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    paths = []
    for _ in range(2):
        w = open_record(folder, run="train-42")
        w.close()
        paths.append(w.path)
    assert paths[0] != paths[1]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)
    for p in paths:
        assert p.parent == folder
        m = STAMPED.match(p.name)
        assert m is not None and m["run"] == "train-42", p.name
        assert _is_fresh_record(p)


def test_names_taken_in_the_same_second_are_numbered(tmp_path: Path) -> None:
    names = []
    for _ in range(3):
        w = open_record(str(tmp_path / "out") + "/", run="r", now=NOON)
        w.close()
        names.append(w.path.name)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(NOON))
    assert names == [f"r-{stamp}.gtr", f"r-{stamp}-2.gtr", f"r-{stamp}-3.gtr"]


def test_a_name_taken_by_a_folder_is_skipped(tmp_path: Path) -> None:
    first = open_record(tmp_path, run="r", now=NOON)
    first.close()
    first.path.unlink()
    first.path.mkdir()  # someone made a folder of that name
    w = open_record(tmp_path, run="r", now=NOON)
    w.close()
    assert w.path.name.endswith("-2.gtr") and _is_fresh_record(w.path)


def test_processes_racing_for_one_folder_never_share_a_file(tmp_path: Path) -> None:
    got: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        try:
            w = open_record(tmp_path / "runs", run="same", now=NOON)
            w.close()
            got.append(w.path)
        except BaseException as exc:  # pragma: no cover - the failure reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(got)) == 8 and all(_is_fresh_record(p) for p in got)


@pytest.mark.parametrize(
    ("run", "name"),
    [
        ("train-42", "train-42"),
        ("my run/../../etc", "my_run_.._.._etc"),
        ("..hidden", "hidden"),
        ("-rf", "rf"),
        ("ünï code", "_n_code"),
        ("", "run"),
        ("///", "_"),
        ("x" * 300, "x" * 80),
    ],
)
def test_run_names_become_safe_file_names(run: str, name: str) -> None:
    assert safe_run_name(run) == name


def test_a_hostile_run_name_stays_inside_the_folder(tmp_path: Path) -> None:
    w = open_record(tmp_path / "runs", run="../../escape\x00me")
    w.close()
    assert w.path.parent == tmp_path / "runs"
    assert list((tmp_path / "runs").iterdir()) == [w.path]


# ---------------------------------------------------------------- a file


def test_a_file_is_created_with_its_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "run.gtr"
    w = open_record(path, run="r")
    w.close()
    assert w.path == path and _is_fresh_record(path)
    folder = tmp_path / "x" / "y"
    w = open_record(str(folder) + os.sep, run="r")
    w.close()
    assert w.path.parent == folder and _is_fresh_record(w.path)


def test_an_existing_file_is_refused_with_both_ways_out(tmp_path: Path) -> None:
    path = tmp_path / "run.gtr"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError) as info:
        open_record(path, run="r")
    exc = info.value
    assert isinstance(exc, RecordExistsError) and isinstance(exc, RecordPathError)
    text = str(exc)
    assert str(path) in text and "already exists" in text
    assert "overwrite=True" in text and "record='runs/'" in text
    assert exc.filename == str(path) and exc.errno == errno.EEXIST
    assert exc.__cause__ is None and exc.__suppress_context__
    assert path.read_bytes() == b"precious"
    # the same rule through RecordWriter itself
    with pytest.raises(FileExistsError, match="already exists"):
        RecordWriter(path)


def test_an_existing_file_without_a_suffix_is_a_file_too(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        open_record(path, run="r")
    assert path.read_bytes() == b"precious"


def test_overwrite_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "run.gtr"
    path.write_bytes(b"old bytes that are not a record")
    w = open_record(path, run="r", overwrite=True)
    w.close()
    assert w.path == path and _is_fresh_record(path)


def test_overwrite_does_not_touch_a_folder(tmp_path: Path) -> None:
    old = open_record(tmp_path, run="r", now=NOON)
    old.close()
    new = open_record(tmp_path, run="r", overwrite=True, now=NOON)
    new.close()
    assert old.path != new.path and old.path.exists()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "where",
    [
        ("file.txt", "run.gtr"),  # the parent is a file
        ("file.txt", "deeper", "run.gtr"),  # an ancestor is a file
        ("file.txt", "runs/"),  # a folder below a file
    ],
)
def test_a_parent_that_is_a_file_is_a_clear_error(tmp_path: Path, where: tuple[str, ...]) -> None:
    (tmp_path / "file.txt").write_bytes(b"not a folder")
    target = os.path.join(tmp_path, *where)
    with pytest.raises(NotADirectoryError) as info:
        open_record(target, run="r")
    exc = info.value
    assert isinstance(exc, RecordPathError)
    assert f"{str(tmp_path / 'file.txt')!r} is a file, not a folder" in str(exc)
    assert exc.filename is not None and exc.__cause__ is None
    assert (tmp_path / "file.txt").read_bytes() == b"not a folder"


def test_a_folder_given_as_a_file_with_a_slash_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "runs").write_bytes(b"a file named like a folder")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        open_record(str(tmp_path / "runs") + "/", run="r")


def test_record_writer_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a folder"):
        RecordWriter(tmp_path)


def test_an_empty_path_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        open_record("", run="r")


def test_no_permission_is_a_clear_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "locked" / "run.gtr"
    real_open = os.open

    def refusing_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if os.fspath(path) == str(target):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(rec.os, "open", refusing_open)
    with pytest.raises(PermissionError) as info:
        open_record(target, run="r")
    exc = info.value
    assert isinstance(exc, RecordPathError)
    assert str(exc) == f"cannot create record file {str(target)!r}: Permission denied"
    assert exc.filename == str(target) and exc.errno == errno.EACCES
    assert not target.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_a_clear_permission_error(tmp_path: Path) -> None:  # pragma: no cover - not as root
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot create record file"):
            open_record(locked / "run.gtr", run="r")
        with pytest.raises(PermissionError, match="cannot create"):
            open_record(locked / "sub" / "run.gtr", run="r")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_hello_leaves_no_empty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: bool) -> None:
    def full_disk(self: RecordWriter, frame: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write_frame", full_disk)
    target = tmp_path / "runs" if folder else tmp_path / "run.gtr"
    with pytest.raises(OSError) as info:
        open_record(target, run="r")
    exc = info.value
    assert isinstance(exc, RecordPathError) and exc.errno == errno.ENOSPC
    assert "cannot write to record file" in str(exc) and "No space left on device" in str(exc)
    assert exc.filename is not None and str(tmp_path) in str(exc)
    left = list((tmp_path / "runs").iterdir()) if folder else [p for p in tmp_path.iterdir()]
    assert left == []


def test_a_failed_hello_over_an_existing_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.gtr"
    path.write_bytes(b"old")

    def full_disk(self: RecordWriter, frame: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write_frame", full_disk)
    with pytest.raises(OSError, match="No space"):
        open_record(path, run="r", overwrite=True)
    assert not path.exists()


def test_report_on_a_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gradtui.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err
