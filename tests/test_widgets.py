"""The ipywidgets explorers: default view drawn at once, controls recompute, codebooks cached."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dpslm_utils import deduplicate, dpdp, widgets  # noqa: E402


class FakeEncoder:
    """Features that hold one value for 10 frames, then another: [40, 4]."""

    frame_rate = 50

    def __call__(self, wav, sample_rate, layer=11):
        assert layer == 11
        generator = torch.Generator().manual_seed(0)
        means = torch.randn(4, 4, generator=generator) * 3
        return means.repeat_interleave(10, dim=0) + 0.3 * torch.randn(40, 4, generator=generator)


@pytest.fixture
def codebooks(monkeypatch):
    """load_codebook replaced by seeded random codebooks [k, 4]; records every load."""
    loads = []

    def fake_load_codebook(k, layer=11, device=None):
        loads.append(k)
        return torch.randn(k, 4, generator=torch.Generator().manual_seed(k)) * 3

    monkeypatch.setattr(widgets, "load_codebook", fake_load_codebook)
    return loads


def boundary_lines(explorer):
    ax = explorer.figure.axes[0]
    return [line for line in ax.get_lines() if np.ptp(line.get_xdata()) == 0]


def test_default_view_is_drawn_without_callbacks(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=100, lmbda=50, ks=(100, 200))
    features = FakeEncoder()(None, None)
    expected = dpdp(features, widgets.load_codebook(100), 50)
    assert torch.equal(explorer.units, expected)
    segments = deduplicate(expected)[0].numel()
    assert len(boundary_lines(explorer)) == segments
    assert f"{segments} segments" in explorer.summary and "units/s" in explorer.summary
    assert len(explorer.figure.axes) == 2  # segmentation + duration histogram


def test_controls_recompute_and_codebooks_are_cached(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=100, lmbda=0, ks=(100, 200))
    segments_at_zero = deduplicate(explorer.units)[0].numel()
    explorer.lmbda_slider.value = 5000  # fires the observer, as a slider move does
    assert explorer.lmbda == 5000
    assert deduplicate(explorer.units)[0].numel() < segments_at_zero
    explorer.k_dropdown.value = 200
    explorer.k_dropdown.value = 100
    explorer.k_dropdown.value = 200
    assert codebooks == [100, 200]  # each k loaded once
    assert "k = 200, λ = 5000" in explorer.summary


def test_released_pairs_are_named(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=500, lmbda=4500, ks=(500,))
    assert "Released unit LM and ELLA-V exist" in explorer.summary
    explorer.lmbda_slider.value = 4600
    assert "No released" in explorer.summary and "4500" in explorer.summary


def test_neighbor_fraction_sets_num_neighbors(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=200, ks=(100, 200),
                                    lmbda=0, neighbor_fraction=0.05)
    assert explorer.num_neighbors == 10
    with pytest.raises(ValueError, match="not one of"):
        widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=300, ks=(100, 200))


def test_show_displays_controls_figure_and_summary(codebooks, capsys):
    explorer = widgets.dpdp_explorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=100, lmbda=0, ks=(100,))
    assert explorer._figure_handle is not None and explorer._text_handle is not None
    explorer.lmbda_slider.value = 300  # updates the displayed outputs in place, no error outside a notebook
    assert widgets.figure_png(explorer.figure).startswith(b"\x89PNG")


# -- notebook 07: KLambdaExplorer -------------------------------------------------------------


class FakePipeline:
    """Stands in for DPSLM: synthesize gives every unit two codes; records the units it was given."""

    def __init__(self, pair):
        self.pair, self.calls = pair, []

    def synthesize(self, units, n=1, temperature=1.0, top_p=0.8, seed=None):
        from dpslm_utils.ellav import Alignment
        from dpslm_utils.pipeline import Synthesis

        self.calls.append(units.clone())
        counts = torch.full_like(units, 2)
        codes = torch.arange(2 * len(units)) % 4096
        wav = torch.randn(600 * len(codes), generator=torch.Generator().manual_seed(0)) * 0.1
        return [Synthesis(wav, 24000, codes, Alignment(units, counts, 40.0), True)] * n


@pytest.fixture
def factory():
    built = []

    def build(k, lmbda):
        built.append((k, lmbda))
        return FakePipeline((k, lmbda))

    build.built = built
    return build


def k_lambda_explorer(factory, k=500, lmbda=4500):
    return widgets.KLambdaExplorer(torch.zeros(1, 12800), 16000, FakeEncoder()(None, None), k=k, lmbda=lmbda,
                                   pipeline_factory=factory)


def test_k_lambda_explorer_draws_the_default_view_and_loads_no_pipeline(codebooks, factory):
    explorer = k_lambda_explorer(factory)
    expected = dpdp(FakeEncoder()(None, None), widgets.load_codebook(500), 4500)
    assert torch.equal(explorer.units, expected)
    units = deduplicate(expected)[0]
    assert len(boundary_lines(explorer)) == len(units)
    assert f"{len(units)} units" in explorer.summary and "units/s" in explorer.summary and "bits/s" in explorer.summary
    assert " ".join(f"u{u}" for u in units.tolist()) in explorer.summary
    assert factory.built == [] and explorer.synthesis_figure is None and "resynthesize" in explorer.status


def test_changing_k_keeps_the_position_of_lambda_and_redraws_once(codebooks, factory):
    explorer = k_lambda_explorer(factory)  # λ = 4500 is the 5th of k = 500's values
    redraws = []
    original_redraw = explorer.redraw
    explorer.redraw = lambda: (redraws.append(explorer.pair), original_redraw())
    explorer.k_dropdown.value = 100
    assert explorer.pair == (100, 5000) and redraws == [(100, 5000)]
    assert list(explorer.lmbda_dropdown.options) == [0, 600, 1500, 3000, 5000, 9000]
    explorer.lmbda_dropdown.value = 0
    explorer.k_dropdown.value = 500
    explorer.k_dropdown.value = 100
    assert redraws[1:] == [(100, 0), (500, 0), (100, 0)] and "k = 100, λ = 0" in explorer.summary
    assert codebooks == [500, 100]  # each codebook loaded once
    assert torch.equal(explorer.units, dpdp(FakeEncoder()(None, None), widgets.load_codebook(100), 0))


def test_resynthesize_loads_each_pair_once_and_speaks_the_deduplicated_units(codebooks, factory):
    explorer = k_lambda_explorer(factory, k=200, lmbda=0)
    synthesis = explorer.resynthesize()
    pipeline = explorer.pipelines[(200, 0)]
    (given,) = pipeline.calls
    assert torch.equal(given, deduplicate(explorer.units)[0])
    assert explorer.syntheses[(200, 0)] is synthesis and explorer.synthesis_figure is not None
    drawn = [line for line in explorer.synthesis_figure.axes[0].get_lines() if np.ptp(line.get_xdata()) == 0]
    assert len(drawn) == len(given)  # one boundary per unit in the resynthesis
    explorer.lmbda_dropdown.value = 700
    assert explorer.synthesis_figure is None  # a pair not yet spoken shows the hint again
    explorer.resynthesize()
    explorer.lmbda_dropdown.value = 0
    assert explorer.synthesis_figure is not None  # back to a spoken pair: its rendition is shown again
    explorer.resynthesize()
    assert factory.built == [(200, 0), (200, 700)] and len(pipeline.calls) == 2


def test_a_failed_resynthesis_is_reported_not_raised(codebooks, capsys):
    from dpslm_utils import CheckpointError

    def unavailable(k, lmbda):
        raise CheckpointError("could not download the ELLA-V model")

    explorer = widgets.k_lambda_explorer(torch.zeros(1, 12800), 16000, FakeEncoder()(None, None), k=100, lmbda=600,
                                         pipeline_factory=unavailable)
    explorer.button.click()
    assert "could not resynthesize" in explorer.status and "ELLA-V" in explorer.status
    assert not explorer.button.disabled
    with pytest.raises(ValueError, match="not a released pair"):
        widgets.KLambdaExplorer(torch.zeros(1, 12800), 16000, FakeEncoder()(None, None), k=500, lmbda=4000)
