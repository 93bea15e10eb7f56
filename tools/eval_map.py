#!/usr/bin/env python
"""Score a detection result file against a dataset: the same command as `gdet eval` (`-h` lists the options)."""
from gdet.cli import run_tool
from gdet.evaluation.cli import eval_cmd

if __name__ == "__main__":
    run_tool(eval_cmd)
