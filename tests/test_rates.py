"""lambda_for_rate and rate_distortion: closed-form cases, and the toy language with weight-free features."""

import pytest
import torch

import dpslm_utils
from dpslm_utils import lambda_for_rate, rate_distortion


@pytest.fixture(scope="module")
def toy_fbank():
    """Log-mel features of 100 toy training utterances (about 130 s) and the shipped log-mel codebook."""
    encoder = dpslm_utils.feature_encoder("fbank")
    utterances = dpslm_utils.load_toy_language(max_train=100).train
    return [encoder(*dpslm_utils.load_audio(u.path)) for u in utterances], dpslm_utils.feature_codebook("fbank")


def _rate(features, codebook, lmbda, num_neighbors=None) -> float:
    return dpslm_utils.bitrate(dpslm_utils.dpdp_batch(features, codebook, lmbda, num_neighbors)).units_per_second


# -- a closed-form case: two 5-frame halves, two entries ------------------------------------------

STEP = torch.tensor([[0.0]] * 5 + [[1.0]] * 5)  # 10 frames = 0.2 s at 50 Hz
TWO = torch.tensor([[0.0], [1.0]])
"""λ < 5: two segments (10 units/s), no distortion. λ > 5: one segment (5 units/s); merging costs 5 frames × 1²."""


def test_closed_form_rates_and_distortions():
    low, high = rate_distortion(STEP, TWO, [4.0, 6.0])
    assert (low.units_per_second, low.distortion, low.entropy_bits, low.bits_per_second) == (10.0, 0.0, 1.0, 10.0)
    assert (high.units_per_second, high.distortion, high.entropy_bits) == (5.0, 0.5, 0.0)
    assert (low.lmbda, high.lmbda) == (4.0, 6.0)


def test_closed_form_lambda_for_rate():
    assert lambda_for_rate(STEP, TWO, 10.0) == 0.0  # the λ = 0 rate itself
    lmbda = lambda_for_rate(STEP, TWO, 5.0)
    assert lmbda >= 5.0 and _rate([STEP], TWO, lmbda) == 5.0
    with pytest.raises(ValueError, match=r"no λ gives 7.5 ± 0.075 units/s: the rate jumps from 10.000 to 5.000 units/s at λ ≈ 5"):
        lambda_for_rate(STEP, TWO, 7.5)
    assert lambda_for_rate(STEP, TWO, 7.5, rtol=0.5) in (0.0, pytest.approx(lmbda))  # 10 and 5 are both within 50 %


def test_unreachable_rates_are_refused_with_the_reachable_range():
    with pytest.raises(ValueError, match=r"11 units/s is above the highest rate of these features: 10.00 units/s at λ = 0"):
        lambda_for_rate(STEP, TWO, 11.0)
    with pytest.raises(ValueError, match=r"2 units/s is below the lowest rate of these features: 5.00 units/s, at least one unit per utterance \(1 in 0.2 s\)"):
        lambda_for_rate(STEP, TWO, 2.0)
    with pytest.raises(ValueError, match="units_per_second must be > 0"):
        lambda_for_rate(STEP, TWO, 0.0)
    with pytest.raises(ValueError, match="no frames"):
        lambda_for_rate([], TWO, 5.0)
    with pytest.raises(ValueError, match="dimension D = 1 but the codebook entries have D = 2"):
        lambda_for_rate(STEP, torch.zeros(3, 2), 5.0)


def test_a_restricted_search_can_keep_frames_from_sharing_a_unit():
    """With one neighbour per frame each half must keep its own entry: 2 units is the floor, not 1."""
    with pytest.raises(ValueError, match=r"below the lowest rate of these features: 10.00 units/s.*num_neighbors=1"):
        lambda_for_rate(STEP, TWO, 5.0, num_neighbors=1)


# -- the toy language with log-mel features --------------------------------------------------------


@pytest.mark.parametrize("target", [5.0, 12.0, 20.0])
def test_lambda_for_rate_hits_the_rate_within_its_tolerance(target, toy_fbank):
    features, codebook = toy_fbank
    lmbda = lambda_for_rate(features, codebook, target)
    assert abs(_rate(features, codebook, lmbda) - target) <= 0.01 * target


def test_lambda_for_rate_with_the_papers_restricted_search(toy_fbank):
    features, codebook = toy_fbank
    lmbda = lambda_for_rate(features, codebook, 20.0, num_neighbors=5, rtol=0.005)
    assert abs(_rate(features, codebook, lmbda, num_neighbors=5) - 20.0) <= 0.1


def test_on_the_toy_language_rate_falls_and_distortion_rises_as_lambda_grows(toy_fbank):
    features, codebook = toy_fbank
    points = rate_distortion(features, codebook, [0.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0])
    rates = [p.units_per_second for p in points]
    bits = [p.bits_per_second for p in points]
    distortions = [p.distortion for p in points]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    assert bits == sorted(bits, reverse=True)
    assert distortions == sorted(distortions) and len(set(distortions)) == len(distortions)
    # λ = 0 is plain nearest-entry quantisation: its distortion is the mean nearest squared distance per dimension
    nearest = torch.cat([torch.cdist(x, codebook).min(dim=1).values.square() for x in features])
    assert points[0].distortion == pytest.approx(nearest.mean().item() / codebook.shape[1], rel=1e-4)


def test_rate_is_monotone_in_lambda_on_a_fine_grid(toy_fbank):
    features, codebook = toy_fbank
    rates = [_rate(features[:20], codebook, lmbda) for lmbda in torch.logspace(0, 4.5, 25).tolist()]
    assert rates == sorted(rates, reverse=True)
