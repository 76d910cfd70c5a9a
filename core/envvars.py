"""Each tool's environment variables: ``INPAINT_<TOOL>_<OPTION>``, one rule, and the old names refused.

Before issue 24 the tools shared unprefixed names (``INPAINT_BATCH_SIZE`` was the trainer's crops per step and
the client's images per request). Now every command reads its own prefix, and a name it read before is
refused when set, with one line giving the new name: a setting is never dropped silently, nor another
tool's taken.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import click


class OldVariableSet(click.ClickException):
    """An old variable name is set: one line naming the new one, exit 2 (a usage error: a Job fails at once)."""

    exit_code = 2


class ToolVariables:
    """One command's variables: ``prefix`` + the option's flag (``--batch-size``: ``<prefix>BATCH_SIZE``),
    and ``renamed``, each name it read before with the variable(s) that replace it."""

    def __init__(self, tool: str, prefix: str, renamed: dict[str, str] | None = None):
        self.tool, self.prefix = tool, prefix
        self.renamed = {} if renamed is None else renamed

    def envvar(self, flag: str) -> str:
        """``--batch-size`` -> ``INPAINT_TRAIN_BATCH_SIZE``; ``--rest_api_port`` -> ``..._REST_API_PORT``."""
        return self.prefix + flag.split("/")[0].lstrip("-").replace("-", "_").upper()

    def option(self, *declarations: str, **attrs):
        """``click.option`` that reads the variable of its first long flag, named in ``--help``."""
        flag = next(name for name in declarations if name.startswith("--"))
        return click.option(*declarations, envvar=self.envvar(flag), show_envvar=True, **attrs)

    def subcommand(self, name: str) -> ToolVariables:
        """A subcommand's variables: ``INPAINT_CLIENT_`` -> ``INPAINT_CLIENT_PREDICT_``; old names shared."""
        return ToolVariables(self.tool, f"{self.prefix}{name.upper()}_", self.renamed)

    def rename(self, old: Mapping[str, str]) -> None:
        """Refuse each old name of ``old``, naming the variable of the flag it maps to (or of each flag, where
        subcommands split one old name)."""
        for name, flag in old.items():
            new = self.envvar(flag)
            self.renamed[name] = f"{self.renamed[name]} or {new}" if name in self.renamed else new

    def refuse_old(self, environ: Mapping[str, str] | None = None) -> None:
        """OldVariableSet if ``environ`` (default: this process's) sets a name this tool read before."""
        environ = os.environ if environ is None else environ
        old = sorted(name for name in self.renamed if environ.get(name))
        if old:
            new = [self.renamed[name] for name in old]
            raise OldVariableSet(f"{', '.join(old)} {'is' if len(old) == 1 else 'are'} no longer read by "
                                 f"{self.tool}: set {', '.join(new)} instead")


class RefusingOldVariables:
    """A click command (or group) that refuses its tool's old variable names before it reads any option,
    so an old name is named even where a required option would otherwise be reported missing.

    ``click.command(cls=Command, variables=VARIABLES)``.
    """

    def __init__(self, *args, variables: ToolVariables, **kwargs):
        super().__init__(*args, **kwargs)
        self.variables = variables

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        self.variables.refuse_old()
        return super().parse_args(ctx, args)


class Command(RefusingOldVariables, click.Command):
    """``click.Command`` that refuses its tool's old variable names."""


class Group(RefusingOldVariables, click.Group):
    """``click.Group`` that refuses its tool's old variable names."""
