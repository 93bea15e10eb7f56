"""The ``gdet`` command: a thin click group; each subcommand lives beside the module it drives."""
from __future__ import annotations

import importlib
import sys

import click

from gdet import __version__
from gdet.errors import GdetError, install_warning_format

# name -> "module:attribute". Commands are imported only when used, so `gdet --help` stays fast
# and a broken optional dependency of one command cannot break the others.
COMMANDS: dict[str, str] = {
    "models": "gdet.backbones.cli:models",
    "classify": "gdet.classification.cli:classify",
    "detect": "gdet.detection.cli:detect",
    "data": "gdet.data.cli:data",
    "eval": "gdet.evaluation.cli:eval_cmd",
    "proposals": "gdet.proposals.cli:proposals",
    "demo": "gdet.demo:demo",
}


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; a :class:`GdetError` (or a missing file) becomes a one-line message and exit code 1.

    Used by the CLI and by every ``tools/`` script so that bad input never shows a traceback.
    """
    install_warning_format()
    try:
        return fn(*args, **kwargs)
    except GdetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except FileNotFoundError as e:
        name = e.filename or str(e)
        click.echo(f"error: {name}: file not found", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use; user errors print one line."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        names = set(super().list_commands(ctx))
        for name, target in self.lazy.items():
            if self._load(name, target, quiet=True) is not None:
                names.add(name)
        return sorted(names)

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self.lazy:
            cmd = self._load(name, self.lazy[name], quiet=False)
        return cmd

    @staticmethod
    def _load(name, target, quiet):
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only a command whose own module is absent is skipped; a missing dependency is a real error.
            if quiet and e.name and module_name.startswith(e.name):
                return None
            raise
        return getattr(module, attr)

    def invoke(self, ctx):
        return run_guarded(super().invoke, ctx)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="gdet")
def main():
    """gdet: GoogLeNet classification and R-CNN detection (Szegedy et al., 2014).

    Run `gdet COMMAND --help` for each command's options.
    """


if __name__ == "__main__":
    main()
