"""Issue 28, items 5 and 12: `mon.step(loss, batch=...)` takes any identifiers and never raises
on them; the ledger copies a bounded head of them at the step (the first ids, the count, the
shape and dtype), holds no reference to what the loop passed, and puts a bounded line on the
record."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

import gradtui
from gradtui.model.events import BadBatch
from gradtui.wire.record import read_record

MAX_IDS, MAX_TEXT = 64, 1000
"""The ledger's bounds: ids kept per step, characters on the record (`gradtui.model.guard`)."""


class Refuses:
    """An id object whose `tolist` raises (a lazy dataset handle, a closed file's view)."""

    def tolist(self) -> list[int]:
        raise RuntimeError("the shard is closed")


def make() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def bad_batches(ids: Any, steps: int = 3, bad_at: int = 2, **watch: Any) -> list[BadBatch]:
    """A guarded loop whose step `bad_at` has a non-finite loss (skipped: its ids are noted)."""
    model, opt = make()
    mon = gradtui.watch(model, opt, queue=1000, serve=False, guard=True, **watch)
    for it in range(steps):
        x, y = batch(it)
        loss = nn.functional.cross_entropy(model(x), y) * (math.nan if it == bad_at else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mon.step(loss, batch=ids(it) if callable(ids) else ids)
        opt.step()
    mon.close()
    return [e for e in mon.events.drain() if isinstance(e, BadBatch)]


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        (torch.tensor([1, 2, 3]).to_sparse(), "[3 int64] (sparse_coo tensor: its ids are not read)"),
        (torch.arange(3, device="meta"), "[3 int64] (meta tensor: its ids are not read)"),
        (Refuses(), "<Refuses: unreadable: RuntimeError: the shard is closed>"),
        (object(), "<object object at 0x"),
        ({"input_ids": [3, 4], "path": "a.jsonl"}, "{'input_ids': [3, 4], 'path': 'a.jsonl'}"),
    ],
    ids=["sparse", "meta", "tolist-raises", "object", "dict"],
)
def test_any_batch_identifiers_are_taken_and_said_within_the_bound(ids: Any, says: str) -> None:
    bad = bad_batches(ids)
    assert [(b.step, b.why) for b in bad] == [(2, "skip")]
    assert bad[0].batch.startswith(says), bad[0].batch


def test_the_ledger_holds_no_reference_to_the_batch_tensor() -> None:
    model, opt = make()
    mon = gradtui.watch(model, opt, queue=1000, serve=False, guard=True)
    kept: list[StorageWeakRef] = []
    for it in range(6):
        ids = torch.arange(it * 100_000, (it + 1) * 100_000)
        kept.append(StorageWeakRef(ids.untyped_storage()))  # its memory, whatever tensor views it
        x, y = batch(it)
        loss = nn.functional.cross_entropy(model(x), y) * (math.nan if it == 2 else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mon.step(loss, batch=ids)
        opt.step()
    del ids
    gc.collect()
    alive = [not r.expired() for r in kept]  # while the monitor runs on
    mon.close()
    assert alive == [False] * 6, "a batch's memory outlived its step"
    bad = [e for e in mon.events.drain() if isinstance(e, BadBatch)]
    assert bad[0].batch == ",".join(str(i) for i in range(200_000, 200_000 + MAX_IDS)) + f",…(+{100_000 - MAX_IDS})"


def test_a_reused_index_buffer_names_the_ids_of_its_own_step() -> None:
    # A loss spike is judged on the publishing thread, a step or more after its step; a loop that
    # fills one pinned index buffer for each batch has overwritten it by then.
    model, opt = make()
    mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1)
    buffer = torch.empty(16, dtype=torch.int64)
    for it in range(40):
        buffer.copy_(torch.arange(it * 16, it * 16 + 16))
        x, y = batch(it)
        loss = nn.functional.cross_entropy(model(x), y) * (10.0 if it == 30 else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mon.step(loss, batch=buffer)
        buffer.fill_(-1)  # the next batch's prefetch starts into the same buffer
        opt.step()
    mon.close()
    bad = [e for e in mon.events.drain() if isinstance(e, BadBatch)]
    assert [(b.step, b.why, b.batch) for b in bad] == [(30, "loss_spike", ",".join(str(i) for i in range(480, 496)))]


def test_a_large_2d_id_tensor_goes_on_the_record_bounded(tmp_path: Path) -> None:
    ids = torch.arange(1024 * 1024, dtype=torch.int64).reshape(1024, 1024)  # token ids of a batch
    bad = bad_batches(ids, record=tmp_path / "run.gtr")
    expected = ",".join(str(i) for i in range(MAX_IDS)) + f",…(+{1024 * 1024 - MAX_IDS}) [1024x1024 int64]"
    assert [b.batch for b in bad] == [expected]
    on_record = [e for e in read_record(tmp_path / "run.gtr").events if isinstance(e, BadBatch)]
    assert [b.batch for b in on_record] == [expected]


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(4 * 4096).reshape(4, 4096),
        list(range(10**6)),
        "x" * 10**6,
        [["token"] * 1000] * 1000,
        torch.arange(6.0).reshape(2, 3).t(),  # not contiguous, not integers
    ],
    ids=["ndarray-2d", "long-list", "long-str", "nested-list", "float-transposed"],
)
def test_every_kind_of_id_is_bounded_and_keeps_its_first_ids_in_order(ids: Any) -> None:
    bad = bad_batches(ids)
    text = bad[0].batch
    assert len(text) <= MAX_TEXT, len(text)
    if isinstance(ids, np.ndarray):
        assert text.startswith("0,1,2,3,") and text.endswith(f",…(+{ids.size - MAX_IDS}) [4x4096 int64]")
    elif isinstance(ids, torch.Tensor):
        assert text == "0,3,1,4,2,5 [3x2 float32]"  # C order of the transposed view, as tolist() reads it


@pytest.mark.parametrize(
    ("ids", "back"),
    [
        (17, 17),
        (np.int64(2**40), 2**40),
        (-(2**63), -(2**63)),
        ("shard-3.jsonl:17", "shard-3.jsonl:17"),
        ("17", "17"),
        (2**70, str(2**70)),  # past what the record carries as an integer: as text
        ([3, 17, 42], "3,17,42"),
        (torch.tensor([3, 17]), "3,17"),
        (True, "1"),
    ],
    ids=["int", "numpy-int", "int64-min", "str", "digits-str", "huge-int", "list", "tensor", "bool"],
)
def test_batch_ids_come_back_as_they_went_in(
    ids: Any, back: int | str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An int comes back an int and a str a str, through the record, `gradtui.load` and `report --json`;
    other types as text."""
    from gradtui.cli import main

    path = tmp_path / "run.gtr"
    live = bad_batches(ids, record=path)
    assert [b.batch for b in live] == [back]
    loaded = gradtui.load(path).bad_batches
    assert loaded == [{"step": 2, "why": "skip", "batch": back}]
    assert type(loaded[0]["batch"]) is type(back)
    capsys.readouterr()
    assert main(["report", str(path), "--json", "--recorded"]) == 0
    reported = json.loads(capsys.readouterr().out)["bad_batches"]
    assert reported == loaded and type(reported[0]["batch"]) is type(back)
    assert main(["report", str(path)]) == 0  # the table too
    assert f"{back}" in capsys.readouterr().out
