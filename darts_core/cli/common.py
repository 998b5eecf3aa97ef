"""What the local ``darts`` commands share: exit codes, error output, JSON files written atomically and
Ctrl-C as a cooperative stop. Imports no torch."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "console",
    "errors",
    "fail",
    "read_json_object",
    "stop_on_interrupt",
    "write_json",
    "write_text_atomically",
]

console = Console()
errors = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> typer.Exit:
    """Print ``message`` to stderr and return the exit (status 2) for the caller to raise."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=EXIT_BAD_INPUT)


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"{what} {path} cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise fail(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise fail(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


@contextmanager
def stop_on_interrupt() -> Iterator[list[bool]]:
    """Turn the first Ctrl-C into a cooperative stop flag (the search ends after the current step)."""
    flag = [False]

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        errors.print("stopping after the current step (Ctrl-C again to abort at once)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
