#!/usr/bin/env python
"""Proposal recall of proposal files: the same command as `gdet proposals eval` (`-h` lists the options)."""
from gdet.cli import run_tool
from gdet.proposals.cli import eval_cmd

if __name__ == "__main__":
    run_tool(eval_cmd)
