"""The loader state protocol (issue 19, item 4): a user's own loop (not geo-pretrain) saves
`loader.state_dict()` mid-epoch, a new loader of the same config `load_state_dict()`s it and yields the
same remaining batches (pixels and keys) as an uninterrupted run, then the same next epoch.
The last test runs the README's example as a real script with 2 loader workers, kills its process group
with SIGKILL mid-epoch and runs it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.loader import LoaderConfig, StreamingLoader, pretrain_loader
from tests.shard_fixtures import make_tiny_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """24 locations in 3 uneven shards: batch 4 gives 6 steps, worker blocks start inside shards."""
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=24, n_shards=3, uneven=True, image_size=40)
    return str(folder)


def _cfg(urls: str, **kw) -> LoaderConfig:
    values = dict(
        urls=urls, split="train", batch_size=4, image_size=32, num_workers=0, shuffle_buffer=4, seed=3
    )
    values.update(kw)
    return LoaderConfig(**values)


def _kept(batch: dict) -> dict:
    return {"q": batch["q"].clone(), "k": batch["k"].clone(), "key": list(batch["key"])}


def _user_loop(loader: StreamingLoader, stop_after: int) -> tuple[dict, list[dict]]:
    """A user's own loop: epochs by the loader's own advance, a JSON checkpoint of the loader after every
    batch; it stops (a kill) after `stop_after` batches. Returns the last checkpoint and the batches."""
    checkpoint, seen = "", []
    while True:
        for batch in loader:
            seen.append(_kept(batch))
            checkpoint = json.dumps(loader.state_dict())
            if len(seen) == stop_after:
                return json.loads(checkpoint), seen


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["key"] == w["key"]
        assert torch.equal(g["q"], w["q"]) and torch.equal(g["k"], w["k"])


@pytest.mark.parametrize("num_workers, stop_after", [(0, 8), (2, 9)])
def test_a_user_loop_stopped_mid_epoch_resumes_with_the_same_remaining_batches(
    shards, num_workers, stop_after
):
    cfg = _cfg(shards, num_workers=num_workers)
    reference = pretrain_loader(cfg)
    steps = len(reference)
    assert steps == 6
    epochs = [[_kept(b) for b in reference] for _ in range(3)]  # epochs 0, 1, 2, uninterrupted
    assert epochs[1][0]["key"] != epochs[2][0]["key"]  # epochs differ: a wrong epoch could not pass

    state, seen = _user_loop(pretrain_loader(cfg), stop_after)
    epoch, step = divmod(stop_after, steps)
    assert (state["epoch"], state["step"]) == (epoch, step)
    _assert_same(seen, epochs[0] + epochs[1][:step])

    resumed = pretrain_loader(cfg)  # a new process would build the same loader from the same config
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    _assert_same([_kept(b) for b in resumed], epochs[epoch][step:])
    assert resumed.state_dict()["epoch"] == epoch + 1 and resumed.state_dict()["step"] == 0
    _assert_same([_kept(b) for b in resumed], epochs[epoch + 1])  # the next epoch, by the loader's advance


def test_state_while_iterating_counts_the_batches_handed_out(shards):
    loader = pretrain_loader(_cfg(shards, decode="defer"))
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (0, 0)
    loader.set_epoch(4, start_step=2)
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (4, 2)
    it = iter(loader)
    next(it)
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (4, 3)
    for _ in it:
        pass
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (5, 0)  # exhausted: next epoch


def test_the_state_is_plain_json(shards):
    loader = pretrain_loader(_cfg(shards))
    loader.set_epoch(2, start_step=5)
    state = loader.state_dict()
    assert json.loads(json.dumps(state)) == state

    def leaves(value):
        return [x for v in value.values() for x in leaves(v)] if isinstance(value, dict) else [value]

    assert all(type(v) in (int, str) for v in leaves(state))
    assert {"format", "epoch", "step", "seed", "rank", "world_size", "plan"} <= state.keys()


def test_a_state_of_another_seed_is_refused_with_one_line(shards):
    state = pretrain_loader(_cfg(shards)).state_dict()
    other = pretrain_loader(_cfg(shards, seed=4))
    with pytest.raises(GeoSSLError) as err:
        other.load_state_dict(state)
    message = str(err.value)
    assert "\n" not in message and message.startswith("loader state: seed ")
    assert other.state_dict()["epoch"] == 0  # nothing taken over


@pytest.mark.parametrize("change", [dict(batch_size=3), dict(num_workers=2), dict(shuffle_buffer=8)])
def test_a_state_of_another_cut_resumes_elastically(shards, change):
    """Another batch size, worker count or shuffle buffer cuts the epoch otherwise: the state is taken as
    an elastic resume (test_elastic_resume.py), not replayed into other batches."""
    loader = pretrain_loader(_cfg(shards))
    it = iter(loader)
    taken = list(next(it)["key"])
    state = loader.state_dict()
    it.close()
    other = pretrain_loader(_cfg(shards, **change))
    assert other.other_cut(state)
    other.load_state_dict(state)
    rest = [k for b in other for k in b["key"]]
    assert not set(rest) & set(taken) and len(set(rest)) == len(rest)


def test_a_state_of_other_data_or_ranks_is_refused(shards, tmp_path):
    state = pretrain_loader(_cfg(shards)).state_dict()
    same_size = tmp_path / "same_size"  # as many locations and shards, other names: only the digest differs
    make_tiny_shards(same_size, n_locations=24, n_shards=3, uneven=True, image_size=40, split="val")
    rank0_of_2 = pretrain_loader(_cfg(shards, batch_size=2), rank=0, world_size=2).state_dict()
    for loader, named, saved in [
        (pretrain_loader(_cfg(str(same_size), split="val")), "data", state),
        # another world size is an elastic resume (test_elastic_resume.py); another rank of it is not
        (pretrain_loader(_cfg(shards, batch_size=2), rank=1, world_size=2), "rank", rank0_of_2),
    ]:
        with pytest.raises(GeoSSLError, match=f"^loader state: {named} "):
            loader.load_state_dict(saved)
    for bad in ({}, {**state, "format": 99}, {**state, "step": "2"}, {**state, "step": 7}):
        with pytest.raises(GeoSSLError, match=r"^(loader state|start_step)"):
            pretrain_loader(_cfg(shards)).load_state_dict(bad)


# The README's example ("Exact epochs and mid-epoch resume"), with a train_step that prints the keys
USER_SCRIPT = """
import json, os, sys, time
from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

def train_step(batch):
    print(json.dumps(batch["key"]), flush=True)
    time.sleep(0.15)

shards, state_file, epochs = sys.argv[1], sys.argv[2], 2

loader = pretrain_loader(LoaderConfig(urls=shards, split="train", batch_size=4, image_size=32,
                                      num_workers=2, shuffle_buffer=4, seed=3))
if os.path.exists(state_file):
    with open(state_file) as f:
        loader.load_state_dict(json.load(f))  # next: the batches of the saved epoch not yet trained on
while loader.state_dict()["epoch"] < epochs:
    for batch in loader:  # each new iteration moves on to the next epoch by itself
        train_step(batch)
        with open(state_file + ".tmp", "w") as f:  # save it with the model's checkpoint
            json.dump(loader.state_dict(), f)
        os.replace(state_file + ".tmp", state_file)
"""


def test_the_readme_example_killed_mid_epoch_continues_with_the_remaining_batches(shards, tmp_path):
    script, state_file = tmp_path / "user_loop.py", tmp_path / "loader_state.json"
    script.write_text(USER_SCRIPT)
    cmd = [sys.executable, str(script), shards, str(state_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, start_new_session=True)
    try:
        printed = [json.loads(proc.stdout.readline()) for _ in range(8)]  # epoch 1 has begun
        os.killpg(proc.pid, signal.SIGKILL)  # the user loop and its loader workers, no clean-up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads(state_file.read_text())
    done = state["epoch"] * 6 + state["step"]
    # killed mid-epoch 1, around the 8th batch; batches after the last saved state are trained on again
    assert state["epoch"] == 1 and 7 <= done < 12

    rerun = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=120, check=True)
    reference = pretrain_loader(_cfg(shards, num_workers=2))
    want = [b["key"] for _ in range(2) for b in reference]  # epochs 0 and 1, uninterrupted
    assert printed == want[:8]
    assert [json.loads(line) for line in rerun.stdout.splitlines()] == want[done:]
    assert json.loads(state_file.read_text())["epoch"] == 2
    deadline = time.monotonic() + 15
    while True:  # the killed run's loader workers are gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "loader workers outlived the killed loop"
        time.sleep(0.1)
