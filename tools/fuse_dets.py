#!/usr/bin/env python
"""Fuse detection result files offline (NMS or weighted boxes fusion): the same command as `gdet fuse`
(`-h` lists the options)."""
from gdet.cli import run_tool
from gdet.detection.cli import fuse

if __name__ == "__main__":
    run_tool(fuse)
