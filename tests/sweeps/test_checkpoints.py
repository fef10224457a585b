"""A trial's checkpoints: written in order, the last two kept, and an unreadable newest one skipped."""

import pytest

from l2d.storage import Location
from sweeps.folder.checkpoints import checkpoint_folders, restore_newest, write_checkpoint


def _state(epoch):
    import torch

    return {"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}}


def test_the_last_two_are_kept(tmp_path):
    run = Location.parse(tmp_path / "trial-x")
    for epoch in (1, 2, 3):
        write_checkpoint(run, epoch, _state(epoch), [{"epoch": e} for e in range(1, epoch + 1)])
    assert [f.name for f in checkpoint_folders(run)] == ["epoch-0003", "epoch-0002"]
    state, history = restore_newest(run)
    assert state["epoch"] == 3 and [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage-history"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage, caplog):
    run = Location.parse(tmp_path / "trial-x")
    for epoch in (1, 2):
        write_checkpoint(run, epoch, _state(epoch), [{"epoch": e} for e in range(1, epoch + 1)])
    newest = tmp_path / "trial-x" / "epoch-0002"
    if damage == "truncate":
        data = (newest / "state.pt").read_bytes()
        (newest / "state.pt").write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        (newest / "state.pt").write_bytes(b"")
    else:
        (newest / "history.json").write_text("[{")
    with caplog.at_level("WARNING"):
        state, history = restore_newest(run)
    assert state["epoch"] == 1 and history == [{"epoch": 1}]
    assert "epoch-0002: unreadable checkpoint" in caplog.text and "falling back" in caplog.text
    names = sorted(p.name for p in (tmp_path / "trial-x").iterdir())
    assert names[0] == "corrupt-epoch-0002-" + names[0].split("corrupt-epoch-0002-")[1] and "epoch-0001" in names
    assert [f.name for f in checkpoint_folders(run)] == ["epoch-0001"]  # the damaged one is never tried again


def test_a_multi_seed_state_needs_every_student(tmp_path):
    """A checkpoint of a multi-seed trial holds one engine state per student under ``replicas``: a list with a state
    that is not one is unreadable, as a damaged single state is."""
    from sweeps.folder.checkpoints import UnreadableCheckpointError, load_checkpoint, write_checkpoint

    run_dir = Location.parse(str(tmp_path / "trial"))
    good = write_checkpoint(run_dir, 1, {"replicas": [{"model": {}}, {"model": {}}]}, [{"epoch": 1}])
    assert load_checkpoint(good)[0]["replicas"][1] == {"model": {}}
    for bad in ({"replicas": [{"model": {}}, {"optimizer": {}}]}, {"replicas": []}, {"replicas": "x"}):
        folder = write_checkpoint(run_dir, 2, bad, [{"epoch": 2}])
        with pytest.raises(UnreadableCheckpointError, match="not an engine state"):
            load_checkpoint(folder)
