"""core/io.py's atomic folder writer, the clean-up of killed writers' temporaries, and the check of
an output folder before long work: each against what the test itself wrote or expects."""
from __future__ import annotations

import os
import re
import signal

import pytest

from core.errors import InputError
from core.io import atomic_folder, atomic_write_text, remove_stale_temporaries, writable_folder
from tests.helpers import run_snippet

# al/guard.py's rule for the temporaries a run directory may hold, written out here independently.
TEMPORARY = re.compile(r"^\..+\.tmp-.+$")


def tree(folder) -> dict:
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_block_leaves_exactly_the_complete_folder(tmp_path):
    final = tmp_path / "parent" / "labels"  # its parent does not exist yet either
    with atomic_folder(final) as tmp:
        assert not final.exists()  # nothing at the final name while the folder is written
        assert tmp.parent == final.parent and TEMPORARY.match(tmp.name), tmp
        (tmp / "a.png").write_bytes(b"first")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.json").write_text("{}\n")
    assert tree(final) == {"a.png": b"first", "sub/b.json": b"{}\n"}
    assert os.listdir(final.parent) == ["labels"]  # no temporary beside it


def test_a_failure_inside_leaves_no_folder_and_no_temporary(tmp_path):
    final = tmp_path / "labels"
    with pytest.raises(KeyError, match="half-way"):
        with atomic_folder(final) as tmp:
            (tmp / "a.png").write_bytes(b"written before the failure")
            raise KeyError("half-way")
    assert os.listdir(tmp_path) == []


def test_a_second_writer_never_replaces_a_finished_folder(tmp_path):
    final = tmp_path / "set"
    with atomic_folder(final) as tmp:
        (tmp / "one.txt").write_text("the first writer's\n")
    with pytest.raises(OSError):  # another process that finished second (as two ranks may)
        with atomic_folder(final) as tmp:
            (tmp / "two.txt").write_text("the second writer's\n")
    assert tree(final) == {"one.txt": b"the first writer's\n"}
    assert os.listdir(tmp_path) == ["set"]


def test_an_empty_folder_at_the_final_name_is_filled(tmp_path):
    (tmp_path / "set").mkdir()
    with atomic_folder(tmp_path / "set") as tmp:
        (tmp / "x").write_bytes(b"x")
    assert tree(tmp_path / "set") == {"x": b"x"}


def test_a_named_temporary_left_by_a_killed_writer_is_redone_and_replace_swaps_the_folder(tmp_path):
    stale = tmp_path / "01_student.copying"
    stale.mkdir()
    (stale / "junk.pth").write_bytes(b"left by a killed copy")
    final = tmp_path / "01_student"
    final.mkdir()
    (final / "old.json").write_text("old\n")
    with atomic_folder(final, temporary="01_student.copying", replace=True) as tmp:
        assert tmp == stale and list(tmp.iterdir()) == []  # the leftover is gone, not built upon
        (tmp / "weights.pth").write_bytes(b"new")
    assert tree(final) == {"weights.pth": b"new"}
    assert sorted(os.listdir(tmp_path)) == ["01_student"]


def test_stale_temporary_files_and_folders_are_removed_and_nothing_else(tmp_path):
    atomic_write_text(tmp_path / "stage" / "keep.json", "{}\n")
    (tmp_path / "stage" / ".weights.pth.tmp-host-12").write_bytes(b"a killed file write")
    leftover = tmp_path / "stage" / ".human_labels.tmp-host-34"
    (leftover / "inner").mkdir(parents=True)
    (leftover / "inner" / ".a.png.tmp-host-34").write_bytes(b"inside the killed folder write")
    (leftover / "b.png").write_bytes(b"b")
    (tmp_path / ".summary.json.tmp-host-56").write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == 3
    assert tree(tmp_path) == {"stage/keep.json": b"{}\n"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.json", "stage"]


_KILLED_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
from core.io import atomic_folder
with atomic_folder(Path(sys.argv[1])) as tmp:
    (tmp / "half.png").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_folder_leaves_no_folder_and_its_leftover_is_recognised(tmp_path):
    # A real SIGKILL: no finally block runs.
    killed = run_snippet(_KILLED_WHILE_WRITING, str(tmp_path / "labels"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "labels").exists()
    [leftover] = os.listdir(tmp_path)
    assert TEMPORARY.match(leftover), leftover
    assert remove_stale_temporaries(tmp_path) == 1 and os.listdir(tmp_path) == []


def test_an_output_folder_is_checked_before_the_work(tmp_path):
    assert writable_folder(tmp_path / "new" / "preds") == tmp_path / "new" / "preds"
    assert not (tmp_path / "new").exists()  # checked, not made
    (tmp_path / "a_file").write_text("x\n")
    with pytest.raises(InputError, match=f"^{re.escape(str(tmp_path / 'a_file' / 'preds'))}: "
                                         f"{re.escape(str(tmp_path / 'a_file'))} is a file, not a folder$"):
        writable_folder(tmp_path / "a_file" / "preds")


def test_a_read_only_output_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root may write anywhere
        pytest.skip("running as a user who can write into a read-only folder")
    with pytest.raises(InputError, match="locked is not writable$"):
        writable_folder(locked / "preds")
