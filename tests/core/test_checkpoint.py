"""core/checkpoint.py's one reader of weights files, read_state_dict: what each checksum mode
accepts (a run's checksummed file, a plain state dict, one wrapped under a key) and what it
refuses, each case built here from plain torch.save calls."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from core import checkpoint as ckpt
from core.checkpoint import read_state_dict


@pytest.fixture
def state() -> dict:
    return {"conv.weight": torch.arange(6.0).reshape(2, 3), "conv.bias": torch.tensor([1.0, -1.0])}


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def run_file(path: Path, obj) -> Path:
    """A run's weights file as the training writes it: torch.save bytes and their SHA-256 beside."""
    torch.save(obj, path)
    Path(f"{path}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    return path


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_plain_state_dict_is_read_in_every_mode_that_takes_plain_files(tmp_path, state):
    torch.save(state, tmp_path / "plain.pth")
    for mode in ("if_present", "ignored"):
        assert same(read_state_dict(tmp_path / "plain.pth", checksum=mode), state), mode


def test_a_run_file_is_verified_and_its_model_entry_returned(tmp_path, state):
    path = run_file(tmp_path / "weights.pth", {"model": state})
    for mode in ("required", "if_present"):
        assert same(read_state_dict(path, checksum=mode), state), mode
    Path(f"{path}.sha256").write_text("0" * 64 + "\n")  # the bytes no longer match their checksum
    for mode in ("required", "if_present"):
        with pytest.raises(ckpt.CorruptCheckpoint, match="checksum mismatch"):
            read_state_dict(path, checksum=mode)
    # A backbone's file is read as a plain one, whatever lies beside it: a checksum is not looked at.
    assert same(read_state_dict(path, checksum="ignored", wrappers=("model",)), state)


def test_without_its_checksum_a_run_file_is_refused_with_the_reason(tmp_path, state):
    torch.save({"model": state}, tmp_path / "weights.pth")
    with pytest.raises(ckpt.CorruptCheckpoint, match="no checksum file weights.pth.sha256"):
        read_state_dict(tmp_path / "weights.pth", checksum="required")
    # A plain file's {"model": ...} is not opened here: the reader says what is missing instead.
    with pytest.raises(ValueError, match=r"holds no state dict .*\(a run's weights.pth needs its .sha256 file "
                                         r"beside it\)$"):
        read_state_dict(tmp_path / "weights.pth", checksum="if_present")


def test_wrappers_are_opened_only_where_asked_and_in_their_order(tmp_path, state):
    other = {"fc.weight": torch.zeros(1)}
    torch.save({"state_dict": state, "model": other}, tmp_path / "wrapped.pth")
    assert same(read_state_dict(tmp_path / "wrapped.pth", checksum="ignored", wrappers=("state_dict", "model")), state)
    assert same(read_state_dict(tmp_path / "wrapped.pth", checksum="ignored", wrappers=("model", "state_dict")), other)
    with pytest.raises(ValueError, match="holds no state dict"):
        read_state_dict(tmp_path / "wrapped.pth", checksum="ignored")
    torch.save({"state_dict": {"model": state}}, tmp_path / "twice.pth")  # one level is opened, not two
    with pytest.raises(ValueError, match=r"holds no state dict \(expected a dict of parameter name -> tensor, "
                                         r"or one under 'state_dict' / 'model'\)$"):
        read_state_dict(tmp_path / "twice.pth", checksum="ignored", wrappers=("state_dict", "model"))


def test_a_checksummed_file_without_a_model_state_dict_is_refused(tmp_path, state):
    path = run_file(tmp_path / "weights.pth", {"weights": state})
    with pytest.raises(ValueError, match=f"^{path}: checksummed file holds no 'model' state dict$"):
        read_state_dict(path, checksum="required")


@pytest.mark.parametrize("content", [{}, [torch.zeros(1)], {"w": torch.zeros(1), "step": 3}],
                         ids=["empty", "a list", "a number among the tensors"])
def test_anything_but_a_dict_of_tensors_is_no_state_dict(tmp_path, content):
    torch.save(content, tmp_path / "x.pth")
    for mode in ("if_present", "ignored"):
        with pytest.raises(ValueError, match=f"^weights file {tmp_path / 'x.pth'} holds no state dict"):
            read_state_dict(tmp_path / "x.pth", checksum=mode, wrappers=("state_dict",))


def test_a_pickled_object_is_refused_without_running_it(tmp_path, state):
    path = tmp_path / "crafted.pth"
    torch.save({**state, "payload": _RunsCode(tmp_path / "ran")}, path)
    torch.load(path, weights_only=False)  # the control: unpickled in full, it does run
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    for mode in ("if_present", "ignored"):
        with pytest.raises(ValueError) as err:
            read_state_dict(path, checksum=mode)
        assert str(err.value).startswith(f"refused weights file {path}: not a plain PyTorch state dict")
        assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ran").exists()


def test_files_that_are_not_torch_files_name_themselves(tmp_path, state):
    (tmp_path / "notes.pth").write_text("not weights\n")
    with pytest.raises(ValueError, match=f"{tmp_path / 'notes.pth'}: not a plain PyTorch state dict"):
        read_state_dict(tmp_path / "notes.pth", checksum="if_present")
    torch.save(state, tmp_path / "cut.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "cut.pth").read_bytes()[:200])  # a zip without its end
    with pytest.raises(ValueError, match=f"^cannot read weights file {tmp_path / 'cut.pth'}: not a plain"):
        read_state_dict(tmp_path / "cut.pth", checksum="ignored")
    with pytest.raises(FileNotFoundError, match=f"^weights file not found: {tmp_path / 'absent.pth'}$"):
        read_state_dict(tmp_path / "absent.pth", checksum="ignored")
    with pytest.raises(ValueError, match="checksum must be one of"):
        read_state_dict(tmp_path / "cut.pth", checksum="sometimes")
