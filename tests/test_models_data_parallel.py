"""The engine under torch.distributed (gloo, 2 CPU processes): the same global batch, the same per-epoch loss as one
process (within float tolerance), rank-0-only checkpoints that a data-parallel run resumes from exactly; a batch the ranks cannot share refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from models.engine import TrainConfig, distributed, fit
from models.errors import ConfigError
from tests.models_helpers import RandomFaces, flat_params, micro_family

pytestmark = pytest.mark.slow  # worker processes

CFG = TrainConfig(epochs=2, batch_size=16, grad_accum=2, lr=1e-3, seed=0, val_samples=0, ema_decay=0.99,
                  progress=False, verbose=False)


def _fit(out: Path, tag: str, epochs: int, checkpoint_dir: Path | None, resume) -> None:
    import dataclasses

    family = micro_family()
    result = fit(family, dataclasses.replace(CFG, epochs=epochs), RandomFaces(128), checkpoint_dir=checkpoint_dir,
                 resume=resume)
    rank, world = distributed()
    (out / f"{tag}-{rank}.json").write_text(json.dumps({
        "losses": [h["train_loss"] for h in result.history], "epochs": [h["epoch"] for h in result.history],
        "step": result.step, "world": world}))
    torch.save(flat_params(family.module), out / f"{tag}-{rank}.pt")


def _odd_batch(out: Path, rank: int) -> None:
    import dataclasses

    try:
        fit(micro_family(), dataclasses.replace(CFG, batch_size=15), RandomFaces(64))
    except ConfigError as err:
        (out / f"error-{rank}.txt").write_text(str(err))


def _worker(rank: int, world: int, out: str) -> None:
    out = Path(out)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank,
                                         world_size=world)
    try:
        _fit(out, "whole", 2, None, False)
        _fit(out, "first", 1, out / f"ckpt-{rank}", False)  # each rank its own dir: only rank 0 writes
        _fit(out, "resumed", 2, None, out / "ckpt-0")  # every rank resumes from rank 0's checkpoint
        _odd_batch(out, rank)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_workers_train_like_one_process_and_resume_and_refuse_a_batch_that_does_not_divide(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = tmp_path / "single"
    single.mkdir()
    _fit(single, "whole", 2, None, False)
    one = json.loads((single / "whole-0.json").read_text())
    ddp = [json.loads((tmp_path / f"whole-{r}.json").read_text()) for r in (0, 1)]
    assert ddp[0]["world"] == 2 and ddp[0]["step"] == one["step"] == 2 * 128 // (16 * 2)  # same global batch
    for r in ddp:  # the reported loss is the global mean, the same on every rank, as in one process
        assert r["losses"] == pytest.approx(one["losses"], rel=1e-4, abs=1e-6)
    weights = torch.load(tmp_path / "whole-0.pt")
    assert torch.equal(weights, torch.load(tmp_path / "whole-1.pt"))  # every rank took the same steps
    single_weights = torch.load(single / "whole-0.pt")  # the same up to float summation order (Adam amplifies it)
    assert torch.allclose(weights, single_weights, atol=1e-4), (weights - single_weights).abs().max()
    assert any((tmp_path / "ckpt-0").iterdir()) and not (tmp_path / "ckpt-1").exists()  # rank 0 writes, only
    resumed = json.loads((tmp_path / "resumed-0.json").read_text())
    assert resumed["epochs"] == [1.0]  # continued with the second epoch
    assert resumed["losses"][0] == pytest.approx(ddp[0]["losses"][1], rel=1e-6)
    assert torch.allclose(torch.load(tmp_path / "resumed-0.pt"), weights, atol=1e-6)
    assert "does not divide among 2" in (tmp_path / "error-0.txt").read_text()  # a global batch of 15

