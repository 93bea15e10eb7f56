#!/usr/bin/env python
"""Train an image classifier: the same command as `gdet train cls`:
`tools/train_cls.py --config configs/FILE.yaml [KEY=VALUE ...]`; data-parallel with
`torchrun --nproc_per_node=N tools/train_cls.py --config ...` (`-h` lists the options)."""
from gdet.cli import run_tool
from gdet.train_cli import train_cls

if __name__ == "__main__":
    run_tool(train_cls)
