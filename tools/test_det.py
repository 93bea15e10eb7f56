#!/usr/bin/env python
"""Detect every image of a split and write COCO-format results, then print their mAP: the same command as
`gdet test` (`tools/test_det.py -h` lists the options)."""
from gdet.cli import run_tool
from gdet.detection.cli import test

if __name__ == "__main__":
    run_tool(test)
