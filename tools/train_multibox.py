#!/usr/bin/env python
"""Train a MultiBox proposal network: the same command as `gdet train multibox`:
`tools/train_multibox.py --config configs/FILE.yaml [KEY=VALUE ...]`; data-parallel with
`torchrun --nproc_per_node=N tools/train_multibox.py --config ...` (`-h` lists the options)."""
from gdet.cli import run_tool
from gdet.train_cli import train_multibox

if __name__ == "__main__":
    run_tool(train_multibox)
