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
