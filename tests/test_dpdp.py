"""DPDP quantisation: the original's outputs (fixtures), exhaustive search on small problems, batching,
the straight-through quantizer, run-length encoding and bitrate in closed form, and input errors.
The recursion is tested both ways: numpy (the reference) and numba-compiled (skipped without numba)."""

import math

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_fixture

from dpslm_utils import DPDPQuantizer, bitrate, deduplicate, dpdp, dpdp_batch, dpdp_cost, quantize
from dpslm_utils.checkpoints import RANDOM_WEIGHTS_MESSAGE

FIXTURE = load_fixture("dpdp_fixture.pt")
CASES = {case["name"]: case for case in FIXTURE["cases"]}
QUANTIZER_CASES = {case["name"]: case for case in FIXTURE["hub_quantizer_cases"]}
NO_NUMBA = "numba is not installed (pip install '.[numba]'), so the compiled DPDP recursion is not tested"


@pytest.fixture(params=["numpy", "numba"])
def recursion(request, monkeypatch):
    """Run the test with the numpy recursion, then with the numba-compiled one."""
    if request.param == "numba" and quantize._compiled_viterbi() is None:
        pytest.skip(NO_NUMBA)
    monkeypatch.setenv(quantize.NUMBA_ENV, "1" if request.param == "numba" else "0")
    return request.param


def objective(features, codebook, units, lmbda):
    """Σ_t ‖x_t − c_{u_t}‖² + λ · segments in float64, from scratch."""
    squared_errors = (features.double() - codebook.double()[units]).square().sum().item()
    return squared_errors + lmbda * torch.unique_consecutive(units).numel()


# ---------------------------------------------------------------------------------------------
# The original implementation's answers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_reproduces_the_original(name, recursion):
    inputs, expected = CASES[name]["inputs"], CASES[name]["expected"]
    units = dpdp(inputs["features"], inputs["codebook"], inputs["lmbda"], inputs["num_neighbors"])
    assert units.dtype == torch.int64 and units.shape == expected["units"].shape
    assert torch.equal(units, expected["units"])
    assert objective(inputs["features"], inputs["codebook"], units, inputs["lmbda"]) == pytest.approx(
        expected["cost_optimum_f64_check"], rel=1e-9
    )
    assert torch.equal(deduplicate(units)[0], expected["units_deduplicated"])


def test_batch_reproduces_the_original_in_one_call(recursion):
    cases = [case for case in CASES.values() if case["inputs"]["codebook"].shape[0] == 50]
    for lmbda in (0.0, 20.0, 600.0):
        group = [case for case in cases if case["inputs"]["lmbda"] == lmbda and case["inputs"]["num_neighbors"] is None]
        units = dpdp_batch([case["inputs"]["features"] for case in group], group[0]["inputs"]["codebook"], lmbda)
        assert all(torch.equal(u, case["expected"]["units"]) for u, case in zip(units, group, strict=True))


@pytest.mark.parametrize("name", QUANTIZER_CASES)
def test_quantizer_reproduces_the_original_module(name, recursion):
    inputs, expected = QUANTIZER_CASES[name]["inputs"], QUANTIZER_CASES[name]["expected"]
    quantizer = DPDPQuantizer(inputs["codebook"], inputs["lmbda"], inputs["num_neighbors"])
    assert (quantizer.k, quantizer.lmbda, quantizer.num_neighbors) == (50, inputs["lmbda"], inputs["num_neighbors"])
    features = inputs["features"].clone().requires_grad_(True)
    quantized, units = quantizer(features)
    assert torch.equal(units, expected["indices"])
    torch.testing.assert_close(quantized, expected["quantized_features"], atol=1e-6, rtol=0)
    quantized.square().sum().backward()  # straight through: d quantized / d features = identity
    torch.testing.assert_close(features.grad, 2 * quantized.detach())


def test_quantizer_from_checkpoint_reads_the_release_layout():
    case = CASES["main_lmbda35_nnNone"]
    quantizer = DPDPQuantizer.from_checkpoint(FIXTURES / "dpdp_codebook_k50_d32.pt", lmbda=35.0)
    assert torch.equal(quantizer.codebook, case["inputs"]["codebook"]) and not quantizer.random_weights
    assert torch.equal(quantizer(case["inputs"]["features"])[1], case["expected"]["units"])
    assert "RANDOM" not in repr(quantizer) and "k=50, dim=32, lmbda=35" in repr(quantizer)
    assert dict(quantizer.named_buffers()).keys() == {"codebook"} and not list(quantizer.parameters())


def test_quantizer_from_pretrained_random_tiny_is_marked(random_tiny):
    quantizer = DPDPQuantizer.from_pretrained(k=100, lmbda=4500)
    assert quantizer.random_weights and RANDOM_WEIGHTS_MESSAGE in repr(quantizer)
    assert quantizer.codebook.shape == (100, 64)


# ---------------------------------------------------------------------------------------------
# Exhaustive search: every unit sequence of a small problem
# ---------------------------------------------------------------------------------------------


def exhaustive(distances, lmbda):
    """(optimal cost, the optimum the original picks) over all K^T unit sequences of distances [T, K].

    The original's choice among equally cheap answers, read from the end: the longest last segment,
    then its lowest unit, then the same for what precedes it.
    """
    num_frames, k = distances.shape
    sequences = torch.cartesian_prod(*[torch.arange(k)] * num_frames).reshape(-1, num_frames)
    segments = 1 + (sequences[:, 1:] != sequences[:, :-1]).sum(dim=1)
    costs = distances.gather(1, sequences.T).sum(dim=0) + lmbda * segments
    optimum = costs.min()

    def original_preference(sequence):
        units, durations = torch.unique_consecutive(sequence, return_counts=True)
        return [(-d, u) for u, d in zip(units.flip(0).tolist(), durations.flip(0).tolist())]

    return optimum.item(), min(sequences[costs == optimum], key=original_preference)


def test_finds_the_exact_optimum_of_small_random_problems(recursion):
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        num_frames, k, dim = int(torch.randint(1, 8, (1,), generator=generator)), 1 + trial % 4, 3
        features = torch.randn(num_frames, dim, generator=generator, dtype=torch.float64)
        codebook = torch.randn(k, dim, generator=generator, dtype=torch.float64)
        lmbda = [0.0, 0.5, 2.0, 10.0][trial % 4]
        num_neighbors = None if trial % 3 else int(torch.randint(1, k + 1, (1,), generator=generator))
        distances = torch.cdist(features, codebook).square()
        if num_neighbors is not None:  # frame t may use only its N nearest entries
            distances.scatter_(1, distances.argsort(dim=1)[:, num_neighbors:], math.inf)
        optimum, expected = exhaustive(distances, lmbda)
        units = dpdp(features, codebook, lmbda, num_neighbors)
        assert objective(features, codebook, units, lmbda) == pytest.approx(optimum, rel=1e-9)
        assert torch.equal(units, expected)


def test_ties_are_broken_like_the_original(recursion):
    # Integer features and K a power of two: every distance, and so every tie, is exact in floating point.
    generator = torch.Generator().manual_seed(1)
    for trial in range(150):
        num_frames, k = int(torch.randint(1, 8, (1,), generator=generator)), [1, 2, 4][trial % 3]
        features = torch.randint(-1, 2, (num_frames, 2), generator=generator).double()
        codebook = torch.randint(-1, 2, (k, 2), generator=generator).double()
        lmbda = float(trial % 4)
        _, expected = exhaustive(torch.cdist(features, codebook).square().round(), lmbda)
        assert torch.equal(dpdp(features, codebook, lmbda), expected), (features, codebook, lmbda)


def random_distances(generator, num_frames, k, dtype, ties, num_neighbors):
    """A ``[T, K]`` distance matrix: small integers when ``ties`` (many exact ties), else continuous;
    with ``num_neighbors`` the other entries of every frame are +inf."""
    if ties:
        distances = generator.integers(0, 4, (num_frames, k)).astype(dtype)
    else:
        distances = generator.exponential(10.0, (num_frames, k)).astype(dtype)
    if num_neighbors is not None:
        farthest = generator.permuted(np.tile(np.arange(k), (num_frames, 1)), axis=1)[:, num_neighbors:]
        np.put_along_axis(distances, farthest, np.inf, axis=1)
    return distances


def test_compiled_recursion_gives_the_numpy_units():
    if quantize._compiled_viterbi() is None:
        pytest.skip(NO_NUMBA)
    from dpslm_utils.viterbi_numba import viterbi

    generator = np.random.default_rng(3)
    for trial in range(240):
        num_frames, k = [0, 1, 2, 5, 40, 300][trial % 6], [1, 2, 7, 8, 9, 70][trial // 6 % 6]
        ties = trial % 3 == 0
        lmbda = float(trial % 4) if ties else [0.0, 3.0, 25.0, 1e6][trial % 4]
        num_neighbors = int(generator.integers(1, k + 1)) if trial % 5 == 0 else None
        dtype = np.float32 if trial % 2 else np.float64
        distances = random_distances(generator, num_frames, k, dtype, ties, num_neighbors)
        expected = quantize._viterbi_numpy(distances, lmbda)
        units = viterbi(distances, lmbda)
        assert units.dtype == np.int64 and np.array_equal(units, expected), (trial, distances, lmbda)


def test_numba_env_switches_the_recursion(monkeypatch):
    if quantize._compiled_viterbi() is None:
        pytest.skip(NO_NUMBA)
    numpy_calls = []
    reference = quantize._viterbi_numpy
    monkeypatch.setattr(quantize, "_viterbi_numpy", lambda *args: numpy_calls.append(1) or reference(*args))
    inputs, expected = CASES["main_lmbda35_nnNone"]["inputs"], CASES["main_lmbda35_nnNone"]["expected"]
    for setting, calls in (("0", 1), ("1", 1), (None, 1), (" 0 ", 2)):
        if setting is None:
            monkeypatch.delenv(quantize.NUMBA_ENV, raising=False)
        else:
            monkeypatch.setenv(quantize.NUMBA_ENV, setting)
        assert torch.equal(dpdp(inputs["features"], inputs["codebook"], inputs["lmbda"]), expected["units"])
        assert len(numpy_calls) == calls, setting


# ---------------------------------------------------------------------------------------------
# Limits, batching, devices
# ---------------------------------------------------------------------------------------------


def test_lambda_zero_gives_nearest_centroids_and_huge_lambda_one_segment(recursion):
    inputs = CASES["main_lmbda0_nnNone"]["inputs"]
    features, codebook = inputs["features"], inputs["codebook"]
    distances = torch.cdist(features.double(), codebook.double()).square()
    assert torch.equal(dpdp(features, codebook, 0.0), distances.argmin(dim=1))
    single = dpdp(features, codebook, 1e9)
    assert torch.equal(single, torch.full_like(single, int(distances.sum(dim=0).argmin())))


def test_segment_count_never_grows_with_lambda():
    inputs = CASES["main_lmbda0_nnNone"]["inputs"]
    lmbdas = range(0, 400, 10)
    counts = [deduplicate(dpdp(inputs["features"], inputs["codebook"], lmbda))[0].numel() for lmbda in lmbdas]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_batch_equals_one_by_one_with_any_lengths(monkeypatch, recursion):
    generator = torch.Generator().manual_seed(2)
    codebook = torch.randn(16, 8, generator=generator)
    utterances = [
        codebook[torch.randint(16, (n,), generator=generator)] + torch.randn(n, 8, generator=generator)
        for n in (37, 0, 1, 120, 5, 64)
    ]
    for num_neighbors in (None, 3):
        single = [dpdp(x, codebook, 4.0, num_neighbors) for x in utterances]
        for max_cells in (1 << 24, 16 * 64):  # one distance matrix, or several
            monkeypatch.setattr(quantize, "_MAX_DISTANCE_CELLS", max_cells)
            batch = dpdp_batch(utterances, codebook, 4.0, num_neighbors)
            assert all(torch.equal(a, b) for a, b in zip(batch, single, strict=True))
    assert dpdp_batch([], codebook, 1.0) == []


def test_empty_utterance_gives_empty_units(recursion):
    units = dpdp(torch.zeros(0, 4), torch.randn(3, 4), 1.0)
    assert units.dtype == torch.int64 and units.shape == (0,)


def test_float64_and_float32_inputs_agree(recursion):
    case = CASES["main_lmbda50_nn5"]
    inputs = case["inputs"]
    units = dpdp(inputs["features"].double(), inputs["codebook"].double(), inputs["lmbda"], inputs["num_neighbors"])
    assert torch.equal(units, case["expected"]["units"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_give_cuda_units_equal_to_cpu():
    case = CASES["main_lmbda35_nnNone"]
    inputs = case["inputs"]
    units = dpdp(inputs["features"].cuda(), inputs["codebook"].cuda(), inputs["lmbda"])
    assert units.device.type == "cuda" and torch.equal(units.cpu(), case["expected"]["units"])
    quantized, _ = DPDPQuantizer(inputs["codebook"], inputs["lmbda"]).cuda()(inputs["features"].cuda())
    assert quantized.device.type == "cuda"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

X, C = torch.randn(10, 4), torch.randn(5, 4)


@pytest.mark.parametrize(
    "features, codebook, lmbda, num_neighbors, error, match",
    [
        (X[0], C, 1.0, None, ValueError, r"features must have shape \[N, D\] \(2-D\), got shape \[4\]"),
        (X[None], C, 1.0, None, ValueError, r"features must have shape \[N, D\]"),
        (X.numpy(), C, 1.0, None, TypeError, "features must be a torch.Tensor"),
        (X.long(), C, 1.0, None, TypeError, "features must be a floating-point tensor"),
        (torch.randn(10, 3), C, 1.0, None, ValueError, "dimension D = 3 but the codebook entries have D = 4"),
        (X.index_fill(0, torch.tensor([3]), math.nan), C, 1.0, None, ValueError, "features contains NaN or infinite"),
        (X.index_fill(0, torch.tensor([3]), math.inf), C, 1.0, None, ValueError, "features contains NaN or infinite"),
        (X, C.index_fill(0, torch.tensor([1]), math.nan), 1.0, None, ValueError, "codebook contains NaN"),
        (X.index_fill(0, torch.tensor([3]), 3e38), C, 1.0, None, ValueError, "features has values too large to use"),
        (torch.full((3, 4), 1e20), torch.tensor([[1e20, -1e20] * 2, [0.0] * 4]), 1.0, None, ValueError,
         "features and codebook have values too large to use: their squared distances overflow float32"),
        (X, torch.zeros(0, 4), 1.0, None, ValueError, r"codebook is empty \(K = 0"),
        (X, C, -1.0, None, ValueError, r"lmbda \(the duration penalty λ\) must be >= 0, got -1"),
        (X, C, math.nan, None, ValueError, "must be finite, got nan"),
        (X, C, math.inf, None, ValueError, "must be finite, got inf"),
        (X, C, "5", None, TypeError, r"lmbda .* must be a number, got '5' \(str\)"),
        (X, C, True, None, TypeError, r"must be a number, got True \(bool\)"),
        (X, C, 1.0, 0, ValueError, r"num_neighbors must be an integer from 1 to 5, got 0"),
        (X, C, 1.0, 6, ValueError, r"from 1 to 5, got 6"),
        (X, C, 1.0, 2.5, TypeError, r"num_neighbors must be an integer, got 2.5 \(float\)"),
    ],
)
def test_bad_inputs_are_rejected_clearly(features, codebook, lmbda, num_neighbors, error, match):
    with pytest.raises(error, match=match):
        dpdp(features, codebook, lmbda, num_neighbors)


def test_batch_and_quantizer_errors_name_the_problem():
    with pytest.raises(TypeError, match="takes a list of .* for a single utterance use dpdp"):
        dpdp_batch(X, C, 1.0)
    with pytest.raises(ValueError, match=r"features\[1\] have dimension D = 3"):
        dpdp_batch([X, torch.randn(2, 3)], C, 1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        DPDPQuantizer(C, -5.0)
    with pytest.raises(ValueError, match=r"from 1 to 5, got 9"):
        DPDPQuantizer(C, 5.0, num_neighbors=9)
    with pytest.raises(ValueError, match="dimension D = 3"):
        DPDPQuantizer(C, 5.0)(torch.randn(7, 3))


# ---------------------------------------------------------------------------------------------
# Run-length encoding and bitrate
# ---------------------------------------------------------------------------------------------


def test_deduplicate_is_run_length_encoding():
    units, durations = deduplicate(torch.tensor([3, 3, 7, 3, 3, 3, 0]))
    assert units.tolist() == [3, 7, 3, 0] and durations.tolist() == [2, 1, 3, 1]
    expected = CASES["main_lmbda35_nnNone"]["expected"]
    units, durations = deduplicate(expected["units"])
    assert torch.equal(units, expected["units_deduplicated"]) and durations.sum() == 200
    assert torch.equal(units.repeat_interleave(durations), expected["units"])
    empty = deduplicate(torch.zeros(0, dtype=torch.long))
    assert empty[0].numel() == empty[1].numel() == 0


def test_deduplicate_rejects_non_unit_tensors():
    with pytest.raises(ValueError, match=r"1-D tensor of per-frame units \[T\], got shape \[2, 2\]"):
        deduplicate(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer unit indices, got dtype torch.float32"):
        deduplicate(torch.zeros(3))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        deduplicate([1, 2])


def test_bitrate_in_closed_form():
    # Runs of two frames over four equally frequent units at 50 Hz: 25 units/s × log2(4) = 50 bit/s.
    rate = bitrate(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3] * 5))
    assert (rate.units_per_second, rate.entropy_bits, rate.bits_per_second) == (25.0, 2.0, 50.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 bits; 4 segments in 8 frames at 100 Hz = 50 units/s.
    rate = bitrate([torch.tensor([5, 5, 1, 1]), torch.tensor([5, 5, 9, 9])], frame_rate=100.0)
    assert (rate.units_per_second, rate.entropy_bits, rate.bits_per_second) == (50.0, 1.5, 75.0)
    # Runs do not continue across utterances; one unit carries no information.
    rate = bitrate([torch.tensor([4, 4]), torch.tensor([4])])
    assert (rate.units_per_second, rate.entropy_bits, rate.bits_per_second) == (2 / (3 / 50), 0.0, 0.0)


def test_bitrate_falls_with_lambda():
    inputs = CASES["main_lmbda0_nnNone"]["inputs"]
    rates = [bitrate(dpdp(inputs["features"], inputs["codebook"], lmbda)) for lmbda in (0.0, 35.0, 600.0)]
    assert rates[0].units_per_second == 50 * 113 / 200 and rates[1].units_per_second == 50 * 24 / 200
    assert rates[0].bits_per_second > rates[1].bits_per_second > rates[2].bits_per_second > 0


@pytest.mark.parametrize(
    "utterances, frame_rate, error, match",
    [
        ([], 50.0, ValueError, "no frames"),
        (torch.zeros(0, dtype=torch.long), 50.0, ValueError, "no frames"),
        (torch.zeros(3, dtype=torch.long), 0.0, ValueError, "frame_rate must be a positive number"),
        (torch.zeros(3, dtype=torch.long), math.nan, ValueError, "frame_rate must be a positive number"),
        (torch.zeros(3, dtype=torch.long), "50", TypeError, "frame_rate must be a number"),
        ([torch.zeros(3, dtype=torch.long), torch.zeros(3)], 50.0, TypeError, r"utterances\[1\] must hold integer"),
    ],
)
def test_bitrate_rejects_bad_input(utterances, frame_rate, error, match):
    with pytest.raises(error, match=match):
        bitrate(utterances, frame_rate)


def test_dpdp_cost_splits_the_objective_into_distortion_and_penalty():
    for case in FIXTURE["cases"][:6]:
        inputs, expected = case["inputs"], case["expected"]
        distortion, penalty = dpdp_cost(inputs["features"], inputs["codebook"], expected["units"], inputs["lmbda"])
        assert penalty == inputs["lmbda"] * expected["num_segments"]
        assert distortion + penalty == pytest.approx(expected["cost"], rel=1e-9)
    with pytest.raises(ValueError, match="units has 3 frames but features has 200"):
        dpdp_cost(inputs["features"], inputs["codebook"], expected["units"][:3], 1.0)
