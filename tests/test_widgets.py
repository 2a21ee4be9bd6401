"""The ipywidgets explorers: default view drawn at once, controls recompute, codebooks cached;
first with fakes (exact expectations), then with the real random-tiny models."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dpslm_utils import PAPER_NUM_NEIGHBORS, bitrate, deduplicate, dpdp, widgets  # noqa: E402


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
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 1 and np.ptp(line.get_xdata()) == 0]


class Shown:
    """Stands in for a display handle: keeps what was last shown."""

    def __init__(self):
        self.content = None

    def update(self, content):
        self.content = content


def shown(explorer):
    """Replace the explorer's display handles with :class:`Shown` ones; returns them by name."""
    explorer._handles = {name: Shown() for name in explorer._handles}
    return explorer._handles


def cut_descriptions(explorer):
    """Controls whose description or button text would be cut off: a fixed label width, a fixed button width."""
    controls = [w for box in explorer.controls.children for w in box.children]
    return [w.description for w in controls
            if (isinstance(w, ipywidgets.Button) and w.layout.width != "auto")
            or (not isinstance(w, ipywidgets.Button) and w.style.description_width != "initial")]


def test_default_view_is_drawn_without_callbacks(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=100, lmbda=50, ks=(100, 200))
    features = FakeEncoder()(None, None)
    expected = dpdp(features, widgets.load_codebook(100), 50)
    assert torch.equal(explorer.units, expected)
    segments = deduplicate(expected)[0].numel()
    assert len(boundary_lines(explorer)) == segments
    assert f"{segments} segments" in explorer.summary and "units/s" in explorer.summary
    assert len(explorer.figure.axes) == 3  # segmentation, duration histogram, units/s vs λ


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


def test_released_pairs_are_named_and_k_2000_is_offered(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=500, lmbda=4500)
    assert 2000 in explorer.k_dropdown.options
    assert "Released unit LM and ELLA-V exist" in explorer.summary
    explorer.lmbda_slider.value = 4600
    assert "No released" in explorer.summary and "4500" in explorer.summary
    explorer.k_dropdown.value = 2000
    assert "No released unit LM / ELLA-V for k=2000" in explorer.summary


def test_search_toggle_switches_to_the_papers_restricted_search(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=200, ks=(100, 200), lmbda=300)
    assert explorer.num_neighbors is None
    explorer.search_toggle.value = True
    assert explorer.num_neighbors == PAPER_NUM_NEIGHBORS[200] == 10
    features = FakeEncoder()(None, None)
    assert torch.equal(explorer.units, dpdp(features, widgets.load_codebook(200), 300, num_neighbors=10))
    assert "paper search (10 nearest of 200)" in explorer.summary
    with pytest.raises(ValueError, match="not one of"):
        widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=300, ks=(100, 200))


def test_units_per_second_curve_marks_the_current_point(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=100, lmbda=2000, ks=(100,),
                                    max_lmbda=4000, curve_points=5)
    features = FakeEncoder()(None, None)
    expected = [bitrate(dpdp(features, widgets.load_codebook(100), lmbda), 50).units_per_second
                for lmbda in (0, 1000, 2000, 3000, 4000)]
    curve_line, star = explorer.figure.axes[2].get_lines()
    assert list(curve_line.get_xdata()) == [0, 1000, 2000, 3000, 4000]
    assert np.allclose(curve_line.get_ydata(), expected)
    assert np.all(np.diff(expected) <= 0)  # a larger penalty never gives more segments
    assert star.get_xdata()[0] == 2000 and star.get_ydata()[0] == pytest.approx(expected[2])


def test_segment_audio_is_the_chosen_segments_samples(codebooks):
    wav = torch.arange(12800, dtype=torch.float32)[None] / 12800
    explorer = widgets.DPDPExplorer(wav, 16000, FakeEncoder(), k=100, lmbda=100, ks=(100,))
    _, durations = deduplicate(explorer.units)
    assert explorer.segment_slider.max == len(durations) - 1
    explorer.segment_slider.value = 1
    start = int(durations[0])
    assert torch.equal(explorer.segment_audio(), wav[:, 320 * start: 320 * (start + int(durations[1]))])
    explorer.lmbda_slider.value = 10000  # one segment left: the slider's range shrinks, the choice is clamped
    assert explorer.segment_slider.max == deduplicate(explorer.units)[0].numel() - 1
    assert explorer.segment_slider.value <= explorer.segment_slider.max


def test_audible_repeats_a_short_clip_with_gaps_to_one_second():
    clip = torch.arange(1, 641, dtype=torch.float32)  # 40 ms at 16 kHz
    heard, repeats = widgets.audible(clip, 16000)
    assert repeats == 5 and heard.numel() == 5 * 640 + 4 * 4000 >= 16000  # 5 x 40 ms, 4 gaps of 250 ms
    assert torch.equal(heard[:640], clip) and torch.equal(heard[-640:], clip)
    assert torch.count_nonzero(heard) == 5 * 640
    long = torch.ones(20000)
    assert widgets.audible(long, 16000)[1] == 1 and torch.equal(widgets.audible(long, 16000)[0], long)


def test_the_segment_player_lasts_at_least_a_second_and_says_how_often_it_repeats(codebooks):
    explorer = widgets.dpdp_explorer(0.1 * torch.randn(1, 12800), 16000, FakeEncoder(), k=100, lmbda=0, ks=(100,))
    handles = shown(explorer)
    explorer.segment_slider.value = 1
    _, durations = deduplicate(explorer.units)
    clip_ms = 20 * int(durations[1])
    assert clip_ms < 1000
    player = handles["audio"].content
    assert len(player.data) > 44 + 2 * 16000  # a WAV of at least 1 s of 16-bit samples
    assert f"{clip_ms} ms, played " in handles["segment"].content.data


def test_the_chosen_segment_is_marked_where_it_is(codebooks):
    explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=100, lmbda=100, ks=(100,))
    explorer.segment_slider.value = 1
    _, durations = deduplicate(explorer.units)
    start, end = int(durations[0]) / 50, int(durations[:2].sum()) / 50
    ax = explorer.figure.axes[0]
    (band,) = ax.patches
    corners = band.get_path().transformed(band.get_patch_transform()).vertices
    assert (corners[:, 0].min(), corners[:, 0].max()) == pytest.approx((start, end)) and band.get_alpha() >= 0.4
    (marker,) = [line for line in ax.get_lines() if line.get_marker() == "v"]
    assert marker.get_xdata()[0] == pytest.approx((start + end) / 2)


def test_no_control_cuts_its_description(codebooks, factory):
    dpdp_explorer = widgets.DPDPExplorer(torch.zeros(1, 12800), 16000, FakeEncoder(), k=100, lmbda=100, ks=(100,))
    assert cut_descriptions(dpdp_explorer) == []
    assert cut_descriptions(k_lambda_explorer(factory, word_features=torch.zeros(3, 4),
                                              nonword_features=torch.zeros(3, 4))) == []
    assert all(box.layout.flex_flow == "row wrap" for box in dpdp_explorer.controls.children)  # wrap, never squeeze


def test_show_displays_controls_figure_and_summary(codebooks, capsys):
    explorer = widgets.dpdp_explorer(0.1 * torch.randn(1, 12800), 16000, FakeEncoder(), k=100, lmbda=0, ks=(100,))
    assert set(explorer._handles) == {"figure", "summary", "segment", "audio", "weight_free", "weight_free_audio"}
    explorer.lmbda_slider.value = 300  # updates the displayed outputs in place, no error outside a notebook
    assert widgets.figure_png(explorer.figure).startswith(b"\x89PNG")
    quiet = widgets.dpdp_explorer(0.1 * torch.randn(1, 12800), 16000, FakeEncoder(), k=100, lmbda=0, ks=(100,),
                                  weight_free=False)
    assert set(quiet._handles) == {"figure", "summary", "segment", "audio"} and quiet.voice is None


# -- weight-free resynthesis (notebooks 02 and 07) --------------------------------------------


def speech(seconds=None):
    """The bundled example sentence at 16 kHz ``[1, samples]``, or its first ``seconds``."""
    from dpslm_utils import example_audio, resample

    wav, sr = example_audio("librispeech", official=False)
    wav = resample(wav, sr, 16000)
    return wav if seconds is None else wav[:, : round(16000 * seconds)]


def rms(wav):
    return float(wav.square().mean().sqrt())


def test_weight_free_voice_picks_the_share_of_its_kmeans_rate_and_speaks_it():
    from dpslm_utils import resynthesize_units

    voice = widgets.WeightFreeVoice(speech(), 16000, lambdas=(10000, 100, 1000))
    assert [p.lmbda for p in voice.points] == [0, 100, 1000, 10000]  # λ = 0 added, sorted
    rates, distortions = ([getattr(p, name) for p in voice.points] for name in ("units_per_second", "distortion"))
    assert np.all(np.diff(rates) < 0) and np.all(np.diff(distortions) > 0)  # coarser units lose more
    assert voice.at_share(1.0).lmbda == 0 and voice.at_share(0.0).lmbda == 10000
    for share in (0.3, 0.5, 0.8):
        chosen, target = voice.at_share(share), share * rates[0]
        assert all(abs(chosen.units_per_second - target) <= abs(rate - target) for rate in rates)
    assert voice.at_share(0.5, rate="bits_per_second").bits_per_second == pytest.approx(
        min((p.bits_per_second for p in voice.points), key=lambda b: abs(b - 0.5 * voice.points[0].bits_per_second)))
    with pytest.raises(ValueError, match="units_per_second"):
        voice.at_share(0.5, rate="seconds")

    units, durations = deduplicate(dpdp(voice.features, voice.codebook, 1000))
    assert all(torch.equal(a, b) for a, b in zip(voice.units(1000), (units, durations)))
    spoken = voice.speak(1000)
    assert torch.equal(spoken, resynthesize_units(units, durations, voice.codebook, voice.encoder))
    assert spoken.numel() == 320 * voice.features.shape[0] and rms(spoken) > 0.01  # the whole sentence, audible
    assert voice.speak(1000) is spoken  # computed once per λ


def test_dpdp_explorer_speaks_weight_free_units_that_coarsen_with_lambda(codebooks):
    wav = speech(seconds=0.8)  # FakeEncoder's 40 frames
    explorer = widgets.dpdp_explorer(wav, 16000, FakeEncoder(), k=100, lmbda=0, ks=(100,))
    handles = shown(explorer)
    fine = explorer.weight_free_point
    assert fine.lmbda == 0 and "keep 100% of their k-means rate" in explorer.weight_free_label

    explorer.lmbda_slider.value = 5000
    coarse, features = explorer.weight_free_point, FakeEncoder()(None, None)
    share = (bitrate(dpdp(features, widgets.load_codebook(100), 5000), 50).units_per_second
             / bitrate(dpdp(features, widgets.load_codebook(100), 0), 50).units_per_second)
    target = share * fine.units_per_second
    assert share < 0.5 and all(abs(coarse.units_per_second - target) <= abs(p.units_per_second - target)
                               for p in explorer.voice.points)
    assert coarse.units_per_second < fine.units_per_second and coarse.distortion > fine.distortion
    assert len(explorer.voice.units(coarse.lmbda)[0]) < len(explorer.voice.units(fine.lmbda)[0])

    label = explorer.weight_free_label
    assert label.startswith("**weight-free resynthesis**, for comparison") and "k = 100, λ = 5000" in label
    assert f"keep {share:.0%} of their k-means rate" in label and f"{coarse.units_per_second:.1f} units/s" in label
    assert "no neural vocoder" in label and "Griffin-Lim" in label
    assert handles["weight_free"].content.data == label
    heard = explorer.weight_free_audio()
    assert torch.equal(heard, explorer.voice.speak(coarse.lmbda)) and heard.numel() == 12800 and rms(heard) > 0.01
    assert handles["weight_free_audio"].content.data.startswith(b"RIFF")
    assert len(handles["weight_free_audio"].content.data) == 44 + 2 * 12800  # 16-bit WAV of the whole 0.8 s

    explorer.lmbda_slider.value = 0  # one segment per frame again
    player, segment_player = handles["weight_free_audio"].content, handles["audio"].content
    assert explorer.segment_slider.max >= 1
    explorer.segment_slider.value = 1 - explorer.segment_slider.value
    assert handles["audio"].content is not segment_player  # the segment's player follows the slider,
    assert handles["weight_free_audio"].content is player  # the whole utterance's is left playing


def test_players_put_labelled_players_side_by_side():
    cells = [widgets.player(torch.randn(1, 800), 16000, f"clip {i}<br>x") for i in range(3)]
    row = widgets.players(cells)
    assert row.count("<audio") == 3 and row.count("data:audio/wav;base64,") == 3 and "flex-wrap:wrap" in row
    assert row.count(f"<audio style='width:{widgets.PLAYER_WIDTH_PX}px'") == 3  # two a row at 1024 px (test_browser)
    assert all(f"clip {i}<br>x" in row for i in range(3))


# -- notebook 07: KLambdaExplorer -------------------------------------------------------------


class FakeVoice:
    """Stands in for a Voice: synthesize gives every unit two codes; records its calls."""

    def __init__(self, pair):
        self.pair, self.calls = pair, []

    def synthesize(self, units, n=1, temperature=1.0, top_p=0.8, seed=None):
        from dpslm_utils.ellav import Alignment
        from dpslm_utils.pipeline import Synthesis

        self.calls.append((units.clone(), temperature, top_p, seed))
        counts = torch.full_like(units, 2)
        codes = torch.arange(2 * len(units)) % 4096
        wav = torch.randn(600 * len(codes), generator=torch.Generator().manual_seed(0)) * 0.1
        return [Synthesis(wav, 24000, codes, Alignment(units, counts, 40.0), True)] * n


class LengthLM:
    """A unit LM whose log-likelihood is minus the number of units."""

    def loglikelihood(self, units):
        return -float(len(units))


@pytest.fixture
def factory():
    built = []

    def build(k, lmbda):
        built.append((k, lmbda))
        return FakeVoice((k, lmbda))

    build.built = built
    return build


def k_lambda_explorer(factory, k=500, lmbda=4500, **options):
    return widgets.KLambdaExplorer(torch.zeros(1, 12800), 16000, FakeEncoder()(None, None), k=k, lmbda=lmbda,
                                   voice_factory=factory, restricted=False, **options)


def test_k_lambda_explorer_draws_the_default_view_and_loads_no_model(codebooks, factory):
    explorer = k_lambda_explorer(factory)
    expected = dpdp(FakeEncoder()(None, None), widgets.load_codebook(500), 4500)
    assert torch.equal(explorer.units, expected)
    units = deduplicate(expected)[0]
    assert len(boundary_lines(explorer)) == len(units)
    assert f"{len(units)} units" in explorer.summary and "units/s" in explorer.summary and "bits/s" in explorer.summary
    assert " ".join(f"u{u}" for u in units.tolist()) in explorer.summary
    assert factory.built == [] and explorer.synthesis_figure is None and "resynthesize" in explorer.status


def test_k_lambda_explorer_quantizes_with_the_papers_search_by_default(codebooks, factory):
    explorer = widgets.KLambdaExplorer(torch.zeros(1, 12800), 16000, FakeEncoder()(None, None), k=200, lmbda=700,
                                       voice_factory=factory)
    expected = dpdp(FakeEncoder()(None, None), widgets.load_codebook(200), 700, num_neighbors=PAPER_NUM_NEIGHBORS[200])
    assert torch.equal(explorer.units, expected)


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


def test_resynthesize_speaks_the_deduplicated_units_with_the_chosen_sampling(codebooks, factory):
    explorer = k_lambda_explorer(factory, k=200, lmbda=0)
    explorer.temperature_slider.value, explorer.top_p_slider.value, explorer.seed_box.value = 0.7, 0.5, 3
    synthesis = explorer.resynthesize()
    ((given, temperature, top_p, seed),) = explorer.voices[(200, 0)].calls
    assert torch.equal(given, deduplicate(explorer.units)[0]) and (temperature, top_p, seed) == (0.7, 0.5, 3)
    assert explorer.syntheses[(200, 0)] is synthesis and explorer.synthesis_figure is not None
    drawn = [line for line in explorer.synthesis_figure.axes[0].get_lines() if np.ptp(line.get_xdata()) == 0]
    assert len(drawn) == len(given)  # one boundary per unit in the resynthesis
    explorer.lmbda_dropdown.value = 700
    assert explorer.synthesis_figure is None  # a pair not yet spoken shows the hint again
    explorer.lmbda_dropdown.value = 0
    assert explorer.synthesis_figure is not None  # back to a spoken pair: its rendition is shown again


def test_a_pair_without_rendition_clears_the_previous_pairs_player(codebooks, factory):
    explorer = widgets.k_lambda_explorer(torch.randn(1, 12800), 16000, FakeEncoder()(None, None), k=200, lmbda=0,
                                         voice_factory=factory)
    handles = shown(explorer)
    explorer.resynthesize()
    assert "B: resynthesis with k = 200, λ = 0" in handles["status"].content.data
    assert handles["audio"].content.data.startswith(b"RIFF")  # the rendition's WAV
    explorer.keep_as_a()
    explorer.lmbda_dropdown.value = 700
    assert "Press **resynthesize**" in handles["status"].content.data
    assert handles["audio"].content.data == "" and handles["synthesis"].content.data == ""  # no stale B under the hint
    assert handles["a_audio"].content.data.startswith(b"RIFF") and "A: k = 200, λ = 0" in handles["a_label"].content.data
    explorer.lmbda_dropdown.value = 0  # back to the spoken pair: its player again
    assert handles["audio"].content.data.startswith(b"RIFF")


def test_at_most_max_loaded_voices_are_kept(codebooks, factory):
    explorer = k_lambda_explorer(factory, k=200, lmbda=0, max_loaded=2)
    for lmbda in (0, 700, 1500, 0):
        explorer.lmbda_dropdown.value = lmbda
        explorer.resynthesize()
        assert len(explorer.voices) <= 2
    assert factory.built == [(200, 0), (200, 700), (200, 1500), (200, 0)]  # (200, 0) was dropped, then rebuilt
    assert list(explorer.voices) == [(200, 1500), (200, 0)]
    with pytest.raises(ValueError, match="max_loaded"):
        k_lambda_explorer(factory, max_loaded=0)


def test_keep_as_a_pins_a_rendition_for_ab(codebooks, factory):
    explorer = widgets.k_lambda_explorer(torch.randn(1, 12800), 16000, FakeEncoder()(None, None), k=100, lmbda=600,
                                         voice_factory=factory)
    pinned = explorer.keep_as_a()  # resynthesizes first: nothing was spoken yet
    explorer.k_dropdown.value = 1000
    explorer.resynthesize()
    assert explorer.a == ((100, 600), pinned) and explorer.pair == (1000, 600)
    assert {"a_label", "a_audio", "status", "audio"} <= set(explorer._handles)


def test_score_pair_stores_the_word_nonword_margin_and_keeps_no_lm(codebooks, factory):
    features = FakeEncoder()(None, None)
    word, nonword = features[:30], features[10:]
    loaded = []
    explorer = k_lambda_explorer(factory, k=100, lmbda=600, word_features=word, nonword_features=nonword,
                                 lm_factory=lambda k, lmbda: loaded.append((k, lmbda)) or LengthLM())
    margin = explorer.score_pair()
    codebook = widgets.load_codebook(100)
    expected = len(deduplicate(dpdp(nonword, codebook, 600))[0]) - len(deduplicate(dpdp(word, codebook, 600))[0])
    assert margin == expected and explorer.margins == {(100, 600): expected} and loaded == [(100, 600)]
    assert f"{expected:+.2f} nats" in explorer.summary
    assert k_lambda_explorer(factory).score_button.disabled  # nothing to score without the two words


def test_a_failed_resynthesis_is_reported_not_raised(codebooks, capsys):
    from dpslm_utils import CheckpointError

    def unavailable(k, lmbda):
        raise CheckpointError("could not download the ELLA-V model")

    explorer = widgets.k_lambda_explorer(torch.randn(1, 12800), 16000, FakeEncoder()(None, None), k=100, lmbda=600,
                                         voice_factory=unavailable)
    explorer.button.click()
    assert "could not resynthesize" in explorer.status and "ELLA-V" in explorer.status
    assert not explorer.button.disabled and explorer.score_button.disabled  # states restored
    with pytest.raises(ValueError, match="not a released pair"):
        widgets.KLambdaExplorer(torch.zeros(1, 12800), 16000, FakeEncoder()(None, None), k=500, lmbda=4000)


# -- the same callbacks with the real models (random-tiny weights) ----------------------------


def test_dpdp_explorer_with_the_real_random_tiny_encoder_and_codebooks(random_tiny):
    from dpslm_utils import WavLMEncoder, example_audio, load_codebook

    encoder = WavLMEncoder.from_pretrained()
    wav, sr = example_audio("manufacture")
    explorer = widgets.dpdp_explorer(wav, sr, encoder, k=100, lmbda=1500, ks=(100, 2000), curve_points=3)
    features = encoder(wav, sr, layer=11)
    assert torch.equal(explorer.units, dpdp(features, load_codebook(100), 1500))
    explorer.search_toggle.value = True
    assert torch.equal(explorer.units, dpdp(features, load_codebook(100), 1500, num_neighbors=5))
    explorer.k_dropdown.value = 2000
    assert torch.equal(explorer.units, dpdp(features, load_codebook(2000), 1500, num_neighbors=100))
    _, durations = deduplicate(explorer.units)
    explorer.segment_slider.value = explorer.segment_slider.max
    assert explorer.segment_audio().shape[-1] == pytest.approx(320 * int(durations[-1]), abs=1)
    assert explorer.random_weights and "no weights at all (the units above are random)" in explorer.weight_free_label


def test_k_lambda_explorer_with_the_real_random_tiny_models(random_tiny, monkeypatch):
    from dpslm_utils import UnitLM, WavLMEncoder, example_audio

    encoder = WavLMEncoder.from_pretrained()
    wav, sr = example_audio("manufacture")
    word, nonword = (encoder(*example_audio(name), layer=11) for name in ("manufacture", "manufelture"))
    lm_loads = []
    real_from_pretrained = UnitLM.from_pretrained
    monkeypatch.setattr(UnitLM, "from_pretrained",
                        lambda *a, **kw: lm_loads.append(a) or real_from_pretrained(*a, **kw))
    explorer = widgets.k_lambda_explorer(wav, sr, word, k=100, lmbda=600, word_features=word,
                                         nonword_features=nonword, max_loaded=1)
    explorer.temperature_slider.value = 0.0
    explorer.button.click()
    synthesis = explorer.syntheses[(100, 600)]
    assert not explorer.status.startswith("**could not")
    assert torch.equal(synthesis.alignment.units, deduplicate(explorer.units)[0])
    assert synthesis.wav.numel() == 600 * len(synthesis.codes) == 600 * int(synthesis.alignment.codec_counts.sum())
    assert torch.equal(explorer.resynthesize().codes, synthesis.codes)  # temperature 0: greedy, reproducible
    assert lm_loads == []  # resynthesis loads ELLA-V and the vocoder only
    explorer.lmbda_dropdown.value = 1500
    explorer.resynthesize()
    assert list(explorer.voices) == [(100, 1500)]  # max_loaded=1: the first pair's ELLA-V was dropped
    margin = explorer.score_pair()
    lm = real_from_pretrained(100, 1500)
    units = [deduplicate(dpdp(x, explorer.codebooks[100], 1500, num_neighbors=5).cpu())[0] for x in (word, nonword)]
    assert margin == pytest.approx(lm.loglikelihood(units[0]) - lm.loglikelihood(units[1]), abs=1e-4)
