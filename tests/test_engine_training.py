"""The one training engine: schedules, optimizer groups, Polyak averaging, fit() on a tiny task (learning, exact
resume, DDP, best/last checkpoints, crash safety, divergence), counted start weights."""
import json
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from gdet.backbones import BackboneOutput
from gdet.engine import (LrSchedule, build_ema, build_loader, build_optimizer, build_scheduler, compute_loss,
                         load_checkpoint, load_model_weights, load_start_weights, resume_training_state,
                         save_checkpoint, set_epoch, topk_correct)
from gdet.engine.trainer import ENGINE_DEFAULTS, Task, fit
from gdet.errors import CheckpointError, ConfigError, GdetError


class TinyNet(nn.Module):
    """Conv + norm + dropout + an aux head: exercises every path of the loop."""

    def __init__(self, n_cls=3, norm=True, aux=True, dropout=0.2):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8, n_cls)
        self.aux = nn.Linear(8, n_cls) if aux else None
        self.num_classes = n_cls

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


class TinyTask(Task):
    """Classification of :func:`_data` with :class:`TinyNet`: the smallest task the engine can run.

    ``poison``: ``(epoch, what)`` makes epoch ``epoch`` (1-based) produce a NaN loss (``"loss"``) or leave an
    infinite weight behind a finite loss (``"weights"``) on its last step."""

    name = "tiny"
    score_name = "val_acc1"

    def __init__(self, cfg, n=24, val=True, poison=None, net_kw=None):
        super().__init__(cfg)
        self.n, self.val, self.poison, self.net_kw = n, val, poison, net_kw or {}

    def setup(self, run):
        bs = int(self.cfg["batch_size"])
        self.loader = build_loader(_data(self.n), batch_size=bs, train=True, info=run.info, seed=3,
                                   shuffle=self.cfg.get("shuffle", True))
        self.val_loader = build_loader(_data(12, seed=5), batch_size=bs, train=False, info=run.info)
        self.epoch = 0
        return TinyNet(**self.net_kw)

    def steps_per_epoch(self):
        return len(self.loader)

    def train_batches(self, epoch):
        self.epoch = epoch + 1
        set_epoch(self.loader, epoch)
        return self.loader

    def loss(self, net, batch, run):
        x, y = batch
        loss, logits = compute_loss(net(x.to(run.device)), y.to(run.device), F.cross_entropy)
        if self.poison == (self.epoch, "loss"):
            loss = loss * float("nan")
        if self.poison == (self.epoch, "weights"):
            with torch.no_grad():
                run.model.fc.bias.fill_(float("inf"))
        (c1,) = topk_correct(logits.detach(), y, (1,))
        return {"loss_cls": loss, "acc1": c1.double() / len(y)}

    @property
    def can_evaluate(self):
        return self.val

    def evaluate(self, run):
        model = run.eval_model()
        model.eval()
        hit = n = 0
        with torch.no_grad():
            for x, y in self.val_loader:
                hit += int((model(x).argmax(1) == y).sum())
                n += len(y)
        model.train()
        return {"val_acc1": hit / n}, hit / n


def _cfg(work, **kw):
    cfg = {**ENGINE_DEFAULTS, "lr": 0.1, "weight_decay": 1e-4, "lr_schedule": "step", "lr_step_epochs": 1,
           "lr_gamma": 0.5, "batch_size": 4, "epochs": 3, "device": "cpu", "work_dir": str(work), "ema_decay": 0.9,
           "log_every": 2}
    cfg.update(kw)
    return cfg


def _rows(work):
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a, b):
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)


def test_fit_learns_and_writes_every_output(tmp_path, capsys):
    res = fit(TinyTask(_cfg(tmp_path, epochs=4, lr_gamma=0.9, ema_decay=0.0), n=96), _cfg(tmp_path, epochs=4))
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["train_acc1"] > 0.8
    assert {"train_loss", "train_loss_cls", "train_acc1", "lr", "train_images_per_s", "val_acc1", "time"} <= set(rows[0])
    # One loss entry: the total is that entry.
    assert all(r["train_loss"] == pytest.approx(r["train_loss_cls"]) for r in rows)
    # Each row's lr is the one its epoch trained at (lr 0.1 halved after every epoch), not the next epoch's.
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    for f in ("last.pth", "best.pth", "curves.png", "config.yaml", "metrics.jsonl"):
        assert (tmp_path / f).is_file(), f
    last, best = load_checkpoint(tmp_path / "last.pth"), load_checkpoint(tmp_path / "best.pth")
    accs = [r["val_acc1"] for r in rows]
    assert best["epoch"] == last["best_epoch"] == res["best_epoch"] == 1 + accs.index(max(accs))
    assert last["best_score"] == max(accs) and last["task"] == "tiny" and last["history"] == rows
    assert "val_acc1=" in capsys.readouterr().out


def test_without_validation_the_lowest_training_loss_is_best(tmp_path):
    cfg = _cfg(tmp_path, ema_decay=0.0)
    res = fit(TinyTask(cfg, val=False), cfg)
    losses = [r["train_loss"] for r in _rows(tmp_path)]
    assert res["best_epoch"] == 1 + losses.index(min(losses)) and res["best_score"] == -min(losses)
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == res["best_epoch"]


def test_resume_continues_exactly(tmp_path, capsys):
    straight = _cfg(tmp_path / "a")
    fit(TinyTask(straight), straight)
    fit(TinyTask(_cfg(tmp_path / "b", epochs=2)), _cfg(tmp_path / "b", epochs=2))
    resumed = _cfg(tmp_path / "b", resume=str(tmp_path / "b" / "last.pth"))
    capsys.readouterr()
    fit(TinyTask(resumed), resumed)
    assert "last.pth: epoch 2 of 3 done, continuing" in capsys.readouterr().out
    # Resuming a finished run says so and trains nothing.
    done = fit(TinyTask(resumed), resumed)
    assert "all 3 epochs done, nothing to train" in capsys.readouterr().out
    assert done["last"]["epoch"] == 3 and done["last"] == _rows(tmp_path / "b")[-1]
    a, b = load_checkpoint(tmp_path / "a" / "last.pth"), load_checkpoint(tmp_path / "b" / "last.pth")
    assert a["epoch"] == b["epoch"] == 3 and a["ema"] is not None
    _same_weights(a, b)
    assert [r["train_loss"] for r in _rows(tmp_path / "a")] == [r["train_loss"] for r in _rows(tmp_path / "b")]
    _same_weights(load_checkpoint(tmp_path / "a" / "best.pth"), load_checkpoint(tmp_path / "b" / "best.pth"))
    # The averaged weights load through the shared loader too.
    load_model_weights(TinyNet(), tmp_path / "a" / "last.pth", use_ema=True)
    # A weights-only file cannot be resumed from.
    torch.save(TinyNet().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        resume_training_state(tmp_path / "plain.pth", model=TinyNet(), optimizer=build_optimizer({}, TinyNet()))
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        fit(TinyTask(_cfg(tmp_path / "c", resume=str(tmp_path / "plain.pth"))),
            _cfg(tmp_path / "c", resume=str(tmp_path / "plain.pth")))


def test_bf16_max_steps_and_grad_clip(tmp_path):
    cfg = _cfg(tmp_path, epochs=1, precision="bf16", max_steps_per_epoch=3, grad_clip=1.0, ema_decay=0.0)
    fit(TinyTask(cfg, n=32), cfg)
    ck = load_checkpoint(tmp_path / "last.pth")
    assert ck["scheduler"]["last_epoch"] == 3 and math.isfinite(_rows(tmp_path)[0]["train_loss"])


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_divergence_stops_and_keeps_the_last_finite_epoch(tmp_path, what):
    cfg = _cfg(tmp_path)
    with pytest.raises(GdetError, match="training diverged at epoch 2"):
        fit(TinyTask(cfg, poison=(2, what)), cfg)
    last, best = load_checkpoint(tmp_path / "last.pth"), load_checkpoint(tmp_path / "best.pth")
    assert last["epoch"] == best["epoch"] == 1 and [r["epoch"] for r in _rows(tmp_path)] == [1]
    for ck in (last, best):
        assert all(bool(torch.isfinite(v).all()) for v in ck["model"].values() if v.is_floating_point())


class _Kill(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def test_kill_between_best_and_last_then_resume(tmp_path, monkeypatch):
    import gdet.engine.trainer as trainer

    ref = _cfg(tmp_path / "ref")
    fit(TinyTask(ref), ref)
    cfg = _cfg(tmp_path / "w")
    # Killed while writing last.pth of epoch 2 (best.pth of epoch 2, if better, is already written).
    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda ck, path: (_ for _ in ()).throw(_Kill())
                        if ck["epoch"] == 2 and path.name == "last.pth" else real(ck, path))
    with pytest.raises(_Kill):
        fit(TinyTask(cfg), cfg)
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    assert load_checkpoint(tmp_path / "w" / "last.pth")["epoch"] == 1 and len(_rows(tmp_path / "w")) == 1
    resumed = _cfg(tmp_path / "w", resume=str(tmp_path / "w" / "last.pth"))
    fit(TinyTask(resumed), resumed)
    _same_weights(load_checkpoint(tmp_path / "ref" / "last.pth"), load_checkpoint(tmp_path / "w" / "last.pth"))
    _same_weights(load_checkpoint(tmp_path / "ref" / "best.pth"), load_checkpoint(tmp_path / "w" / "best.pth"))
    assert [r["epoch"] for r in _rows(tmp_path / "w")] == [1, 2, 3]


def _orphan(path):
    """The temp file gdet.io's atomic writer leaves beside ``path`` when the process dies mid-write."""
    from gdet.io import atomic_write

    before = set(path.parent.iterdir())
    with pytest.raises(_Kill):
        with atomic_write(path, "wb") as f:
            f.write(b"half a file")
            (temp,) = set(path.parent.iterdir()) - before
            raise _Kill()
    temp.write_bytes(b"half a file")  # the kill leaves it behind (the writer's clean-up never runs)
    return temp


def test_resume_takes_the_schedule_from_the_config(tmp_path, capsys):
    # A step run without a decay in its 2 epochs, resumed to 3 epochs with the decay moved to epoch 2: the third
    # epoch trains at half the lr, as it would have in a 3-epoch run with lr_step_epochs=2.
    fit(TinyTask(_cfg(tmp_path / "s", epochs=2, lr_step_epochs=4)), _cfg(tmp_path / "s", epochs=2, lr_step_epochs=4))
    resumed = _cfg(tmp_path / "s", epochs=3, lr_step_epochs=2, resume=str(tmp_path / "s" / "last.pth"))
    capsys.readouterr()
    fit(TinyTask(resumed), resumed)
    assert "lr_step_epochs 4 → 2; the optimizer and schedule follow the config (lr 0.05 at epoch 3)" in capsys.readouterr().out
    assert [r["lr"] for r in _rows(tmp_path / "s")] == pytest.approx([0.1, 0.1, 0.05])
    # A cosine run lengthened at its resume follows the longer curve from there on.
    cos = {"lr_schedule": "cosine", "min_lr": 0.0}
    straight = _cfg(tmp_path / "a", epochs=4, **cos)
    fit(TinyTask(straight), straight)
    fit(TinyTask(_cfg(tmp_path / "b", epochs=2, **cos)), _cfg(tmp_path / "b", epochs=2, **cos))
    longer = _cfg(tmp_path / "b", epochs=4, resume=str(tmp_path / "b" / "last.pth"), **cos)
    fit(TinyTask(longer), longer)
    assert "epochs 2 → 4" in capsys.readouterr().out
    a, b = [r["lr"] for r in _rows(tmp_path / "a")], [r["lr"] for r in _rows(tmp_path / "b")]
    assert b[2:] == pytest.approx(a[2:]) and b[1] < a[1] and b[2] > b[1]
    # Another optimizer cannot take the saved state.
    with pytest.raises(CheckpointError, match="trained with optimizer sgd, not adamw"):
        fit(TinyTask(longer), {**longer, "optimizer": "adamw"})
    with pytest.raises(CheckpointError, match="optimizer state does not fit this run's parameters"):
        fit(TinyTask(longer), {**longer, "no_decay_norm_bias": False})


def test_kill_before_the_metrics_row_then_resume_repairs(tmp_path, monkeypatch):
    from gdet.engine.logger import MetricLogger

    cfg = _cfg(tmp_path, epochs=2)
    real = MetricLogger.log

    def log(self, **row):
        if row["epoch"] == 2:
            raise _Kill()
        real(self, **row)

    monkeypatch.setattr(MetricLogger, "log", log)
    with pytest.raises(_Kill):
        fit(TinyTask(cfg), cfg)
    monkeypatch.setattr(MetricLogger, "log", real)
    last = load_checkpoint(tmp_path / "last.pth")
    assert last["epoch"] == 2 and [r["epoch"] for r in _rows(tmp_path)] == [1]  # the row of epoch 2 was lost
    # A stale best.pth (e.g. an older copy) is re-derived when last.pth is itself the best epoch.
    if last["best_epoch"] == 2:
        save_checkpoint({k: v for k, v in last.items() if k != "format"} | {"epoch": 1}, tmp_path / "best.pth")
    orphans = [_orphan(tmp_path / "last.pth"), _orphan(tmp_path / "config.yaml"), _orphan(tmp_path / "best.pth")]
    assert all(p.is_file() for p in orphans)
    resumed = _cfg(tmp_path, epochs=3, resume=str(tmp_path / "last.pth"))
    fit(TinyTask(resumed), resumed)
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[:2] == last["history"]
    final = load_checkpoint(tmp_path / "last.pth")
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == final["best_epoch"]
    assert not any(p.exists() for p in orphans)


def test_resume_rederives_a_missing_best(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    fit(TinyTask(cfg), cfg)
    (tmp_path / "best.pth").unlink()
    resumed = _cfg(tmp_path, epochs=1, resume=str(tmp_path / "last.pth"))
    fit(TinyTask(resumed), resumed)
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 1


def test_tensorboard_switch(tmp_path, monkeypatch):
    import sys
    import types

    cfg = _cfg(tmp_path, epochs=2, tensorboard=True)
    # Without the package: one line that says what to do.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(GdetError, match="tensorboard: the 'tensorboard' package is not installed"):
        fit(TinyTask(cfg), cfg)
    # With it: every numeric column of every epoch, grouped, in event files beside metrics.jsonl.
    scalars = []

    class Writer:
        def __init__(self, log_dir):
            scalars.append(("dir", log_dir, None))

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None, None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    fit(TinyTask(cfg), cfg)
    rows = _rows(tmp_path)
    assert scalars[0] == ("dir", str(tmp_path), None) and scalars[-1][0] == "closed"
    logged = {(tag, step): value for tag, value, step in scalars[1:-1]}
    for r in rows:
        assert logged[("train/train_loss", r["epoch"])] == r["train_loss"]
        assert logged[("val/val_acc1", r["epoch"])] == r["val_acc1"]
        assert logged[("train/lr", r["epoch"])] == r["lr"]
        assert ("train/train_images_per_s", r["epoch"]) in logged


# ---- start weights: counted, strict unless asked, classifier heads may differ ----

def test_start_weights_are_counted_and_partial_loads_refused(tmp_path, capsys):
    src = TinyNet(n_cls=5)
    torch.save(src.state_dict(), tmp_path / "five.pth")
    dst = TinyNet(n_cls=3)
    assert load_start_weights(dst, tmp_path / "five.pth") == (7, 11)  # fc and aux heads re-initialised
    assert torch.equal(dst.conv.weight, src.conv.weight)
    out = capsys.readouterr().out
    assert f"weights: loaded 7/11 tensors from {tmp_path / 'five.pth'} (4 classifier-head tensors" in out
    same = TinyNet(n_cls=5)
    assert load_start_weights(same, tmp_path / "five.pth") == (11, 11)
    assert load_start_weights(TinyNet(n_cls=5), tmp_path / "five.pth", reinit_head=True) == (7, 11)
    # A network of another layout: refused, or loaded in part when asked, always with the count.
    from gdet.backbones import build_backbone

    torch.save(build_backbone("googlenet_tv", num_classes=4).state_dict(), tmp_path / "tv.pth")
    net = build_backbone("googlenet", num_classes=4)
    with pytest.raises(CheckpointError, match=r"tv\.pth: only \d+/\d+ tensors of GoogLeNet fit .*weights_strict=false"):
        load_start_weights(net, tmp_path / "tv.pth")
    loaded, total = load_start_weights(net, tmp_path / "tv.pth", strict=False)
    assert 0 < loaded < total
    assert f"weights: loaded {loaded}/{total} tensors" in capsys.readouterr().out
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no weight fits"):
        load_start_weights(net, tmp_path / "other.pth", strict=False)


# ---- DDP: 2 gloo processes vs one process with the same total batch ----

def _ddp_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    cfg = _cfg(os.path.join(out_dir, "ddp"), epochs=1, lr=0.2, weight_decay=1e-3, lr_schedule="constant",
               ema_decay=0.0, shuffle=False)
    task = TinyTask(cfg, n=32, val=False, net_kw=dict(norm=False, aux=True, dropout=0.0))
    res = fit(task, cfg)
    torch.save({"loss": res["last"]["train_loss"]}, os.path.join(out_dir, f"rank{rank}.pt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_ranks_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["loss"] == r1["loss"]  # reduced across ranks
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pth")  # written once, by rank 0, without "module." prefixes
    assert len(ddp["rng_all_ranks"]) == 2 and all(not k.startswith("module.") for k in ddp["model"])
    # One process, batch 8 = 2 ranks x 4 (the unshuffled DistributedSampler interleaves, so each global batch
    # holds the same 8 samples).
    cfg = _cfg(tmp_path / "one", epochs=1, lr=0.2, weight_decay=1e-3, lr_schedule="constant", ema_decay=0.0,
               shuffle=False, batch_size=8)
    res = fit(TinyTask(cfg, n=32, val=False, net_kw=dict(norm=False, aux=True, dropout=0.0)), cfg)
    assert math.isclose(res["last"]["train_loss"], r0["loss"], rel_tol=1e-5, abs_tol=1e-6)
    one = load_checkpoint(tmp_path / "one" / "last.pth")
    for k, v in one["model"].items():
        assert torch.allclose(v, ddp["model"][k], atol=1e-5), k


def test_shard_sampler_covers_every_index_once():
    from gdet.engine import ShardSampler

    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert len(ShardSampler(10, 1, 3)) == 3


def test_tensorboard_event_files_hold_the_logged_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tmp_path, epochs=2, tensorboard=True)
    fit(TinyTask(cfg), cfg)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    rows = _rows(tmp_path)
    loss = events.Scalars("train/train_loss")
    assert [e.step for e in loss] == [r["epoch"] for r in rows]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("val/val_acc1")] == pytest.approx([r["val_acc1"] for r in rows])


class ScaledLossTask(TinyTask):
    """:class:`TinyTask` whose loss is multiplied by the config key ``loss_scale``, which it declares as defining
    what the loss measures."""

    loss_keys = ("loss_scale",)

    def loss(self, net, batch, run):
        out = super().loss(net, batch, run)
        out["loss_cls"] = out["loss_cls"] * float(self.cfg.get("loss_scale", 1.0))
        return out


def test_a_resume_that_changes_the_loss_restarts_the_best_epoch(tmp_path, capsys):
    # Without validation the lowest training loss picks best.pth. Resumed with the loss unchanged, the earlier
    # epochs still compete; resumed with a key that scales the loss (as a teacher or another background range
    # changes it), the earlier losses measure something else and best.pth restarts at the first new epoch.
    def run(work, epochs, val=False, **kw):
        cfg = _cfg(work, epochs=epochs, lr=0.05, **{"loss_scale": 1.0, **kw})
        return fit(ScaledLossTask(cfg, val=val), cfg)

    for name in ("same", "scaled", "validated"):
        run(tmp_path / name, 2)
    capsys.readouterr()
    same = run(tmp_path / "same", 3, resume=str(tmp_path / "same" / "last.pth"))
    assert "restarts" not in capsys.readouterr().out
    losses = [r["train_loss"] for r in _rows(tmp_path / "same")]
    assert same["best_score"] == pytest.approx(-min(losses))
    assert same["best_epoch"] == 1 + losses.index(min(losses))

    scaled = run(tmp_path / "scaled", 3, loss_scale=10.0, resume=str(tmp_path / "scaled" / "last.pth"))
    assert ("loss_scale 1.0 → 10.0 changes what the training loss measures; best.pth restarts at epoch 3"
            in capsys.readouterr().out)
    losses = [r["train_loss"] for r in _rows(tmp_path / "scaled")]
    assert losses[2] > max(losses[:2])  # the new epoch would never have won against the old ones
    assert scaled["best_epoch"] == 3 and scaled["best_score"] == pytest.approx(-losses[2])
    assert load_checkpoint(tmp_path / "scaled" / "best.pth")["epoch"] == 3

    validated = run(tmp_path / "validated", 3, val=True, eval_every=1,
                    resume=str(tmp_path / "validated" / "last.pth"))
    assert "the score is now val_acc1, not neg_train_loss; best.pth restarts at epoch 3" in capsys.readouterr().out
    assert validated["best_epoch"] == 3 and validated["score_name"] == "val_acc1"
