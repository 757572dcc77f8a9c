"""One error type for everything a user can get wrong.

Entry points catch `UserError` and print its message as a single line with exit
code 2 (see `cli.run_guarded`), so bad input never shows a Python traceback.
Library code raises it wherever the cause is the user's input (a flag, a gin
binding, a path, a checkpoint that does not fit) and the message says what to do.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user: shown as one line, exit code 2."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean X?)' suffix for unknown-name errors, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one UserError line (exit code 2 via
    `cli.run_guarded`) instead of printing the whole usage text and exiting itself, and that
    takes flags only by their full names (as absl, T5X's flag library, does): `--metric`
    must not quietly mean `--metrics`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message}; see '{self.prog} --help'")
