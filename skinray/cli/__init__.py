"""The ``skinray`` command line: parse flags into the typed config, call the library, print for people.

Errors print one line (``skinray: error: ...``, or one JSON object under ``--log-format json``) and exit with the
code a scheduler acts on (``skinray.EXIT_*``): 2 fix the command, 3 the data says no, 75 retry later. Nothing here
holds pipeline logic.
Every flag has help text that names its default (and the config key it sets). Each subcommand and flag is declared
once, in ``flags``; the subcommands' bodies are in ``commands``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, Sequence

from skinray import EXIT_USAGE, SkinrayError, __version__, console
from skinray.cli.commands import COMMANDS
from skinray.cli.flags import COMMON, SUBCOMMANDS, add_flags, config_keys
from skinray.config import SkinrayConfig, load_config


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; a literal default appended where the help does not give one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" not in text and action.default not in (None, argparse.SUPPRESS) and action.option_strings:
            shown = "off" if action.default is False else action.default
            text += f" (default: {shown})"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse whose own errors (a typo in a flag) follow ``--log-format``: one JSON object for a scheduler."""

    def error(self, message: str) -> None:  # type: ignore[override]
        argv = sys.argv[1:] if _ARGV is None else _ARGV
        fmt = "json" if any(a == "--log-format=json" for a in argv) or any(
            a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:])) else "text"
        if fmt == "json":
            console.error(f"{self.prog}: {message}", fmt, kind="usage")
            sys.exit(EXIT_USAGE)
        super().error(message)


_ARGV: list[str] | None = None  # what main() was given, for _Parser.error


class _Intermixed(_Parser):
    """Flags and positionals in any order (``query OUT --format csv "SQL"``): plain argparse binds an optional
    positional (``nargs="?"``) to nothing as soon as a flag follows the one before it, then refuses the SQL."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        if self._mixing:  # parse_known_intermixed_args parses twice through this method
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def _parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="skinray",
        description="Dermoscopic lesion classification (MobileNetV2) as distributed Ray batch jobs.",
        formatter_class=_Formatter,
        epilog="Run `skinray COMMAND --help` for examples. With RAY_ADDRESS set, jobs join that cluster.",
    )
    root.add_argument("--version", action="version", version=f"skinray {__version__}")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help, formatter_class=_Formatter,
                           epilog="examples:\n" + textwrap.indent(textwrap.dedent(command.examples).strip(), "  "))
        if command.intermixed:
            p.__class__ = _Intermixed  # argparse has no per-subcommand parser class
        add_flags(p.add_argument_group("configuration and output"), COMMON)
        add_flags(p, command.flags)
    return root


def build_config(args: argparse.Namespace) -> SkinrayConfig:
    overrides: dict[str, Any] = {key: getattr(args, dest, None) for dest, key in config_keys(args.command).items()}
    if getattr(args, "sources", None):
        if any(len(s) not in (2, 3) for s in args.sources):
            raise SkinrayError("--source takes NAME MANIFEST [IMAGES]")
        overrides["prepare.sources"] = [dict(zip(("name", "manifest", "images"), s)) for s in args.sources]
    if args.command == "score" and args.input_root and not args.date:
        raise SkinrayError("--input-root needs --date")
    cfg = load_config(args.config, overrides, args.sets, args.recipe)
    if args.command == "score" and args.input_root:
        from skinray.io import storage

        cfg.score.input = storage.join(args.input_root, cfg.score.night())
    return cfg


def main(argv: Sequence[str] | None = None, preflight: bool = False) -> int:
    """The command line; ``preflight`` (the job entrypoints) first runs the doctor checks the job's arguments
    need, so a missing bucket or an unusable GPU ends the job in seconds."""
    global _ARGV
    _ARGV = None if argv is None else list(argv)
    args = _parser().parse_args(argv)
    console.setup(args.verbose, args.log_format, args.command)
    try:
        cfg = build_config(args)
        if preflight:
            from skinray.doctor import preflight as run_checks

            checks = run_checks(args.command, cfg)
            console.log.info("preflight: %d checks passed", len(checks.checks))
        return COMMANDS[args.command](args, cfg) or 0
    except SkinrayError as exc:
        console.error(str(exc), args.log_format, kind=exc.kind, run_id=exc.run_id, stage=args.command)
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted", args.log_format, kind="interrupted", stage=args.command)
        return 130
