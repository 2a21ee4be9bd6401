"""The notebooks' exercise cells: check the learner's own answer, stand in for their recordings, gate costly solutions.

A check cell names what the exercise asked the learner to define, and what it must be::

    check(globals(), "token_budget", 71, label="exercise 5")                        # a value
    check(globals(), "unit_read_as", cases=[(2, 10), (3, 100)], label="exercise 6")  # a function on known cases

It prints one line (right, what is wrong, or that the name is not defined yet) and returns True only when the
answer is right. It never raises: under "Run All", and under nbval in CI, nothing is answered yet and the notebook
must go on. A solution cell passes its own answers as a dict, ``assert check(solution, "token_budget", 71)``, so
that it checks itself without overwriting the learner's names.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .audio import example_audio, load_mono
from .checkpoints import using_random_weights

_MISSING = object()


def check(answers: Mapping[str, Any], name: str, expected: Any = _MISSING, *, cases: Iterable[tuple[Any, Any]] = (),
          label: str = "", hint: str = "", tolerance: float = 1e-6) -> bool:
    """Whether ``answers[name]`` (pass ``globals()``) is right; prints one line saying so, whatever the answer.

    ``expected``: the value (numbers agree to ``tolerance``, relative or absolute; lists, tuples, tensors and
    arrays element by element; dicts key by key), or a function of the answer that returns True when it is right.
    ``cases``: ``(arguments, result)`` pairs for a function answer; a tuple of arguments is spread, anything else
    is the one argument. ``hint`` is printed after a wrong value (a function's failing case speaks for itself).
    """
    cases = list(cases)
    if not cases and expected is _MISSING:
        raise TypeError("check() needs an expected value or cases")  # a mistake in the notebook, not the learner's
    prefix = f"{label}: " if label else ""
    if name not in answers:
        print(f"… {prefix}`{name}` is not defined yet: write it in a new cell as the exercise asks, run that cell, "
              "then run this one again.")
        return False
    answer = answers[name]
    if cases:
        verdict = _check_function(answer, name, cases, tolerance)
    else:
        verdict = _check_value(answer, name, expected, tolerance, hint)
    print(f"{'✓' if verdict is None else '✗'} {prefix}{verdict or f'`{name}` is right.'}")
    return verdict is None


def _check_value(answer: Any, name: str, expected: Any, tolerance: float, hint: str) -> str | None:
    """None when right, else what to tell the learner."""
    try:
        right = bool(expected(answer)) if callable(expected) else _same(answer, expected, tolerance)
    except Exception as error:  # the learner's value may be of any type: say what went wrong, do not stop
        return f"checking `{name}` = {_short(answer)} failed with {type(error).__name__}: {error}"
    if right:
        return None
    return f"`{name}` = {_short(answer)} is not right yet." + (f" Hint: {hint}" if hint else "")


def _check_function(answer: Any, name: str, cases: list[tuple[Any, Any]], tolerance: float) -> str | None:
    """None when ``answer`` gives every case's result, else the first failing case."""
    if not callable(answer):
        return f"`{name}` should be a function, but it is {_short(answer)}."
    for arguments, result in cases:
        arguments = arguments if isinstance(arguments, tuple) else (arguments,)
        call = f"{name}({', '.join(_short(a) for a in arguments)})"
        try:
            got = answer(*arguments)
        except Exception as error:
            return f"`{call}` raised {type(error).__name__}: {error}"
        try:
            right = _same(got, result, tolerance)
        except Exception as error:
            return f"`{call}` returned {_short(got)}, which could not be compared with {_short(result)} ({error})"
        if not right:
            return f"`{call}` returned {_short(got)}, expected {_short(result)}."
    return None


def _plain(value: Any) -> Any:
    """Tensors and numpy arrays or scalars as Python numbers and lists; everything else as it is."""
    return value.tolist() if hasattr(value, "tolist") else value


def _same(answer: Any, expected: Any, tolerance: float) -> bool:
    answer, expected = _plain(answer), _plain(expected)
    if isinstance(expected, bool) or isinstance(answer, bool):
        return answer is expected
    if isinstance(expected, numbers.Number):
        return isinstance(answer, numbers.Number) and math.isclose(answer, expected, rel_tol=tolerance, abs_tol=tolerance)
    if isinstance(expected, (list, tuple)):
        return (isinstance(answer, (list, tuple)) and len(answer) == len(expected)
                and all(_same(a, e, tolerance) for a, e in zip(answer, expected)))
    if isinstance(expected, Mapping):
        return (isinstance(answer, Mapping) and set(answer) == set(expected)
                and all(_same(answer[key], expected[key], tolerance) for key in expected))
    return answer == expected


def _short(value: Any, width: int = 60) -> str:
    text = repr(_plain(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def your_recording(path: str | Path, example: str) -> tuple[torch.Tensor, int]:
    """Mono audio ``([1, samples], sample_rate)`` from the learner's file ``path``, or, while there is none, the
    package's example recording ``example`` (``"librispeech"``, ``"manufacture"``, ``"manufelture"``); says which."""
    if Path(path).is_file():
        wav, sample_rate = load_mono(path)
        print(f"your recording {path}: {wav.shape[-1] / sample_rate:.2f} s at {sample_rate} Hz")
        return wav, sample_rate
    print(f"{path} not found: using the example recording {example!r} instead (record yours, then run this again)")
    return example_audio(example)  # mono


def solution_runs(cost: str, run: bool = False) -> bool:
    """Whether a costly solution cell runs: always with random-tiny weights (seconds, and CI checks the code), with
    the released weights only with ``run=True``; otherwise says what it ``cost`` s and how to run it."""
    if run or using_random_weights():
        return True
    print(f"Not run with the released weights: this solution {cost}. "
          "Change run=False to run=True in this cell to run it.")
    return False

