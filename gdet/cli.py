"""The ``gdet`` command: a thin click group; each subcommand lives beside the module it drives.

Every ``tools/*.py`` script is a thin wrapper over one of these commands, so a pip-installed gdet can train,
test, evaluate and benchmark without the repository. Shared option names (one vocabulary):
``--data`` dataset, ``--split``, ``--weights`` the command's own checkpoint(s), ``--proposal-weights`` the
MultiBox checkpoint of the proposals, ``--opt KEY=VALUE`` proposal-method options, ``--out`` the command's main
output, ``--json FILE`` machine-readable results (``-``: stdout), ``--top-k``, ``--device``, ``--precision``.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import click

from gdet import __version__
from gdet.errors import GdetError, install_warning_format
from gdet.io import save_json
from gdet.memory import keep_freed_memory

CONTEXT = {"help_option_names": ["-h", "--help"]}

# Network arithmetic of every inference command (gdet.runtime.optimize): auto = fp16 channels-last on CUDA,
# fp32 (channels-last) on CPU.
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]


def device_options(f):
    """``--device``, ``--precision``, ``--compile`` and ``--cuda-graphs``: the same options on every command that runs
    a network."""
    f = click.option("--cuda-graphs", is_flag=True,
                     help="CUDA: replay the network from CUDA graphs, one per input size (pays when sizes repeat; "
                     "ignored elsewhere).")(f)
    f = click.option("--compile", "compile_", is_flag=True,
                     help="torch.compile the network (pays on long jobs; the first batch compiles).")(f)
    f = click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
                     help="Network arithmetic: auto = fp16 on CUDA, fp32 on CPU.")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")(f)
    return f


class FloatRange(click.FloatRange):
    """click's ``FloatRange`` that also refuses NaN (which compares false with every bound, so click lets it in)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and math.isnan(rv):
            describe = getattr(self, "_describe_range", lambda: f"{self.min}..{self.max}")
            self.fail(f"{value!r} is not in the range {describe()}", param, ctx)
        return rv


def int_list(text: str, option: str) -> list[int]:
    """A comma list of positive integers given to ``option`` (e.g. ``--scales 480,600``); else a one-line error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise GdetError(f"{option}: expected a comma list of positive integers, got {text!r}")
    return values


# name -> ("module:attribute", one-line help). Listing the commands imports nothing (so `gdet --help` is fast
# and loads no torch); a command's module is imported only when that command runs or shows its own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("gdet.benchmarks.cli:bench", "Benchmarks: classify, proposals, detect, eval, loader, shared."),
    "classify": ("gdet.classification.cli:classify", "Top-k classes of images; `classify eval`: multi-crop error."),
    "data": ("gdet.data.cli:data", "Datasets: synthetic benchmark, VOC <-> COCO, ground-truth pictures."),
    "demo": ("gdet.demo:demo", "Detect objects in the sample image; the shipped detector's mAP."),
    "detect": ("gdet.detection.cli:detect", "Detect objects in images (files, folders, globs)."),
    "eval": ("gdet.evaluation.cli:eval_cmd", "Score a detection result file (mAP per class, PR curves)."),
    "export": ("gdet.export.cli:export", "Export a checkpoint for inference."),
    "fuse": ("gdet.detection.cli:fuse", "Fuse detection result files of the same images (NMS or WBF)."),
    "models": ("gdet.backbones.cli:models", "Registered backbones with parameters and multiply-adds."),
    "proposals": ("gdet.proposals.cli:proposals", "Object proposals: compute, combine, inspect, evaluate recall."),
    "test": ("gdet.detection.cli:test", "Detect every image of a dataset split, write results, print mAP."),
    "train": ("gdet.train_cli:train", "Train a model: train cls|det|multibox --config FILE [KEY=VALUE]."),
}


def _option_name(e: click.BadParameter) -> str:
    """``--max-size`` for an option, the metavar's name for an argument (click's hint without its quotes)."""
    param = e.param
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    if param is not None:
        return param.human_readable_name
    hint = e.param_hint if isinstance(e.param_hint, str) else " / ".join(e.param_hint or [])
    return hint.strip("'\"") or "value"


def _worker_message(message: str) -> str:
    """The error itself, when it was raised in a DataLoader worker: PyTorch re-raises it in the main process with
    the worker's traceback as its message, whose last line is ``module.ErrorType: <the message>``."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


# The options through which a command writes files; every other option's existing files are its inputs.
OUTPUT_OPTIONS = ("--out", "--json", "--plot", "--plots")
# What a picture option (``--plot``) may be written as: the formats matplotlib's Agg backend writes.
PICTURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


def _files(value) -> list[Path]:
    """The existing regular files an option value names (a path, or a list of paths)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [Path(v) for v in values if isinstance(v, (str, os.PathLike)) and str(v) != "-" and Path(v).is_file()]


def refuse_overwriting_inputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Raise :class:`GdetError` when an output file (``{option: path}``) is one of the inputs (``{option: value}``,
    a path or a list of paths): writing it would destroy what the command reads."""
    for out_opt, out in outputs.items():
        for target in _files(out):
            for in_opt, value in inputs.items():
                if any(os.path.samefile(target, f) for f in _files(value)):
                    raise GdetError(f"{target}: {out_opt} would overwrite an input of this command ({in_opt}); "
                                    "choose another file")


def refuse_unwritable(option: str, value: Any) -> None:
    """Raise :class:`GdetError` when the output ``value`` of ``option`` cannot be written where it points: a part
    of its path is a file, or a picture's suffix names no picture format. (click's path type already refuses a
    folder where a file goes, and the reverse.)"""
    if value is None or str(value) == "-":
        return
    path = Path(value)
    if option == "--plot" and path.suffix.lower() not in PICTURE_SUFFIXES:
        raise GdetError(f"{value}: {option} names a picture; end it in {', '.join(PICTURE_SUFFIXES[:3])} or another "
                        "format matplotlib writes")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise GdetError(f"{value}: {option} cannot be written: {parent} is a file, not a folder")
            break


def guard_outputs(cmd: click.Command) -> click.Command:
    """Make ``cmd`` (and, for a group, each command under it) refuse, before it reads or writes anything, an
    ``--out``/``--json``/``--plot(s)`` path that cannot be written (:func:`refuse_unwritable`) or that is also one
    of its inputs (:func:`refuse_overwriting_inputs`). Applied once, where commands are loaded."""
    if getattr(cmd, "_outputs_guarded", False):
        return cmd
    cmd._outputs_guarded = True
    if isinstance(cmd, click.Group):  # a lazy group guards its commands as it loads them
        for sub in cmd.commands.values():
            guard_outputs(sub)
    callback = cmd.callback
    flags = {p.name: (p.opts[0] if p.opts else p.name) for p in cmd.params}
    if callback is None or not any(f in OUTPUT_OPTIONS for f in flags.values()):
        return cmd

    @functools.wraps(callback)
    def checked(*args, **kwargs):
        outputs = {flags[k]: v for k, v in kwargs.items() if flags.get(k) in OUTPUT_OPTIONS}
        inputs = {flags.get(k, k): v for k, v in kwargs.items() if flags.get(k) not in OUTPUT_OPTIONS}
        for k, v in kwargs.items():
            if flags.get(k) in OUTPUT_OPTIONS:
                refuse_unwritable(flags[k], v)
        refuse_overwriting_inputs(outputs, inputs)
        return callback(*args, **kwargs)

    cmd.callback = checked
    return cmd


def _os_error(e: OSError) -> str:
    """``<file>: <why>`` for an operating-system error on a file the command writes or reads."""
    why = {FileExistsError: "exists and is not a folder", IsADirectoryError: "is a folder, not a file",
           NotADirectoryError: "a part of the path is a file, not a folder"}.get(type(e))
    return f"{e.filename}: {why or (e.strerror or str(e)).lower()}"


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; a :class:`GdetError`, a missing file or an invalid option value (out of range, not a choice,
    not a number) becomes a one-line message and exit code 1.

    Used by the CLI and by every ``tools/`` script so that bad input never shows a traceback. Command-line grammar
    (an unknown or misspelt command or option, a missing required option) stays click's usage error, exit code 2.
    """
    install_warning_format()
    keep_freed_memory()
    try:
        return fn(*args, **kwargs)
    except GdetError as e:
        click.echo(f"error: {_worker_message(str(e))}", err=True)
        sys.exit(1)
    except click.BadParameter as e:
        if isinstance(e, click.MissingParameter):
            raise
        click.echo(f"error: {_option_name(e)}: {e.message.rstrip('.')}", err=True)
        sys.exit(1)
    except FileNotFoundError as e:
        name = e.filename or str(e)
        click.echo(f"error: {name}: file not found", err=True)
        sys.exit(1)
    except OSError as e:
        if not e.filename:
            raise
        click.echo(f"error: {_os_error(e)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def run_tool(cmd: click.Command) -> None:
    """Entry point of a ``tools/*.py`` script: run ``cmd`` as a program, bad input printed as one line."""
    guard_outputs(cmd)

    def program():
        try:
            # Not standalone: click would print a bad value with its usage block; run_guarded prints one line.
            # ``-h`` and ``ctx.exit(n)`` return their exit code; a finished command exits 0.
            rv = cmd.main(standalone_mode=False, prog_name=sys.argv[0])
            sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)
        except click.BadParameter as e:
            if not isinstance(e, click.MissingParameter):
                raise  # run_guarded's one line
            e.show()
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)

    run_guarded(program)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """The ``--json FILE`` option: write ``obj`` to FILE atomically, or print it when FILE is ``-``."""
    if str(path) == "-":
        click.echo(json.dumps(obj, indent=2))
    else:
        save_json(obj, path)


ASSETS = Path(__file__).resolve().parent / "assets"


def note_shipped_weights(paths: Iterable[str | os.PathLike]) -> None:
    """Say once, on stderr, that the bundled ``gdet/assets/*_synth_fp16.pth`` models know only synthetic shapes."""
    for p in paths:
        p = Path(p)
        if p.name.endswith("_synth_fp16.pth") and p.resolve().parent == ASSETS:
            click.echo(f"note: {p.name} is a demonstration model trained on synthetic shapes only "
                       "(gdet data synth); it does not recognise real-world objects", err=True)
            return


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use; listing them imports nothing.

    Args:
        lazy: ``name -> (module:attribute, one-line help)`` (or just ``module:attribute``, shown without help).
    """

    def __init__(self, *args, lazy: dict[str, tuple[str, str] | str] | None = None, **kwargs):
        kwargs.setdefault("context_settings", dict(CONTEXT))
        super().__init__(*args, **kwargs)
        self.lazy = {name: (v, "") if isinstance(v, str) else tuple(v) for name, v in (lazy or {}).items()}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self.lazy:
            cmd = self._load(name, self.lazy[name][0])
        return cmd

    def format_commands(self, ctx, formatter):
        rows = [(name, self.commands[name].get_short_help_str(limit=formatter.width))
                for name in super().list_commands(ctx)]
        rows += [(name, help_) for name, (_, help_) in self.lazy.items() if name not in self.commands]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))

    def resolve_command(self, ctx, args):
        name = click.utils.make_str(args[0]) if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    @staticmethod
    def _load(name, target):
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only a command whose own module is absent (not yet installed) is reported this way; a missing
            # third-party dependency is a real error and keeps its traceback.
            if e.name and module_name.startswith(e.name):
                raise GdetError(f"command {name!r} is not available in this installation ({module_name})") from None
            raise
        return guard_outputs(getattr(module, attr))

    def invoke(self, ctx):
        return run_guarded(super().invoke, ctx)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="gdet")
def main():
    """gdet: GoogLeNet classification and R-CNN detection (Szegedy et al., 2014).

    Run `gdet COMMAND -h` for each command's options.
    """


if __name__ == "__main__":
    main()
