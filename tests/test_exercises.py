"""dpslm_utils.exercises: the notebooks' check cells test the learner's own answer and never stop the notebook."""

import math

import numpy as np
import pytest
import soundfile
import torch

from dpslm_utils.exercises import check, solution_runs, your_recording


def test_a_name_not_defined_yet_says_so_and_fails(capsys):
    assert check({}, "token_budget", 71, label="exercise 5") is False
    out = capsys.readouterr().out
    assert out.startswith("… exercise 5: `token_budget` is not defined yet") and out.count("\n") == 1


@pytest.mark.parametrize("answer, expected", [
    (71, 71), (0.1 + 0.2, 0.3), (torch.tensor(6), 6), (np.int64(500), 500), ([1, 2, 2, 3], [1, 2, 2, 3]),
    (torch.tensor([1, 2, 2, 3]), [1, 2, 2, 3]), ((0, 1, 500), [0, 1, 500]), ({"a": 1.0}, {"a": 1}),
    (math.log2(100), torch.tensor(100.0).log2()), (True, True), ("u10", "u10"),
])
def test_right_values_pass_whatever_their_type(answer, expected, capsys):
    assert check({"x": answer}, "x", expected) is True
    assert capsys.readouterr().out == "✓ `x` is right.\n"


@pytest.mark.parametrize("answer, expected", [
    (70, 71), (0.31, 0.3), ([1, 2, 2], [1, 2, 2, 3]), ([1, 2, 3, 2], [1, 2, 2, 3]), ("71", 71), (1, True),
    (True, 1), ({"a": 1}, {"a": 1, "b": 2}), (None, 500), (torch.tensor([1, 2]), 3),
])
def test_wrong_values_fail_with_the_learners_value_and_the_hint(answer, expected, capsys):
    assert check({"x": answer}, "x", expected, label="exercise 1", hint="count the EOPs.") is False
    out = capsys.readouterr().out
    assert out.startswith("✗ exercise 1: `x` = ") and "is not right yet. Hint: count the EOPs.\n" in out


def test_a_predicate_decides_and_its_error_is_reported_not_raised(capsys):
    assert check({"lmbda": 3000}, "lmbda", lambda value: value % 1000 == 0) is True
    assert check({"lmbda": 2500}, "lmbda", lambda value: value % 1000 == 0) is False
    assert check({"lmbda": "many"}, "lmbda", lambda value: value > 0) is False
    assert "failed with TypeError" in capsys.readouterr().out.splitlines()[-1]


def frames(n):
    return n // 320


def test_a_function_is_run_on_every_case(capsys):
    cases = [(639, 1), (640, 2), (959, 2), (960, 3)]
    assert check({"frames": frames}, "frames", cases=cases, label="exercise 5") is True
    assert capsys.readouterr().out == "✓ exercise 5: `frames` is right.\n"
    assert check({"frames": lambda n: n // 320 + (n == 960)}, "frames", cases=cases) is False
    assert capsys.readouterr().out == "✗ `frames(960)` returned 4, expected 3.\n"


def test_a_tuple_of_arguments_is_spread():
    cap = lambda k, n: math.log2(min(k, n))  # noqa: E731
    assert check({"cap": cap}, "cap", cases=[((500, 100), math.log2(100)), ((2, 2), 1.0)]) is True
    assert check({"first": lambda pair: pair[0]}, "first", cases=[(((3, 4),), 3)]) is True


def test_a_function_that_raises_or_is_no_function_fails_without_raising(capsys):
    assert check({"f": lambda n: 1 / n}, "f", cases=[(0, 1)]) is False
    assert capsys.readouterr().out == "✗ `f(0)` raised ZeroDivisionError: division by zero\n"
    assert check({"f": 42}, "f", cases=[(0, 1)]) is False
    assert capsys.readouterr().out == "✗ `f` should be a function, but it is 42.\n"
    assert check({"f": lambda n: torch.ones(2)}, "f", cases=[(0, 1)]) is False
    assert capsys.readouterr().out == "✗ `f(0)` returned [1.0, 1.0], expected 1.\n"


def test_long_values_are_shortened_in_the_message(capsys):
    check({"x": list(range(1000))}, "x", [0])
    line = capsys.readouterr().out
    assert len(line) < 120 and "…" in line


def test_a_check_without_expected_value_is_a_mistake_in_the_notebook():
    with pytest.raises(TypeError, match="expected value or cases"):
        check({}, "x")


def test_your_recording_reads_the_learners_file_as_mono(tmp_path, capsys):
    path = tmp_path / "me.wav"
    soundfile.write(path, np.stack([np.full(800, 0.5), np.full(800, 0.1)], axis=1), 8000, subtype="FLOAT")
    wav, sample_rate = your_recording(path, "manufacture")
    assert sample_rate == 8000 and wav.shape == (1, 800) and torch.allclose(wav, torch.full((1, 800), 0.3))
    assert capsys.readouterr().out.startswith(f"your recording {path}: 0.10 s at 8000 Hz")


def test_your_recording_falls_back_to_the_example_and_says_so(tmp_path, capsys):
    from dpslm_utils.audio import example_audio

    wav, sample_rate = your_recording(tmp_path / "missing.wav", "manufacture")
    expected, expected_rate = example_audio("manufacture")
    assert sample_rate == expected_rate and torch.equal(wav, expected)
    assert "missing.wav not found: using the example recording 'manufacture'" in capsys.readouterr().out


def test_costly_solutions_run_with_random_weights_or_when_asked(monkeypatch, capsys):
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    assert solution_runs("loads two more unit LMs") is True
    monkeypatch.setenv("DPSLM_WEIGHTS", "pretrained")
    assert solution_runs("loads two more unit LMs", run=True) is True
    assert capsys.readouterr().out == ""
    assert solution_runs("loads two more unit LMs") is False
    assert capsys.readouterr().out == ("Not run with the released weights: this solution loads two more unit LMs. "
                                       "Change run=False to run=True in this cell to run it.\n")
