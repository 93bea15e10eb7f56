"""The shared training engine: schedules, optimizer groups, Polyak averaging, the loop, exact resume, DDP."""
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from gdet.backbones import BackboneOutput
from gdet.engine import (DistInfo, LrSchedule, build_ema, build_loader, build_optimizer, build_scheduler,
                         compute_loss, load_checkpoint, load_model_weights, resume_training_state,
                         save_training_state, set_epoch, topk_correct, train_one_epoch)
from gdet.errors import CheckpointError, ConfigError


class TinyNet(nn.Module):
    """Conv + norm + dropout + an aux head: exercises every path of the loop."""

    def __init__(self, n_cls=3, norm=True, aux=True, dropout=0.2):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8, n_cls)
        self.aux = nn.Linear(8, n_cls) if aux else None

    def forward(self, x):
        f = F.adaptive_avg_pool2d(torch.relu(self.norm(self.conv(x))), 1).flatten(1)
        logits = self.fc(self.drop(f))
        if self.training and self.aux is not None:
            return BackboneOutput(logits, (self.aux(f),))
        return logits


def _data(n=24, n_cls=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_cls
    x = torch.rand(n, 3, size, size, generator=g) * 0.5
    x[torch.arange(n), y] += 0.5  # class = brightest channel
    return TensorDataset(x, y)


def test_paper_step_schedule_and_warmup():
    s = LrSchedule("step", steps_per_epoch=10, step_epochs=8, gamma=0.96)
    for it in (0, 79, 80, 159, 160, 1000):
        assert s(it) == pytest.approx(0.96 ** ((it // 10) // 8))
    w = LrSchedule("constant", steps_per_epoch=4, warmup_epochs=1, warmup_factor=0.1)
    assert [w(i) for i in range(5)] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    c = LrSchedule("cosine", steps_per_epoch=5, epochs=2, min_factor=0.1)
    assert c(0) == pytest.approx(1.0) and c(10) == pytest.approx(0.1) and c(5) == pytest.approx(0.55)
    m = LrSchedule("multistep", steps_per_epoch=1, milestones=[2, 4], gamma=0.1)
    assert [m(i) for i in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ConfigError, match="unknown"):
        LrSchedule("poly", steps_per_epoch=1)


def test_build_scheduler_steps_lr_per_iteration():
    model = TinyNet()
    opt = build_optimizer({"lr": 0.1}, model)
    sch = build_scheduler({"lr": 0.1, "lr_schedule": "step", "lr_step_epochs": 1, "lr_gamma": 0.5}, opt, 2)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    # The state (a picklable schedule) round-trips.
    sch2 = build_scheduler({"lr": 0.1, "lr_schedule": "step", "lr_step_epochs": 1, "lr_gamma": 0.5}, opt, 2)
    sch2.load_state_dict(sch.state_dict())
    assert sch2.last_epoch == 5


def test_optimizer_no_decay_on_bias_and_norm():
    model = TinyNet()
    opt = build_optimizer({"lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9}, model)
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 1e-4 and free["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model.conv.weight), id(model.fc.weight), id(model.aux.weight)}
    assert len(free["params"]) == 5  # conv/fc/aux biases + BN weight and bias
    assert opt.param_groups[0]["momentum"] == 0.9
    all_in = build_optimizer({"no_decay_norm_bias": False}, model)
    assert len(all_in.param_groups) == 1
    with pytest.raises(ConfigError):
        build_optimizer({"optimizer": "lbfgs"}, model)


def test_ema_matches_reference_recurrence():
    model = nn.Linear(2, 1)
    ema = build_ema(model, decay=0.9, warmup=True)
    ref = model.weight.detach().clone()
    for n in range(6):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update_parameters(model)
        if n == 0:
            ref = model.weight.detach().clone()  # the first update copies
        else:
            d = min(0.9, (1 + (n - 1)) / (10 + (n - 1)))
            ref = d * ref + (1 - d) * model.weight.detach()
    assert torch.allclose(ema.module.weight, ref, atol=1e-6)


def test_compute_loss_weights_aux_heads():
    logits, a1, a2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    loss, main = compute_loss(BackboneOutput(logits, (a1, a2)), y, F.cross_entropy, 0.3)
    ref = F.cross_entropy(logits, y) + 0.3 * (F.cross_entropy(a1, y) + F.cross_entropy(a2, y))
    assert torch.allclose(loss, ref) and main is logits
    c1, c5 = topk_correct(torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]]), torch.tensor([1, 2]), (1, 2))
    assert int(c1) == 1 and int(c5) == 1


def _train(tmp_path, epochs, resume=None, save_as=None):
    torch.manual_seed(1)
    model = TinyNet()
    cfg = {"lr": 0.1, "weight_decay": 1e-4, "lr_schedule": "step", "lr_step_epochs": 1, "lr_gamma": 0.5}
    loader = build_loader(_data(), batch_size=4, train=True, seed=3)
    opt = build_optimizer(cfg, model)
    sch = build_scheduler(cfg, opt, len(loader))
    ema = build_ema(model, decay=0.9)
    start = 0
    if resume is not None:
        start = resume_training_state(resume, model=model, optimizer=opt, scheduler=sch, ema=ema)["epoch"]
    for epoch in range(start, epochs):
        set_epoch(loader, epoch)
        m = train_one_epoch(model, loader, opt, sch, torch.device("cpu"), ema=ema, epoch=epoch)
        if save_as:
            save_training_state(save_as, model=model, optimizer=opt, scheduler=sch, ema=ema, epoch=epoch + 1,
                                config=cfg, task="test")
    return model, ema, m


def test_resume_continues_exactly(tmp_path):
    straight, ema_s, m_s = _train(tmp_path, 2)
    _train(tmp_path, 1, save_as=tmp_path / "e1.pth")
    ck = load_checkpoint(tmp_path / "e1.pth")
    assert ck["epoch"] == 1 and ck["task"] == "test" and ck["ema"] is not None and ck["rng"] is not None
    resumed, ema_r, m_r = _train(tmp_path, 2, resume=tmp_path / "e1.pth")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(ema_s.module.state_dict().values(), ema_r.module.state_dict().values()):
        assert torch.equal(a, b)
    assert m_s["loss"] == m_r["loss"]
    # EMA weights load through the shared loader too.
    fresh = TinyNet()
    load_model_weights(fresh, tmp_path / "e1.pth", use_ema=True)
    # A weights-only file cannot be resumed from.
    torch.save(TinyNet().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        resume_training_state(tmp_path / "plain.pth", model=TinyNet(), optimizer=build_optimizer({}, fresh))


def test_train_one_epoch_learns():
    torch.manual_seed(0)
    model = TinyNet(norm=False, dropout=0.0)
    loader = build_loader(_data(96), batch_size=8, train=True)
    opt = build_optimizer({"lr": 0.5, "weight_decay": 0.0}, model)
    first = train_one_epoch(model, loader, opt, None, torch.device("cpu"))
    for e in range(1, 6):
        set_epoch(loader, e)
        last = train_one_epoch(model, loader, opt, None, torch.device("cpu"))
    assert last["loss"] < first["loss"] and last["acc1"] > 0.9
    assert set(last) >= {"loss", "acc1", "acc5", "lr", "images_per_s", "steps"}


# ---- DDP: 2 gloo processes vs one process with the same total batch ----

def _ddp_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from gdet.engine import init_distributed, wrap_ddp, cleanup

    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = TinyNet(norm=False, aux=True, dropout=0.0)  # BN-free, no dropout: the split is exactly checkable
    loader = build_loader(_data(32), batch_size=4, train=True, info=info, shuffle=False)
    ddp = wrap_ddp(model, info, torch.device("cpu"))
    cfg = {"lr": 0.2, "weight_decay": 1e-3}
    opt = build_optimizer(cfg, ddp)
    m = train_one_epoch(ddp, loader, opt, build_scheduler(cfg, opt, len(loader)), torch.device("cpu"))
    save_training_state(os.path.join(out_dir, "ddp.pth"), model=ddp, optimizer=opt, epoch=1)
    torch.save({"state": model.state_dict(), "loss": m["loss"], "acc1": m["acc1"]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_ranks_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["loss"] == r1["loss"]  # reduced across ranks
    # One process, batch 8 = 2 ranks x 4 (the unshuffled DistributedSampler interleaves, so each global batch
    # holds the same 8 samples).
    torch.manual_seed(0)
    model = TinyNet(norm=False, aux=True, dropout=0.0)
    loader = build_loader(_data(32), batch_size=8, train=True, shuffle=False)
    cfg = {"lr": 0.2, "weight_decay": 1e-3}
    opt = build_optimizer(cfg, model)
    m = train_one_epoch(model, loader, opt, build_scheduler(cfg, opt, len(loader)), torch.device("cpu"))
    assert math.isclose(m["loss"], r0["loss"], rel_tol=1e-5, abs_tol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, r0["state"][k], atol=1e-5), k
    ck = load_checkpoint(tmp_path / "ddp.pth")  # written once, by rank 0, without "module." prefixes
    assert len(ck["rng_all_ranks"]) == 2 and all(not k.startswith("module.") for k in ck["model"])


def test_shard_sampler_covers_every_index_once():
    from gdet.engine import ShardSampler

    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert len(ShardSampler(10, 1, 3)) == 3


def test_train_one_epoch_bf16_autocast_and_max_steps():
    model = TinyNet()
    loader = build_loader(_data(32), batch_size=4, train=True)
    opt = build_optimizer({"lr": 0.05}, model)
    m = train_one_epoch(model, loader, opt, None, torch.device("cpu"), precision="bf16", max_steps=3,
                        grad_clip=1.0)
    assert m["steps"] == 3 and math.isfinite(m["loss"])


def test_epoch_recorder_keeps_last_best_rows_and_curves(tmp_path, capsys):
    import json

    from gdet.engine import EpochRecorder, load_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = EpochRecorder(tmp_path, title="t", best_key="best_acc1", meta={"task": "classify"}, hidden=("big",))
    best_epochs = []
    for epoch, score in enumerate([0.5, 0.4, 0.7], 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        improved = rec.record({"epoch": epoch, "acc": score, "big": {"a": 1}}, epoch=epoch, config={}, model=model,
                              optimizer=opt, score=score)
        assert improved == (epoch != 2)
        best_epochs.append(load_checkpoint(tmp_path / "best.pth")["epoch"])
    assert best_epochs == [1, 1, 3] and rec.best == 0.7
    last = load_checkpoint(tmp_path / "last.pth")
    assert last["epoch"] == 3 and last["best_acc1"] == 0.7 and last["task"] == "classify"
    assert float(last["model"]["weight"][0, 0]) == 3.0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0]["big"] == {"a": 1}
    assert (tmp_path / "curves.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "acc=0.4" in out and "big" not in out
    # Resuming appends; without a score no best.pth is touched.
    rec2 = EpochRecorder(tmp_path, title="t", resume=True, best=0.7)
    assert not rec2.record({"epoch": 4}, epoch=4, config={}, model=model, optimizer=opt)
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
