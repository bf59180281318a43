"""The one exception type of hmedit.

Every user mistake (bad YAML, a missing asset, a wrong-sized mask, a model that is not there) is raised as
an ``HmeditError``; the CLI turns it into one line ``file:line:col: field: problem (hint)`` and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Location:
    """Where in a user's file a problem is: all parts optional."""

    file: str | Path | None = None
    line: int | None = None
    column: int | None = None
    field: str | None = None

    def prefix(self) -> str:
        parts = []
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            parts.append(where)
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)


class HmeditError(Exception):
    """A user-facing error: a problem, where it is, and how to fix it."""

    exit_code = 2

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.location = Location(file, line, column, field)
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        prefix = self.location.prefix()
        text = f"{prefix}: {self.problem}" if prefix else self.problem
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass
class Diagnostics:
    """Errors and warnings collected while validating, so that a user sees all problems at once."""

    errors: list[HmeditError] = field(default_factory=list)
    warnings: list[HmeditError] = field(default_factory=list)

    def error(self, problem: str, **where) -> None:
        self.errors.append(HmeditError(problem, **where))

    def warn(self, problem: str, **where) -> None:
        self.warnings.append(HmeditError(problem, **where))

    def raise_if_errors(self) -> None:
        """Raise the first error; the rest ride along in ``.others`` for a CLI that lists them all."""
        if self.errors:
            first = self.errors[0]
            first.others = self.errors[1:]  # type: ignore[attr-defined]
            raise first
