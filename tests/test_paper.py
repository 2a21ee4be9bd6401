"""The published numbers in dpslm_utils.paper: complete, ordered as DPDP implies, consistent across sources."""

import math

import pytest

from dpslm_utils import paper, registry


def test_figure4_has_exactly_the_released_pairs():
    assert sorted(paper.FIGURE4_RESYNTHESIS) == sorted(registry.VALID_COMBINATIONS)


@pytest.mark.parametrize("k", sorted(registry.VALID_LAMBDAS))
def test_figure4_bitrate_falls_as_lambda_rises(k):
    # a larger duration penalty gives fewer, longer units: the points were assigned to λ in this order
    rates = [paper.FIGURE4_RESYNTHESIS[k, lmbda][0] for lmbda in registry.VALID_LAMBDAS[k]]
    assert all(a > b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("k", sorted(registry.VALID_LAMBDAS))
def test_figure4_lambda_zero_matches_the_codebook_readme(k):
    # two independent publications of the same quantity: k-means (λ = 0) bitrate on the paper's data
    assert paper.FIGURE4_RESYNTHESIS[k, 0][0] == pytest.approx(paper.CODEBOOK_BITRATES[k], abs=0.5)


def test_figure4_rows_plot_ready():
    rows = paper.figure4_rows()
    assert len(rows) == 24
    assert {(r["k"], r["lmbda"]) for r in rows} == set(registry.VALID_COMBINATIONS)
    assert all(0 < r["wer"] < 100 and r["bits_per_second"] > 0 for r in rows)


def test_min_units_per_second_is_the_bitrate_over_the_largest_entropy():
    for k, bits_per_second in paper.CODEBOOK_BITRATES.items():
        bound = paper.min_units_per_second(k)
        assert bound * math.log2(k) == pytest.approx(bits_per_second)  # entropy of k units <= log2 k bits
        assert bound < 50  # fewer deduplicated units than WavLM's 50 frames per second


def test_closest_bitrate_pair_has_the_smallest_gap_of_any_two_coarse_pairs_of_different_k():
    small, large = paper.closest_bitrate_pair()
    assert small[0] < large[0] and small[1] > 0 and large[1] > 0
    gap = abs(paper.FIGURE4_RESYNTHESIS[small][0] - paper.FIGURE4_RESYNTHESIS[large][0])
    for a in registry.VALID_COMBINATIONS:
        for b in registry.VALID_COMBINATIONS:
            if a[0] < b[0] and a[1] > 0 and b[1] > 0:
                assert gap <= abs(paper.FIGURE4_RESYNTHESIS[a][0] - paper.FIGURE4_RESYNTHESIS[b][0])
