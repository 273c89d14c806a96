"""core/cli.py: an input error raised mid-run becomes one `error:` line and exit code 2; any other
exception (a bug, not bad input) keeps its traceback."""
from __future__ import annotations

import pytest

from core import checkpoint as ckpt


def test_input_errors_mid_run_become_one_error_line_and_others_keep_their_traceback(capsys):
    from core.cli import exit_on_input_error
    with pytest.raises(SystemExit) as stopped, exit_on_input_error():
        raise ckpt.UnsafeCheckpoint("runs/x/00_teacher/weights.pth: refused to load")
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: runs/x/00_teacher/weights.pth: refused to load\n"
    with pytest.raises(KeyError), exit_on_input_error():  # a bug, not bad input: not hidden
        raise KeyError("model")


def test_a_missing_input_is_one_line_but_a_bugs_file_not_found_keeps_its_traceback(capsys):
    from core.cli import exit_on_input_error
    from core.errors import MissingInput
    with pytest.raises(SystemExit) as stopped, exit_on_input_error():
        raise MissingInput("image file not found: data/x.png")
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: image file not found: data/x.png\n"
    with pytest.raises(FileNotFoundError), exit_on_input_error():  # e.g. our own code opening a wrong path
        open("/nonexistent/of/this/project")


class _GoneImage:
    def __len__(self):
        return 1

    def __getitem__(self, i):
        from core.errors import MissingInput
        raise MissingInput("image file not found: data/gone.png")


def test_an_input_error_raised_in_a_loader_worker_is_its_own_message_without_the_workers_traceback(capsys):
    import torch
    from core.cli import exit_on_input_error
    with pytest.raises(SystemExit) as stopped, exit_on_input_error():
        next(iter(torch.utils.data.DataLoader(_GoneImage(), num_workers=1)))
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: image file not found: data/gone.png\n"
