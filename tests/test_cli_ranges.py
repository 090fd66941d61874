"""Range and type errors of integer options, in the wording of edgefx's own checks.

Typer words its own checks as pydantic does ("Input should be greater than or equal
to 32"). Every option states its range in the same form as --sigma instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from cli_helpers import run_edgefx

from edgefx.cli import app


def command_options() -> Iterator[tuple[str, Any]]:
    """Yield (command path, option) for every option of every edgefx command."""

    def walk(command: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, subcommand in subcommands.items():
                yield from walk(subcommand, [*path, name])
            return
        for parameter in command.params:
            if parameter.opts[0].startswith("-"):
                yield " ".join(path), parameter

    yield from walk(typer.main.get_command(app), [])


def bounded_options() -> list[tuple[str, Any]]:
    """Options with a lower or upper bound, except counted flags such as -v."""
    return [
        (command, option)
        for command, option in command_options()
        if not getattr(option, "count", False)
        and (option.min is not None or option.max is not None)
    ]


def test_bounded_options_found() -> None:
    names = {(command, option.opts[0]) for command, option in bounded_options()}

    assert ("denoise", "--tile") in names
    assert ("classify", "--top-k") in names
    assert ("train enhance", "--deep-filter") in names


@pytest.mark.parametrize(
    ("command", "option"),
    bounded_options(),
    ids=[f"{command} {option.opts[0]}" for command, option in bounded_options()],
)
def test_option_range_wording(command: str, option: Any) -> None:
    parser = option.type_descriptor.parameter_info.parser
    assert parser is not None, "the option has no parser of its own"
    low, high = option.min, option.max
    if high is None:
        expected = f"at least {low:g}"
    elif low is None:
        expected = f"at most {high:g}"
    else:
        expected = f"from {low:g} to {high:g}"
    outside = low - 1 if low is not None else high + 1

    with pytest.raises(typer.BadParameter) as raised:
        parser(str(outside))

    assert raised.value.message == (
        f"{outside} is out of range: give an integer {expected}"
    )
    with pytest.raises(typer.BadParameter) as raised:
        parser("2.5")
    assert raised.value.message == "'2.5' is not an integer"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["denoise", "IN", "--out", "OUT", "--tile", "10"],
            "Invalid value for '--tile': 10 is out of range: give an integer at "
            "least 32",
        ),
        (
            ["denoise", "IN", "--out", "OUT", "--quality", "0"],
            "Invalid value for '--quality': 0 is out of range: give an integer from "
            "1 to 100",
        ),
        (
            ["classify", "IN", "--top-k", "0"],
            "Invalid value for '--top-k' / '-k': 0 is out of range: give an integer "
            "at least 1",
        ),
        (
            ["denoise", "IN", "--out", "OUT", "--tile", "big"],
            "Invalid value for '--tile': 'big' is not an integer",
        ),
    ],
    ids=["tile-10", "quality-0", "top-k-0", "tile-big"],
)
def test_cli_range_errors(
    samples_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    photo = samples_dir / "noisy" / "camera.png"
    substitutes = {"IN": str(photo), "OUT": str(tmp_path / "out")}

    result = run_edgefx(*(substitutes.get(arg, arg) for arg in args))

    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Input should" not in result.stderr
    assert not (tmp_path / "out").exists()
