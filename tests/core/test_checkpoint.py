"""core/checkpoint.py: step checkpoints (the newest two kept, a damaged one reported and the previous
one used), loading that cannot execute code (issue 14.5: every run file is read with torch's
weights-only unpickler; a crafted file whose pickle would run code -- here: create a marker file --
and whose checksum is valid is refused with UnsafeCheckpoint naming it, and the marker never
appears), RNG and trainer state that load weights-only, and read_state_dict, the one reader of
weights files: what each checksum mode accepts (a run's checksummed file, a plain state dict, one
wrapped under a key) and what it refuses, each case built from plain torch.save calls."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from core.checkpoint import read_state_dict
from tests.helpers import RunsCode, checksummed_file, plant_crafted


def test_checkpoint_corruption_is_detected_and_the_previous_one_used(tmp_path):
    ckpt.save_step(tmp_path, 10, {"step": 10})
    ckpt.save_step(tmp_path, 20, {"step": 20})
    ckpt.save_step(tmp_path, 30, {"step": 30})
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [30, 20]  # keeps the newest two
    newest = tmp_path / "step_00000030.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # cut short, as by a full disk
    warnings = []
    state = ckpt.load_latest(tmp_path, warn=warnings.append)
    assert state["step"] == 20
    assert len(warnings) == 1 and str(newest) in warnings[0] and "checksum" in warnings[0]
    with pytest.raises(ckpt.CorruptCheckpoint, match="step_00000030"):
        ckpt.load_verified(newest)


def test_the_crafted_file_really_runs_code_when_fully_unpickled(tmp_path):
    # The control: without weights_only the payload runs, so the refusals below mean something.
    plant_crafted(tmp_path / "evil.pth", tmp_path / "ran")
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_crafted_step_checkpoint_is_refused_not_skipped(tmp_path):
    ckpt.save_step(tmp_path, 2, {"step": 2})
    evil = tmp_path / "step_00000004.pth"  # the newest: the one a resume would pick
    plant_crafted(evil, tmp_path / "ran")
    with pytest.raises(ckpt.UnsafeCheckpoint) as caught:
        ckpt.load_latest(tmp_path, warn=pytest.fail)  # not reported-and-skipped like a damaged file
    message = str(caught.value)
    assert message.startswith(f"{evil}: refused") and "(exec)" in message.replace("builtins.", "") and "\n" not in message
    assert not (tmp_path / "ran").exists()


def test_damaged_file_is_still_corrupt_not_unsafe(tmp_path):
    plant_crafted(tmp_path / "evil.pth", tmp_path / "ran")
    (tmp_path / "evil.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:-10])  # checksum now wrong
    with pytest.raises(ckpt.CorruptCheckpoint, match="checksum mismatch"):
        ckpt.load_verified(tmp_path / "evil.pth")


def _draws():
    return torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)]


def test_rng_states_round_trip_through_weights_only_loading(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal(1)  # numpy now holds a cached second gaussian: part of its state
    state = ckpt.rng_state()
    expected = _draws()  # how the streams continue from the captured state
    ckpt.save_verified({"rng": [state]}, tmp_path / "rng.pth")
    loaded = ckpt.load_verified(tmp_path / "rng.pth")["rng"][0]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt.set_rng_state(loaded)
    got = _draws()
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_full_trainer_state_saves_and_loads_weights_only(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    scaler.scale(model(torch.randn(2, 3, 8, 8)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    generator = torch.Generator().manual_seed(5)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "generator": [generator.get_state()], "rng": [ckpt.rng_state()], "step": 4, "best_miou": None,
             "evals": [{"step": 2, "miou": 12.5}], "skipped_steps": 0, "train_time_s": 3.5}
    ckpt.save_step(tmp_path, 4, state)
    loaded = ckpt.load_latest(tmp_path)
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert loaded["scaler"] == scaler.state_dict() and loaded["evals"] == state["evals"]


def test_saving_what_weights_only_cannot_load_fails_at_save_time(tmp_path):
    # np.float64 is a float subclass, yet pickles as a numpy global that weights-only refuses:
    # a run would save it happily and then fail to resume hours later.
    with pytest.raises(TypeError, match=r"step_00000002.pth: .*\['best_miou'\] is a numpy.float64"):
        ckpt.save_step(tmp_path, 2, {"step": 2, "best_miou": np.float64(40.0)})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- read_state_dict
@pytest.fixture
def state() -> dict:
    return {"conv.weight": torch.arange(6.0).reshape(2, 3), "conv.bias": torch.tensor([1.0, -1.0])}


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_plain_state_dict_is_read_in_every_mode_that_takes_plain_files(tmp_path, state):
    torch.save(state, tmp_path / "plain.pth")
    for mode in ("if_present", "ignored"):
        assert same(read_state_dict(tmp_path / "plain.pth", checksum=mode), state), mode


def test_a_run_file_is_verified_and_its_model_entry_returned(tmp_path, state):
    path = checksummed_file(tmp_path / "weights.pth", {"model": state})
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
    path = checksummed_file(tmp_path / "weights.pth", {"weights": state})
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
    torch.save({**state, "payload": RunsCode(tmp_path / "ran")}, path)
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
