"""The ``bench`` command line: a thin dispatcher; each subcommand lives in ``bench/commands/<name>.py``
and exposes ``add_parser(subparsers)`` which sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in --help. A module missing here means the command is not built yet.
COMMANDS = ("list", "data", "graphs", "train", "pretrain", "embed", "run", "leaderboard")


class UserError(Exception):
    """An error caused by input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="PATH_OR_MODULE",
        help="load a plugin (a .py file or an importable module) before running; repeatable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"bench.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"bench.commands.{name}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def early_names(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(registry kind, name) pairs a command declared with ``set_defaults(registry_names=((dest, kind), ...))``:
    checked before torch and DGL are imported (bench.plugins.check_early). Encoder, objective and task options
    may be comma-separated lists; a featurizer spec is checked by its kind (the part before ``:``)."""
    out = []
    for dest, kind in getattr(args, "registry_names", ()):
        value = getattr(args, dest, None)
        if not value or not isinstance(value, str):
            continue
        if kind == "featurizer":
            out.append((kind, value.partition(":")[0]))
        else:
            out.extend((kind, v.strip()) for v in value.split(",") if v.strip())
    return out


def _suggest_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A mistyped command gets argparse's usage line plus "did you mean" (argparse only lists the choices)."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):  # global options (--plugin X) come before the command
        rest = rest[2:] if rest[0] == "--plugin" else rest[1:]
    if rest and rest[0] not in COMMANDS:
        from bench.registry import suggest

        parser.error(suggest(rest[0], list(COMMANDS), "command"))


def main(argv: list[str] | None = None) -> int:
    # Parse first: --help and argument errors answer before anything heavy (torch, DGL, Ray) is imported.
    parser = build_parser()
    _suggest_command(parser, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    from bench.config import ConfigError
    from bench.plugins import PluginError, check_early, load_plugins, save_builtin_names
    from bench.registry import RegistryError
    from bench.structures import StructureError

    try:
        check_early(early_names(args), args.plugin, getattr(args, "data_dir", None))
        args.plugins = load_plugins(args.plugin)
        save_builtin_names()  # for check_early next time
        return int(args.func(args) or 0)
    except (UserError, RegistryError, ConfigError, PluginError, StructureError, FileNotFoundError) as e:
        print(f"bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m bench.cli`: run the imported module's main, so that the UserError components raise (imported
    # from bench.cli) is the class caught here, not this __main__ copy's
    from bench.cli import main as _main

    sys.exit(_main())
