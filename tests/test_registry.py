import re

import pytest

import dpslm_utils
from dpslm_utils import paper, registry

# The table in the paper / UPSTREAM_FACTS.md, written out independently of registry.VALID_LAMBDAS.
PAPER_GRID = {
    100: [0, 600, 1500, 3000, 5000, 9000],
    200: [0, 700, 1500, 3000, 5000, 7500],
    500: [0, 600, 1500, 2800, 4500, 7000],
    1000: [0, 600, 1400, 2500, 3800, 6000],
}


def test_valid_combinations_are_the_24_released_pairs():
    expected = {(k, lmbda) for k, lmbdas in PAPER_GRID.items() for lmbda in lmbdas}
    assert set(dpslm_utils.VALID_COMBINATIONS) == expected
    assert len(dpslm_utils.VALID_COMBINATIONS) == 24


@pytest.mark.parametrize("k, lmbda", [(500, 4500), (100, 9000), (1000, 0), (200, 7500.0)])
def test_check_combination_accepts_released_pairs(k, lmbda):
    assert dpslm_utils.check_combination(k, lmbda) == (k, int(lmbda))


def test_check_combination_names_the_valid_lambdas_for_k():
    with pytest.raises(ValueError, match=r"k=500.*\[0, 600, 1500, 2800, 4500, 7000\]"):
        dpslm_utils.check_combination(500, 5000)


@pytest.mark.parametrize("k", [50, 2000, 0])
def test_check_combination_names_the_valid_k(k):
    with pytest.raises(ValueError, match=r"valid k are \[100, 200, 500, 1000\]"):
        dpslm_utils.check_combination(k, 0)


@pytest.mark.parametrize("lmbda", [4500.5, "4500", None, True])
def test_check_combination_rejects_non_numbers_and_off_grid(lmbda):
    with pytest.raises(ValueError):
        dpslm_utils.check_combination(500, lmbda)


def test_every_file_hash_prefix_is_the_suffix_of_its_name():
    files = registry.all_files()
    assert len(files) == 1 + 5 + 24 + 3 + 24 + 1 + 2 + 3
    for f in files:
        assert f.url.startswith("https://github.com/nicolvisser/")
        if f.sha256 is not None and len(f.sha256) < 64:
            assert re.search(rf"[-_]{f.sha256}\.\w+$", f.filename), f.filename
    assert len({f.url for f in files}) == len(files)


def test_named_files_match_the_published_names():
    assert registry.unit_lm_file(500, 4500).filename == "mistral-ulm-k-500-lmbda-4500-hours-1k-steps-10k-9b75c46e.pt"
    assert registry.unit_lm_file(500, 4500, hours="60k").sha256 == "09759305"
    assert registry.ellav_file(1000, 3800).filename == "ella-v-wavlm-layer-11-k-1000-lmbda-3800-clean-10k-40hz-d286d597.pt"
    assert registry.codebook_file(2000).sha256 == "af7a6260"
    assert registry.wavtokenizer_file().filename == "WavTokenizer_small_600_24k_4096_d44c40fb.ckpt"
    assert registry.WAVLM_LARGE.sha256 == "6fb4b3c3"


def test_bad_registry_lookups_raise_clear_errors():
    with pytest.raises(ValueError, match="60k-hours unit LM exists only for k=500, lmbda=4500"):
        registry.unit_lm_file(100, 0, hours="60k")
    with pytest.raises(ValueError, match="hours must be"):
        registry.unit_lm_file(500, 4500, hours="10k")
    with pytest.raises(ValueError, match="layer 11 only"):
        registry.codebook_file(500, layer=6)
    with pytest.raises(ValueError, match="unknown WavTokenizer"):
        registry.wavtokenizer_file("large")
    with pytest.raises(ValueError, match="valid lmbda for k=100"):
        registry.ellav_file(100, 4500)


def test_example_hashes_are_full_sha256():
    for f in registry.OFFICIAL_EXAMPLES.values():
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)


def test_class_files_hold_everything_the_two_class_sessions_load():
    files = registry.class_files()
    assert len(files) == len(set(files)) and set(files) <= set(registry.all_files())
    expected = {registry.WAVLM_LARGE, *registry.WAVTOKENIZER_FILES.values(), *registry.OFFICIAL_EXAMPLES.values()}
    expected |= {registry.codebook_file(k) for k in registry.CODEBOOK_SIZES}  # notebook 07 sweeps them all
    pairs = [(500, lmbda) for lmbda in registry.VALID_LAMBDAS[500]] + list(paper.closest_bitrate_pair())
    expected |= {registry.unit_lm_file(k, lmbda) for k, lmbda in pairs}
    expected |= {registry.ellav_file(k, lmbda) for k, lmbda in pairs}  # 07's listening grid: every λ of k = 500 + its pair
    assert set(files) == expected
