"""Checks of command-line values made before a long run starts, so that a bad one fails at once, not after it.

Each returns None when the value is fine, else the message, in the form
``--flag: expected ..., got ...``; the command prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile

from gru._io import names_a_directory, special_file

__all__ = ["accept_negative_values", "figure_path", "number_error", "output_error"]


def accept_negative_values(parser: argparse.ArgumentParser) -> None:
    """Let values such as ``-1,2,3,4`` or ``-1e-3`` reach their option's check, which names the option.

    argparse takes them for unknown options ("expected one argument"), as its
    matcher of negative numbers knows only plain ones; none of our options
    starts with ``-`` and a digit, so anything that does is a value.
    """
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-\.?\d")


def number_error(flag: str, value: float, minimum: float, kind: str = "an integer", above: bool = False) -> str | None:
    """Why ``value`` is not a finite number >= ``minimum`` (> with ``above``), or None."""
    if math.isfinite(value) and (value > minimum if above else value >= minimum):
        return None
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{flag}: expected {kind} {'>' if above else '>='} {minimum:g}, got {shown}"


def output_error(path: str, flag: str) -> str | None:
    """Why ``path`` cannot be written, or None; missing directories above it count as fine (they are made).

    Tried for real (a temporary file beside it, then removed), because
    permission bits say nothing about virtual or read-only file systems, or to root.
    """
    target = os.path.abspath(path)
    if names_a_directory(path):
        return f"{flag}: expected a file name, got the directory {path!r}"
    kind = special_file(target)
    if kind is not None:  # opening a FIFO to probe it would block until something reads it
        return f"{flag}: expected a regular file (or a new one), got {kind}: {path!r}"
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{flag}: cannot write {path!r}: {parent!r} is a file, not a directory"
    try:
        if os.path.exists(target):
            open(target, "ab").close()  # appends nothing: the file stays as it is
        else:
            fd, probe = tempfile.mkstemp(dir=parent, prefix=".gru-write-check-")
            os.close(fd)
            os.remove(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if not os.path.exists(target):
            reason = f"cannot create files in {parent!r} ({reason})"
        return f"{flag}: cannot write {path!r}: {reason}"
    return None


def _figure_formats() -> list[str] | None:
    """The file formats matplotlib saves, or None without matplotlib (the figure step then says so)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return None
    return sorted(FigureCanvasBase.get_supported_filetypes())


def figure_path(path: str, flag: str) -> tuple[str, str | None]:
    """The file a figure goes to and why it cannot, or None.

    matplotlib adds ``.png`` to a name without a suffix; the path returned
    has it, so that the command names the file it wrote.
    """
    if not path or names_a_directory(path):  # matplotlib would write DIR/.png.png
        return path, f"{flag}: expected a file name, got the directory {path!r}"
    ext = os.path.splitext(path)[1]
    if not ext:
        path += ".png"
    else:
        formats = _figure_formats()
        if formats is not None and ext[1:].lower() not in formats:
            suffixes = ", ".join("." + f for f in formats)
            return path, f"{flag}: expected a file name ending in one of {suffixes}, got {path!r}"
    return path, output_error(path, flag)
