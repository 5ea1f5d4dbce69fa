"""Command-line plumbing shared by the CLIs: one-line errors with exit 2, a flag per config field
(built from the field declarations in :mod:`rl.config`), negative numbers taken as values."""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import tomllib

from rl.settings import ConfigError, field_kind

NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad input in one line, suggests the closest flag, and exits 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a misspelt flag must not silently match a longer one
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self._join_negative_values(sys.argv[1:] if args is None else args), namespace)

    def _join_negative_values(self, args: Sequence[str]) -> list[str]:
        """``--flag -1e-3`` -> ``--flag=-1e-3``: argparse takes a value that starts with '-' for a flag unless
        it is a plain negative decimal, so exponents and ``-inf`` never reached the validator."""
        takes_value = {o for a in self._actions if a.nargs is None and a.option_strings for o in a.option_strings}
        out: list[str] = []
        for arg in args:
            if out and out[-1] in takes_value and NEGATIVE_NUMBER.match(arg):
                out[-1] = f"{out[-1]}={arg}"
            else:
                out.append(arg)
        return out

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = [o for action in self._actions for o in action.option_strings]
            unknown = next((x for x in extras if x.startswith("-")), extras[0])
            close = difflib.get_close_matches(unknown.split("=")[0], flags, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see --help"
            self.error(f"unrecognized argument {unknown!r}{hint}")
        return parsed


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_cli_value(text: str) -> Any:
    """A CLI value parsed as a TOML value, so tables and lists use the same syntax as config files."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def add_config_flags(parser: argparse.ArgumentParser, cls, shown=None, shown_as: str = "default",
                     title: str = "config overrides (any config.toml key)") -> None:
    """One ``--kebab-case`` flag per field; values stay unset (None) unless given. ``--help`` shows each
    value of ``shown`` (the config the command would run with; the dataclass defaults if None)."""
    group = parser.add_argument_group(title)
    shown = shown if shown is not None else cls()
    for f in fields(cls):
        kind = field_kind(cls, f.name)
        value = getattr(shown, f.name)
        help_text = f"{f.metadata.get('help', '')} ({shown_as}: {'unset' if value is None else value})"
        help_text = help_text.replace("%", "%%")             # argparse %-formats help strings
        if kind is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            metavar = {int: "INT", float: "FLOAT", str: "STR", list: "LIST", dict: "TABLE"}[kind]
            conv = str if kind is str else parse_cli_value
            group.add_argument(_flag(f.name), dest=f.name, type=conv, default=None, metavar=metavar,
                               help=help_text)


def overrides_from_args(args: argparse.Namespace, cls) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
            prog: str | None = None) -> int:
    """Run ``main`` and map errors to exit codes: ConfigError -> 2 with one line, others -> 1."""
    prog = prog or Path(sys.argv[0]).name
    try:
        return main(argv)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def add_distributed_flags(parser: argparse.ArgumentParser, actors_help: str) -> None:
    """--actors N and --ray-address, shared by rl-train and rl-bench."""
    parser.add_argument("--actors", type=int, metavar="N", help=actors_help)
    parser.add_argument("--ray-address", metavar="ADDRESS", help="with --actors: join this Ray cluster ('auto': the one "
                        "'ray start' runs on this node); default: start Ray here with this machine's cores")


def check_distributed_flags(args: argparse.Namespace) -> None:
    """Refuse bad --actors / --ray-address values, and --actors without Ray installed, before any work."""
    if args.actors is not None and args.actors < 1:
        raise ConfigError(f"--actors {args.actors} is not allowed: must be >= 1")
    if args.ray_address is not None and args.actors is None:
        raise ConfigError("--ray-address needs --actors N")
    if args.actors is not None and importlib.util.find_spec("ray") is None:
        raise ConfigError("--actors needs Ray, which is not installed: pip install -e '.[distributed]'")
