"""Codebooks: the release file layout, distances, random-tiny codebooks, and k-means training."""

import pytest
import torch
from conftest import FIXTURES, load_fixture

from dpslm_utils import codebooks, deduplicate, dpdp, load_codebook, train_codebook
from dpslm_utils.checkpoints import CheckpointError, save_atomically

CODEBOOK_FILE = FIXTURES / "dpdp_codebook_k50_d32.pt"


def inertia(features, codebook):
    """Σ_n min_k ‖x_n − c_k‖² in float64, from scratch."""
    return torch.cdist(features.double(), codebook.double()).square().min(dim=1).values.sum().item()


# ---------------------------------------------------------------------------------------------
# Release layout
# ---------------------------------------------------------------------------------------------


def test_reads_the_release_layout():
    codebook = codebooks.codebook_from_checkpoint(CODEBOOK_FILE)
    expected = load_fixture("dpdp_fixture.pt")["cases"][0]["inputs"]["codebook"]
    assert codebook.dtype == torch.float32 and torch.equal(codebook, expected)


@pytest.mark.parametrize(
    "content, match",
    [
        (
            {"model": torch.zeros(3)},
            r"not a WavLM-codebooks k-means codebook checkpoint: "
            r"expected a dict with keys \['codebook'\], found \['model'\]",
        ),
        ([torch.zeros(2, 2)], "expected a dict with keys .* found list"),
        ({"codebook": torch.zeros(5)}, r"'codebook' must be a float tensor \[K, D\], found \[5\]"),
        ({"codebook": torch.zeros(5, 2, dtype=torch.long)}, r"must be a float tensor \[K, D\], found \[5, 2\]"),
        ({"codebook": "abc"}, "found str"),
    ],
)
def test_wrong_layout_is_a_clear_checkpoint_error(tmp_path, content, match):
    path = tmp_path / "not-a-codebook.pt"
    save_atomically(content, path)
    with pytest.raises(CheckpointError, match=match):
        codebooks.codebook_from_checkpoint(path)


def test_load_codebook_rejects_unreleased_sizes_and_layers():
    with pytest.raises(ValueError, match="no released codebook for k=300"):
        load_codebook(300)
    with pytest.raises(ValueError, match="layer 11 only, not layer 6"):
        load_codebook(500, layer=6)


def test_random_tiny_codebook_is_seeded_and_spreads_units(random_tiny):
    from dpslm_utils import WavLMEncoder, example_audio
    from dpslm_utils.random_tiny import WAVLM_CONFIG

    codebook = load_codebook(100)
    assert codebook.shape == (100, WAVLM_CONFIG["encoder_embed_dim"]) and codebook.dtype == torch.float32
    assert torch.equal(codebook, load_codebook(100))  # same seed, same codebook
    encoder = WavLMEncoder.from_pretrained()
    wav, sample_rate = example_audio("librispeech", official=False)
    # A bundled example at the paper's λ: many units, segments of a few frames (not one long run).
    features = encoder(wav, sample_rate)
    units = deduplicate(dpdp(features, codebook, 4500.0))[0]
    assert units.unique().numel() >= 20 and 5 <= units.numel() / (features.shape[0] / 50) <= 30  # units/s
    # Speech the centres were not drawn from (the recording played backwards), nearest centroids:
    units = deduplicate(dpdp(encoder(wav.flip(-1), sample_rate), codebook, 0.0))[0]
    assert units.unique().numel() >= 30


# ---------------------------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------------------------


def test_squared_distances_are_accurate_far_from_the_origin():
    generator = torch.Generator().manual_seed(0)
    features = 300.0 + torch.randn(64, 16, generator=generator)  # large common offset: ‖x‖² ≈ 1.4e6
    codebook = 300.0 + torch.randn(10, 16, generator=generator)
    exact = torch.cdist(features.double(), codebook.double()).square()
    distances = codebooks.squared_distances(features, codebook)
    assert distances.shape == (64, 10) and distances.min() >= 0
    torch.testing.assert_close(distances.double(), exact, atol=1e-4, rtol=1e-6)
    assert codebooks.squared_distances(codebook, codebook).diagonal().abs().max() < 1e-5


def test_nearest_in_blocks_equals_one_block(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    features, codebook = torch.randn(1000, 8, generator=generator), torch.randn(37, 8, generator=generator)
    exact = torch.cdist(features.double(), codebook.double()).square()
    monkeypatch.setattr(codebooks, "_DISTANCE_CHUNK_ELEMENTS", 37 * 64)  # 16 blocks of 64 rows
    indices, distances = codebooks.nearest(features, codebook)
    assert torch.equal(indices, exact.argmin(dim=1))
    torch.testing.assert_close(distances.double(), exact.min(dim=1).values, atol=1e-5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------


def blobs(seed=0, k=6, per_cluster=50, dim=5, spread=0.05):
    """``(features [k · per_cluster, dim], centres [k, dim])``: Gaussian clusters around centres ~ N(0, 10²)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.randn(k, dim, generator=generator)
    labels = torch.arange(k).repeat_interleave(per_cluster)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), centres


def test_recovers_well_separated_clusters():
    features, centres = blobs(k=12, dim=8)
    codebook = train_codebook(features, 12, seed=3)
    distances = torch.cdist(codebook, centres)
    assert codebook.shape == (12, 8)
    assert torch.equal(distances.argmin(dim=0).sort().values, torch.arange(12))  # one centre found per cluster
    assert distances.min(dim=0).values.max() < 0.05  # each within noise / sqrt(50) of the truth


def test_inertia_never_increases_and_training_is_seeded():
    features, _ = blobs(seed=4, k=20, per_cluster=30, dim=3, spread=2.0)  # overlapping: many Lloyd steps
    values = [inertia(features, train_codebook(features, 20, iterations=n, seed=7)) for n in range(12)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(values, values[1:]))
    assert values[-1] < 0.9 * values[0]
    assert torch.equal(train_codebook(features, 20, seed=7), train_codebook(features, 20, seed=7))
    seeded = [train_codebook(features, 20, iterations=0, seed=seed) for seed in (7, 8)]
    assert not torch.equal(*seeded)


def test_k_equal_to_n_and_duplicate_points():
    points = torch.randn(9, 4, generator=torch.Generator().manual_seed(5))
    assert inertia(points, train_codebook(points, 9)) == pytest.approx(0.0, abs=1e-9)
    repeated = points[:2].repeat(10, 1)  # 20 frames, only 2 distinct: the extra centres have nothing to split
    codebook = train_codebook(repeated, 5)
    assert codebook.shape == (5, 4) and torch.isfinite(codebook).all()
    assert inertia(repeated, codebook) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "features, k, iterations, error, match",
    [
        (torch.randn(5, 3), 6, 10, ValueError, r"cannot fit k=6 centres to only 5 feature vectors \(need k <= N\)"),
        (torch.randn(5, 3), 0, 10, ValueError, "k must be an integer >= 1, got 0"),
        (torch.randn(5, 3), 2.5, 10, TypeError, r"k must be an integer, got 2.5 \(float\)"),
        (torch.randn(5, 3), 2, -1, ValueError, "iterations must be an integer >= 0"),
        (torch.randn(5), 2, 10, ValueError, r"features must have shape \[N, D\]"),
        (torch.ones(5, 3).index_fill(0, torch.tensor([2]), float("nan")), 2, 10, ValueError, "NaN or infinite"),
        (torch.ones(5, 3, dtype=torch.long), 2, 10, TypeError, "floating-point"),
    ],
)
def test_training_rejects_bad_input(features, k, iterations, error, match):
    with pytest.raises(error, match=match):
        train_codebook(features, k, iterations=iterations)
