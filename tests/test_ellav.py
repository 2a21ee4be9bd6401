"""ELLA-V: prompts, prefill logits and every generate() output of the original, alignment, errors."""

import warnings

import pytest
import torch

from dpslm_utils import checkpoints
from dpslm_utils.checkpoints import CheckpointError
from dpslm_utils.ellav import ELLAV
from dpslm_utils.random_tiny import write_ellav
from dpslm_utils.transformer import pad_right, prefill

from conftest import FIXTURES, load_fixture

FIXTURE = load_fixture("ellav_fixture.pt")
PROMPTS = FIXTURE["inputs"]["prompts"]
EXPECTED = FIXTURE["expected"]
CONFIGS = {config["name"]: config for config in FIXTURE["inputs"]["generate_configs"]}
EXACT = [name for name, config in CONFIGS.items() if not config["informative"]]
STATS = FIXTURE["meta"]["generation_stats"]  # codec tokens per phone, counted by the fixture generator


@pytest.fixture(scope="module")
def ellav() -> ELLAV:
    return ELLAV.from_checkpoint(FIXTURES / "ellav_tiny.pt")


@pytest.fixture(scope="module")
def runs(ellav) -> dict:
    """generate() and generate_tokens() for every fixture config, once."""
    results = {}
    for name, config in CONFIGS.items():
        arguments = dict(
            max_tokens=config["max_tokens"], max_codec_tokens_per_phone=config["max_codec_tokens_per_phone"],
            temperature=config["temperature"], top_p=config["top_p"], seed=0, chunk_size=config["chunk_size"],
        )  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            codes, finished, alignments = ellav.generate(PROMPTS[config["prompts"]], **arguments)
        tokens, _ = ellav.generate_tokens(PROMPTS[config["prompts"]], **arguments)
        results[name] = dict(codes=codes, finished=finished, alignments=alignments, tokens=tokens, warnings=caught)
    return results


def test_reads_k_rates_and_special_ids_from_the_checkpoint(ellav):
    assert (ellav.k, ellav.unit_rate, ellav.codec_rate) == (50, 50.0, 40.0)
    assert (ellav.bos_id, ellav.eop_id, ellav.eos_id) == (1, 2, 3)
    assert not ellav.random_weights and "RANDOM" not in repr(ellav)


@pytest.mark.parametrize("name", ["batch", "single", "batch3"])
def test_encoded_prompts_equal_the_original(ellav, name):
    assert [ellav.encode(prompt).tolist() for prompt in PROMPTS[name]] == EXPECTED["encoded_prompts"][name]


@pytest.mark.parametrize("name", ["batch", "single", "batch3"])
def test_prefill_logits_equal_the_original(ellav, name):
    encoded = [ellav.encode(prompt) for prompt in PROMPTS[name]]
    _, last, _ = prefill(ellav.transformer, encoded, max_new_tokens=1)
    torch.testing.assert_close(last, EXPECTED["prefill_logits"][name]["last_token"], atol=1e-4, rtol=0)
    tokens, lengths = pad_right(encoded, ellav.transformer.device)
    with torch.no_grad():
        logits = ellav.transformer(tokens)
    every_position = torch.cat([row[:length] for row, length in zip(logits, lengths)])
    torch.testing.assert_close(every_position, EXPECTED["prefill_logits"][name]["all_positions"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", EXACT)
def test_greedy_generation_equals_the_original_exactly(runs, name):
    run, expected = runs[name], EXPECTED["generate"][name]
    assert [c.tolist() for c in run["codes"]] == [c.tolist() for c in expected["codec_ids"]]
    assert all(c.dtype == torch.long for c in run["codes"])
    assert run["finished"] == expected["finished"]
    assert [row.tolist() for row in run["tokens"]] == expected["raw_generated_ids"]
    assert (len(run["warnings"]) == 1) == expected["strict_warning"]


def test_running_out_of_max_tokens_warns(runs):
    (warning,) = runs["batch_greedy_t1_maxtokens25_unfinished"]["warnings"]
    assert "2 of 2 sequences did not reach their last unit within max_tokens=25" in str(warning.message)


@pytest.mark.parametrize("name", EXACT)
def test_alignment_counts_the_codec_tokens_of_each_unit(runs, name):
    for alignment, codes, expected in zip(runs[name]["alignments"], runs[name]["codes"], STATS[name]):
        counts = alignment.codec_counts.tolist()
        expected = expected["codec_tokens_per_phone"]
        assert counts[: len(expected)] == expected and not any(counts[len(expected) :])
        assert len(alignment.frame_units()) == len(codes)
        assert alignment.durations.sum().item() == pytest.approx(len(codes) / 40)


def test_alignment_units_are_the_deduplicated_prompt(runs):
    (alignment,) = runs["single_greedy_t1"]["alignments"]
    assert alignment.units.tolist() == [38, 10, 14, 0, 19, 37, 0, 41, 21]


def test_sampled_generation_respects_the_per_unit_maximum(runs):
    for alignment in runs["batch_sampled_t1_p08"]["alignments"]:
        assert alignment.codec_counts[0] <= 12 and alignment.codec_counts[1:].max() <= 11
    for alignment in runs["batch_greedy_t1_maxcodec3"]["alignments"]:
        assert alignment.codec_counts[0] <= 5 and alignment.codec_counts[1:].max() == 4


def test_prompts_as_ints_strings_framewise_or_single_give_the_same_codes(ellav, runs):
    expected = [c.tolist() for c in runs["single_greedy_t0"]["codes"]]
    framewise = PROMPTS["single"][0]
    as_ints = [int(name[1:]) for name in framewise]
    for prompts in (framewise, as_ints, torch.tensor(as_ints), [torch.unique_consecutive(torch.tensor(as_ints))]):
        codes, finished, _ = ellav.generate(prompts, max_tokens=400, temperature=0.0)
        assert [c.tolist() for c in codes] == expected and finished == [True]


def test_chunked_prefill_works_for_prompts_of_different_lengths(ellav, runs):
    codes, _, _ = ellav.generate(PROMPTS["batch3"], max_tokens=400, temperature=0.0, chunk_size=4)
    assert [c.tolist() for c in codes] == [c.tolist() for c in runs["batch3_greedy_t1"]["codes"]]


def test_sampling_is_seeded(ellav):
    first, again, other = (
        ellav.generate(PROMPTS["batch"], max_tokens=400, temperature=1.5, top_p=1.0, seed=seed)[0] for seed in (3, 3, 4)
    )
    assert [c.tolist() for c in first] == [c.tolist() for c in again] != [c.tolist() for c in other]


def test_an_empty_result_is_an_empty_long_tensor(ellav):
    with pytest.warns(UserWarning, match="did not reach their last unit"):
        codes, finished, _ = ellav.generate(PROMPTS["single"], max_tokens=1, temperature=0.0)  # first unit: EOP at once
    assert codes[0].dtype == torch.long and codes[0].shape == (0,) and finished == [False]


def test_uses_the_checkpoints_token_ids_not_a_recomputed_order(ellav):
    tokenizer = {**ellav.tokenizer, "token_to_id_dict": dict(ellav.tokenizer["token_to_id_dict"])}
    ids = tokenizer["token_to_id_dict"]
    ids["u1"], ids["u2"] = ids["u2"], ids["u1"]
    swapped = ELLAV(ellav.transformer, tokenizer)
    assert swapped.encode([1, 2]).tolist() == [16, 5, 1, 16]
    assert ellav.encode([1, 2]).tolist() == [5, 16, 1, 5]


@pytest.mark.parametrize(
    "prompts, error, message",
    [([], ValueError, "non-empty list"), ([[]], ValueError, "empty"), ([1, 50], ValueError, "outside \\[0, 50\\)"),
     ([-2], ValueError, "outside"), (["u50"], ValueError, "'u50' is not a unit"), (["x5"], ValueError, "'x5'"),
     (["u05"], ValueError, "'u05'"), (["u"], ValueError, "'u'"), ([[1.5, 2.0]], TypeError, "integer"),
     (None, ValueError, "prompts")],
)  # fmt: skip
def test_bad_prompts_are_rejected(ellav, prompts, error, message):
    with pytest.raises(error, match=message):
        ellav.generate(prompts, max_tokens=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_tokens": 0}, "max_tokens"), ({"max_codec_tokens_per_phone": -1}, "max_codec_tokens_per_phone"),
     ({"temperature": -0.5}, "temperature"), ({"top_p": 1.01}, "top_p")],
)  # fmt: skip
def test_bad_generation_arguments_are_rejected(ellav, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ellav.generate([1, 2, 3], **{"max_tokens": 5, **kwargs})


@pytest.mark.parametrize("name", ["ulm_tiny.pt", "wavlm_large_tiny.pt"])
def test_other_checkpoint_families_are_rejected(name):
    with pytest.raises(CheckpointError, match="not a ELLA-V checkpoint"):
        ELLAV.from_checkpoint(FIXTURES / name)


def test_random_tiny_matches_the_official_format_and_gives_varied_durations(monkeypatch, tmp_path):
    write_ellav(tmp_path / "tiny.pt", k=50)
    written = torch.load(tmp_path / "tiny.pt", weights_only=True)
    official = load_fixture("ellav_tiny.pt")
    assert written["tokenizer"] == official["tokenizer"]  # built as the original unit-training script does
    assert written["model_args"] == official["model_args"]
    shapes = [{name: tensor.shape for name, tensor in c["model_state"].items()} for c in (written, official)]
    assert shapes[0] == shapes[1]

    monkeypatch.setenv(checkpoints.WEIGHTS_ENV, "random-tiny")
    model = ELLAV.from_pretrained(500, 4500)
    assert model.random_weights and "RANDOM WEIGHTS" in repr(model) and model.k == 500
    units = torch.randint(0, 500, (40,), generator=torch.Generator().manual_seed(0))
    for temperature, top_p in ((0.0, 0.0), (1.0, 0.8)):
        _, finished, (alignment,) = model.generate(
            units, temperature=temperature, top_p=top_p, seed=0
        )
        assert finished == [True]
        assert len(alignment.codec_counts.unique()) >= 5  # neither always the maximum nor always zero
        assert 1.0 <= alignment.codec_counts.float().mean() <= 6.0


def test_the_inference_prompt_begins_the_training_example_and_generation_replays_the_rest(ellav, monkeypatch):
    """Training and inference share one sequence format (as in the original ``encode_train`` / ``encode_infer``): the
    prompt is the first n + 2 ids of the training example of n deduplicated units, and when the model predicts the
    example's next token at every step, generation's forcing (the next unit after each EOP, the end after the n-th)
    writes the example up to its last EOP."""
    from dpslm_utils import ellav as family

    for case in load_fixture("ellav_train_fixture.pt")["cases"]:
        example = family.ellav_example(case["frame_units"], case["codes"], ellav.tokenizer)
        n = len(ellav.deduplicated_units(case["frame_units"]))
        assert torch.equal(ellav.encode(case["frame_units"]), example.ids[: n + 2])
        rest = example.ids[n + 2 :].tolist()
        position = iter(range(len(rest)))
        monkeypatch.setattr(family, "sample", lambda *args, **kwargs: torch.tensor([rest[next(position)]]))
        tokens, finished = ellav.generate_tokens(case["frame_units"], max_tokens=len(rest), max_codec_tokens_per_phone=1000)
        last_eop = len(rest) - 1 - rest[::-1].index(ellav.eop_id)
        assert finished.tolist() == [True] and tokens[0].tolist() == rest[:last_eop]
