"""The project's own error types: every message is written for the person who supplied the input.

Messages name the file (its base name only) and the problem, and never contain patient identifiers.
"""

from __future__ import annotations


class RobustMDiffError(Exception):
    """Base class: a problem the user can act on. `str(err)` is safe to show in the app."""


class InputError(RobustMDiffError):
    """Bad user input: `source` names the file or field, `problem` says what is wrong with it."""

    kind = "input"

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}" if source else problem)


class ScanError(InputError):
    kind = "scan"


class NoteError(InputError):
    kind = "note"


class LabError(InputError):
    """`refused`: lab name → why its value was refused, when the table gave values none of which could be used
    (so a page can show those labs as refused rather than as assumed)."""

    kind = "labs"

    def __init__(self, source: str, problem: str, refused: dict[str, str] | None = None):
        super().__init__(source, problem)
        self.refused = dict(refused or {})


class SpecError(InputError):
    kind = "dataset spec"


class ManifestError(InputError):
    kind = "manifest"


class NoModalityError(RobustMDiffError):
    """A case with nothing to predict from: refusing is better than guessing."""


class CheckpointError(RobustMDiffError):
    """A checkpoint that is missing, unreadable, incompatible or damaged (its checksums do not match)."""
