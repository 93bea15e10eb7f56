#!/usr/bin/env python
"""Score a detection result file: `python tools/eval_map.py --gt DATA --dets RESULTS.json --metric voc|coco|...`.

The same command as `gdet eval`; see README.md (evaluation section).
"""
import sys

from gdet.cli import run_guarded
from gdet.evaluation.cli import eval_cmd

if __name__ == "__main__":
    run_guarded(eval_cmd.main, standalone_mode=True)
    sys.exit(0)
