"""`torchrun --nproc_per_node=2 tools/train_cls.py` on CPU (gloo): one set of outputs, written by rank 0."""
import json
import sys
from pathlib import Path


from gdet.engine import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from helpers_dist import torchrun  # noqa: E402
from test_classification import make_shapes  # noqa: E402


def test_torchrun_two_cpu_ranks(tmp_path):
    data = make_shapes(tmp_path / "d", per_class=4, size=40)
    out = torchrun([ROOT / "tools" / "train_cls.py", "--config", ROOT / "configs" / "cls_synth.yaml", f"data={data}",
                    f"work_dir={tmp_path / 'w'}", "epochs=2", "input_size=40", "batch_size=4", "device=cpu"],
                   cwd=tmp_path)
    assert out.count("best ema_val_acc1") == 1  # rank 0 reports
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    ck = load_checkpoint(tmp_path / "w" / "last.pth")
    assert len(ck["rng_all_ranks"]) == 2 and ck["epoch"] == 2
    # 16 training images, 2 ranks x batch 4 -> 2 steps per epoch; the schedule counted global steps once.
    assert ck["scheduler"]["last_epoch"] == 4
