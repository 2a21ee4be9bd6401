"""Unit LM: fixture log-likelihoods and logits from the original Mistral-ULM, generation, errors."""


import numpy as np
import pytest
import torch

from dpslm_utils import checkpoints
from dpslm_utils.checkpoints import CheckpointError
from dpslm_utils.ulm import UnitLM

from conftest import FIXTURES, load_fixture

FIXTURE = load_fixture("ulm_fixture.pt")
UNITS = FIXTURE["inputs"]["units"]
EXPECTED = FIXTURE["expected"]


@pytest.fixture(scope="module")
def ulm() -> UnitLM:
    return UnitLM.from_checkpoint(FIXTURES / "ulm_tiny.pt")


def test_loads_the_checkpoint_with_k_and_without_random_weights(ulm):
    assert ulm.k == 50 and not ulm.random_weights
    assert "RANDOM" not in repr(ulm) and "k=50" in repr(ulm)


def test_tokenize_adds_bos_and_shifts_units_by_one(ulm):
    for units, ids in zip(UNITS, EXPECTED["ids"]):
        assert torch.equal(ulm.tokenize(units), ids)


def test_logits_equal_the_original(ulm):
    for units, expected in zip(UNITS, EXPECTED["logits"]):
        torch.testing.assert_close(ulm.logits(units), expected, atol=1e-4, rtol=0)


def test_loglikelihood_equals_the_original_single_and_batched(ulm):
    singles = [ulm.loglikelihood(units) for units in UNITS]
    batched = ulm.loglikelihood_batch(UNITS)
    for single, batch, expected in zip(singles, batched, EXPECTED["loglikelihood"]):
        assert single == pytest.approx(expected, rel=1e-4)
        assert batch == pytest.approx(single, abs=1e-4)
    assert ulm.loglikelihood_batch(UNITS[::-1] * 3, batch_size=2) == pytest.approx(batched[::-1] * 3, abs=1e-4)


def test_accepts_lists_tensors_and_numpy_arrays(ulm):
    expected = EXPECTED["loglikelihood"][1]
    for units in (UNITS[1], torch.tensor(UNITS[1]), np.array(UNITS[1], dtype=np.int32), tuple(UNITS[1])):
        assert ulm.loglikelihood(units) == pytest.approx(expected, rel=1e-4)


def test_surprisal_is_minus_log_probability_of_each_unit_in_nats(ulm):
    units = UNITS[0]
    surprisal = ulm.surprisal(units)
    expected = -torch.log_softmax(EXPECTED["logits"][0], -1)[torch.arange(len(units)), torch.tensor(units) + 1]
    torch.testing.assert_close(surprisal, expected, atol=1e-4, rtol=0)
    assert surprisal.sum().item() == pytest.approx(-EXPECTED["loglikelihood"][0], rel=1e-4)


@torch.no_grad()
def naive_greedy(ulm: UnitLM, prompt: list[int], count: int) -> list[int]:
    """Recompute the whole sequence every step, no cache; BOS is never chosen."""
    ids = [0] + [u + 1 for u in prompt]
    for _ in range(count):
        logits = ulm.transformer(torch.tensor([ids]))[0, -1]
        logits[0] = float("-inf")
        ids.append(int(logits.argmax()))
    return [i - 1 for i in ids[len(prompt) + 1 :]]


def test_greedy_generation_equals_a_naive_loop_without_cache(ulm):
    prompt = UNITS[1][:6]
    rows = ulm.generate(prompt, max_new_units=30, temperature=0.0, n=2)
    expected = naive_greedy(ulm, prompt, 30)
    assert [row.tolist() for row in rows] == [expected, expected]
    assert ulm.generate([], 5, temperature=0.0)[0].tolist() == naive_greedy(ulm, [], 5)


def test_sampling_is_seeded_and_rows_differ(ulm):
    first = ulm.generate(UNITS[0][:4], 25, n=3, seed=7)
    again = ulm.generate(UNITS[0][:4], 25, n=3, seed=7)
    other = ulm.generate(UNITS[0][:4], 25, n=3, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert len({tuple(row.tolist()) for row in first}) == 3
    assert all(row.dtype == torch.long and row.shape == (25,) for row in first)


def test_generation_never_emits_bos(ulm):
    # at temperature 50 the distribution is nearly uniform: an unmasked BOS (unit -1) would show up
    rows = torch.stack(ulm.generate([3], 200, temperature=50.0, n=4, seed=0))
    assert rows.min() >= 0 and rows.max() < ulm.k
    assert len(rows.unique()) > 40


@pytest.mark.parametrize(
    "units, error, message",
    [([], ValueError, "empty"), ([1, 50], ValueError, "outside \\[0, 50\\)"), ([-1], ValueError, "outside"),
     ([1.0, 2.0], TypeError, "integer"), (["u1"], TypeError, "integer"), ([True], TypeError, "integer"),
     (torch.tensor([1.0]), TypeError, "integer"), (torch.tensor([[1, 2]]), ValueError, "one sequence"),
     ("u1 u2", TypeError, "list or 1-D tensor"), (7, TypeError, "list or 1-D tensor")],
)  # fmt: skip
def test_bad_units_are_rejected(ulm, units, error, message):
    with pytest.raises(error, match=message):
        ulm.loglikelihood(units)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_new_units": 0}, "max_new_units"), ({"n": 0}, "n must"), ({"temperature": -1.0}, "temperature"),
     ({"top_p": 1.2}, "top_p"), ({"top_k": 0}, "top_k")],
)  # fmt: skip
def test_bad_generation_arguments_are_rejected(ulm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ulm.generate([1, 2], **{"max_new_units": 3, **kwargs})


@pytest.mark.parametrize("name", ["ellav_tiny.pt", "wavlm_large_tiny.pt", "dpdp_codebook_k50_d32.pt"])
def test_other_checkpoint_families_are_rejected(name):
    with pytest.raises(CheckpointError, match="not a Mistral-ULM unit LM checkpoint"):
        UnitLM.from_checkpoint(FIXTURES / name)


def test_random_tiny_is_seeded_in_the_official_format_and_flagged(monkeypatch, tmp_path):
    monkeypatch.setenv(checkpoints.WEIGHTS_ENV, "random-tiny")
    first, second = UnitLM.from_pretrained(100, 600), UnitLM.from_pretrained(100, 600)
    assert first.random_weights and "RANDOM WEIGHTS" in repr(first) and first.k == 100
    assert first.loglikelihood([1, 2, 3]) == second.loglikelihood([1, 2, 3])
    assert UnitLM.from_pretrained(500, 4500, hours="60k").k == 500

    from dpslm_utils.random_tiny import write_unit_lm

    write_unit_lm(tmp_path / "tiny.pt", k=100)
    written = torch.load(tmp_path / "tiny.pt", weights_only=True)
    official = load_fixture("ulm_tiny.pt")
    assert written.keys() == official.keys()
    assert written["model_args"].keys() == official["model_args"].keys()
    assert written["model_state_dict"].keys() == official["model_state_dict"].keys()


def test_from_pretrained_rejects_unreleased_combinations():
    with pytest.raises(ValueError, match="lmbda"):
        UnitLM.from_pretrained(100, 700)
    with pytest.raises(ValueError, match="60k"):
        UnitLM.from_pretrained(100, 600, hours="60k")


def test_a_training_utterance_is_what_inference_reads_and_its_loss_is_the_mean_surprisal(ulm):
    """Training and inference share one format: the tokens of a framewise utterance are the model's tokens of its
    deduplicated units, and the validation loss of the whole utterance is the mean surprisal of its units but the first."""
    from dpslm_utils import training
    from dpslm_utils.batches import PackedBatch
    from dpslm_utils.ulm import chunk_loss_mask, tokenize_units

    fixture = load_fixture("ulm_train_fixture.pt")
    for frame_units in fixture["utterances_framewise"]:
        units = torch.unique_consecutive(torch.as_tensor(frame_units))
        ids = tokenize_units(frame_units)
        assert torch.equal(ids, ulm.tokenize(units))
        batch = PackedBatch.pack([ids], [chunk_loss_mask(len(ids))])
        loss, count = training._PackedLoss(ulm.transformer, -100)(batch.src_ids, batch.tgt_ids, batch.loss_mask, batch.seqlens)
        assert int(count) == len(units) - 1
        torch.testing.assert_close(loss, ulm.surprisal(units)[1:].mean(), rtol=1e-5, atol=1e-6)
