"""`toroid.grid.parse_grid`, the one parser of `start:stop:count` and comma lists."""

from __future__ import annotations

import pytest

from toroid.errors import InvalidArgumentError
from toroid.grid import parse_grid


def test_a_range_has_round_values_and_exact_ends() -> None:
    values = parse_grid("0:0.5:11")
    assert len(values) == 11 and all(type(v) is float for v in values)
    assert values[0] == 0.0 and values[-1] == 0.5
    assert values[3] == 0.15 and values[6] == 0.3  # numpy.linspace: 0.15000000000000002, ...
    assert values == tuple(0.5 * i / 10 for i in range(11))


def test_the_last_value_is_stop_even_where_the_formula_rounds_away() -> None:
    assert 0.1 + (0.41 - 0.1) != 0.41  # the formula alone would end at 0.40999999999999998
    values = parse_grid("0.1:0.41:3")
    assert values == (0.1, 0.1 + (0.41 - 0.1) / 2, 0.41)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" 0 : 1 : 3 ", (0.0, 0.5, 1.0)),
        ("0.2:0.7:1", (0.2,)),
        ("1:0:3", (1.0, 0.5, 0.0)),  # order and range are the caller's to check
        ("0,0.1,0.2", (0.0, 0.1, 0.2)),
        (" 0 , 0.25 ,1 ", (0.0, 0.25, 1.0)),
        ("0.3", (0.3,)),
        ("-1e-3,2", (-0.001, 2.0)),
    ],
)
def test_ranges_and_lists(text: str, expected: tuple[float, ...]) -> None:
    assert parse_grid(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "start:stop:count"),
        ("0:1", "start:stop:count"),
        ("0:1:2:3", "start:stop:count"),
        ("0:1:2.5", "start:stop:count"),
        ("a,b", "comma list"),
        ("0,,1", "comma list"),
        ("0:1:0", "count must be at least 1, got 0"),
        ("0,nan", "finite"),
        ("0:inf:3", "finite"),
    ],
)
def test_bad_input_names_the_value_in_one_line(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_grid(text, name="flip_probs")
    message = str(info.value)
    assert message.startswith("flip_probs") and repr(text) in message and needle in message
    assert "\n" not in message
