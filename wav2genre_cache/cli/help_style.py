"""Help and usage lines in the conventions most command lines follow: `embed [OPTIONS] DATA...`,
option values shown as PATH, TEXT, INTEGER or FLOAT, flags shown bare.

Typer 0.29 prints `{DATA}...` for a required argument and `<str>`, `<list[Path]>`, `<bool>` for
types (its own style); users of click, git or ffmpeg read `DATA...` and `PATH`.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup

__all__ = ["ConventionalCommand", "ConventionalGroup", "conventional_type"]

_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "path": "PATH"}
_LIST = re.compile(r"^list\[(.+)\]$")


def conventional_type(typer_label: str) -> str | None:
    """The conventional placeholder for one of typer's type labels (`<list[Path]>` -> PATH...)."""
    label = typer_label.strip("<>")
    if label == "bool":
        return None  # a flag takes no value
    listed = _LIST.match(label)
    inner = listed.group(1) if listed else label
    name = _NAMES.get(inner, inner)
    return f"{name}..." if listed else name


def _argument_name(param: TyperArgument) -> str:
    name = param.metavar or param.name.upper()
    return f"{name}..." if param.nargs != 1 and not name.endswith("...") else name


def _argument_usage(param: TyperArgument) -> str:
    return param.metavar if param.required else f"[{param.metavar}]"


def _conventional(params: list, ctx: Any) -> list:
    # Typer computes the type column per parameter; each one is given its conventional label.
    for param in params:
        if not hasattr(param, "display_type"):
            continue
        label = conventional_type(param.display_type(ctx))
        if isinstance(param, TyperArgument):
            param.metavar = _argument_name(param)  # also what "Missing argument" names
        else:
            label = param.metavar or label
        param.display_type_rich = lambda ctx, label=label: label
    return params


class ConventionalCommand(TyperCommand):
    """A command whose usage line and option types read as conventional placeholders."""

    def get_params(self, ctx: Any) -> list:
        return _conventional(super().get_params(ctx), ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        arguments = [p for p in self.get_params(ctx) if isinstance(p, TyperArgument)]
        return pieces + [_argument_usage(p) for p in arguments]


class ConventionalGroup(TyperGroup):
    """The command group, with its own options (`--version`, `--help`) shown the same way."""

    def get_params(self, ctx: Any) -> list:
        return _conventional(super().get_params(ctx), ctx)
