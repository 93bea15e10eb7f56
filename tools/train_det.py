#!/usr/bin/env python
"""Train an R-CNN detector: the same command as `gdet train det`:
`tools/train_det.py --config configs/FILE.yaml [KEY=VALUE ...]`; data-parallel with
`torchrun --nproc_per_node=N tools/train_det.py --config ...` (`-h` lists the options)."""
from gdet.cli import run_tool
from gdet.train_cli import train_det

if __name__ == "__main__":
    run_tool(train_det)
