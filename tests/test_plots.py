"""The shared figures: they draw what they claim (counts of lines, patches, panels; values plotted)."""

import matplotlib

matplotlib.use("Agg")

from types import SimpleNamespace  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dpslm_utils import checkpoints, plots  # noqa: E402
from dpslm_utils.quantize import Bitrate  # noqa: E402
from dpslm_utils.rates import RatePoint  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# -- notebook 01: features --------------------------------------------------------------------


def test_cosine_similarity_matrix_values():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    sim = plots.cosine_similarity_matrix(features)
    assert sim.shape == (4, 4)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    assert sim[0, 1] == pytest.approx(0.0)
    assert sim[0, 2] == pytest.approx(-1.0)
    assert sim[0, 3] == pytest.approx(2**-0.5)
    np.testing.assert_allclose(sim, sim.T)


def test_plot_similarity_spans_the_duration():
    ax = plots.plot_similarity(torch.randn(100, 8), frame_rate=50.0)
    (image,) = ax.get_images()
    assert image.get_array().shape == (100, 100)
    assert image.get_extent() == pytest.approx([0, 2.0, 0, 2.0])


def test_plot_features_is_dimensions_by_time():
    features = torch.randn(30, 7)
    ax = plots.plot_features(features, frame_rate=50.0)
    (image,) = ax.get_images()
    assert image.get_array().shape == (7, 30)  # dimensions on y, frames on x
    left, right, _, _ = image.get_extent()
    assert (left, right) == pytest.approx((0, 0.6))
    low, high = image.get_clim()
    assert low == pytest.approx(-high) and high > 0


def test_feature_pca_recovers_the_dominant_direction():
    generator = torch.Generator().manual_seed(0)
    t = torch.linspace(-1, 1, 200, dtype=torch.float64)
    direction = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64) / 5
    features = 10 * t[:, None] * direction + 0.01 * torch.randn(200, 3, generator=generator, dtype=torch.float64)
    projections, explained = plots.feature_pca(features, 2)
    assert projections.shape == (200, 2)
    assert explained[0] > 0.99 and explained.sum() <= 1 + 1e-9
    assert abs(np.corrcoef(projections[:, 0], t.numpy())[0, 1]) > 0.999


def test_plot_pca_over_time_draws_one_curve_per_component():
    ax = plots.plot_pca_over_time(torch.randn(50, 6), n_components=3)
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) == 50]
    assert len(curves) == 3
    assert "% of variance" in ax.get_legend().get_texts()[0].get_text()


def test_plot_frame_windows_draws_one_window_per_frame():
    ax = plots.plot_frame_windows(frames=4, hop=320, window=400)
    bars = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle) and p.get_width() == 400]
    assert len(bars) == 4
    assert sorted(bar.get_x() for bar in bars) == [-40, 280, 600, 920]


# -- notebook 02: DPDP ------------------------------------------------------------------------


def test_plot_dp_table_outlines_the_path():
    cost = np.arange(24, dtype=float).reshape(8, 3)
    units = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    ax = plots.plot_dp_table(cost, units)
    outlined = [p for p in ax.patches if not p.get_fill()]
    assert len(outlined) == 8
    assert [(p.get_x() + 0.5, p.get_y() + 0.5) for p in outlined] == list(zip(range(8), units))
    assert len(ax.texts) == 8 * 3
    with pytest.raises(ValueError, match="frames"):
        plots.plot_dp_table(cost, units[:5])


def test_plot_durations_counts_segments_in_whole_numbers():
    ax = plots.plot_durations(torch.tensor([1, 1, 2, 3, 3, 3]), frame_rate=50.0)  # at most 3 per bin
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    assert [p.get_height() for p in ax.patches if p.get_height() > 0] == [2, 1, 3]  # 20, 40 and 60 ms


def test_mark_span_shades_the_span_and_points_at_it():
    ax = plots.plot_spectrogram(torch.randn(16000), 16000)
    plots.mark_span(ax, 0.40, 0.44)
    (band,) = ax.patches
    corners = band.get_path().transformed(band.get_patch_transform()).vertices
    assert (corners[:, 0].min(), corners[:, 0].max()) == pytest.approx((0.40, 0.44))
    assert band.get_alpha() >= 0.4 and band.get_linewidth() > 0  # alpha 0.25 without edges hid a 40 ms span
    (marker,) = ax.get_lines()
    assert marker.get_xdata()[0] == pytest.approx(0.42) and marker.get_marker() == "v" and not marker.get_clip_on()


def test_plot_segmentation_stack_one_panel_per_setting_with_its_boundaries():
    wav = torch.randn(16000) * 0.1
    frame_units = {"λ = 0": torch.tensor([1, 2, 2, 3] * 12 + [3]), "λ = big": torch.tensor([5] * 25 + [6] * 24)}
    axes = plots.plot_segmentation_stack(wav, 16000, frame_units)
    assert len(axes) == 2
    for ax, units in zip(axes, frame_units.values()):
        segments = torch.unique_consecutive(units).numel()
        vertical = [line for line in ax.get_lines() if np.ptp(line.get_xdata()) == 0]
        assert len(vertical) == segments  # one line at the start of every segment
    assert axes[0].get_title() == "λ = 0"


def test_plot_bitrates_plots_both_quantities():
    lmbdas = [0, 1000, 2000]
    rates = [Bitrate(50.0, 8.0, 400.0), Bitrate(30.0, 7.0, 210.0), Bitrate(10.0, 5.0, 50.0)]
    axes = plots.plot_bitrates(lmbdas, rates, label="k=500")
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), [50, 30, 10])
    np.testing.assert_allclose(axes[1].get_lines()[0].get_ydata(), [400, 210, 50])
    axes = plots.plot_bitrates(lmbdas, rates[::-1], axes=axes, label="k=100")  # overlay
    assert len(axes[0].get_lines()) == 2


def test_plot_rate_distortion_plots_distortion_against_both_rates_in_rate_order():
    points = [RatePoint(1000.0, 10.0, 5.0, 50.0, 4.0), RatePoint(0.0, 30.0, 6.0, 180.0, 1.0),
              RatePoint(100.0, 20.0, 6.0, 120.0, 2.0)]  # fmt: skip
    axes = plots.plot_rate_distortion(points, label="fbank k=100")
    for ax, rates in zip(axes, ([10, 20, 30], [50, 120, 180])):
        (line,) = ax.get_lines()
        np.testing.assert_allclose(line.get_xdata(), rates)
        np.testing.assert_allclose(line.get_ydata(), [4.0, 2.0, 1.0])
        assert [t.get_text() for t in ax.texts] == ["λ=1000", "λ=100", "λ=0"]
    assert axes[0].get_xlabel() == "units per second" and axes[1].get_xlabel() == "bits per second"
    plots.plot_rate_distortion(points[:2], axes=axes, label="mfcc")  # overlay
    assert len(axes[1].get_lines()) == 2


# -- notebooks 05-07: codes, timelines, continuations, the (k, λ) grid ------------------------


def test_plot_codes_one_dot_per_code_at_its_frame_centre():
    codes = torch.tensor([5, 4095, 0, 17])
    ax = plots.plot_codes(codes, frame_rate=40.0)
    (dots,) = ax.collections
    np.testing.assert_allclose(dots.get_offsets(), [[0.0125, 5], [0.0375, 4095], [0.0625, 0], [0.0875, 17]])
    assert ax.get_xlim() == pytest.approx((0, 0.1))


def test_plot_code_tape_one_labelled_cell_per_code():
    codes = torch.tensor([7, 7, 300, 12])
    ax = plots.plot_code_tape(codes, frame_rate=40.0, start_frame=8)
    cells = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(cells) == 4
    assert [cell.get_x() for cell in cells] == pytest.approx([0.2, 0.225, 0.25, 0.275])
    assert [text.get_text() for text in ax.texts] == ["7", "7", "300", "12"]


def test_code_counts_over_one_or_several_sequences():
    counts = plots.code_counts([torch.tensor([3, 3, 9]), torch.tensor([9, 0])], num_codes=16)
    assert counts.shape == (16,)
    assert counts[[0, 3, 9]].tolist() == [1, 2, 2] and counts.sum() == 5


def test_plot_code_usage_one_bar_per_distinct_code_most_frequent_first():
    codes = torch.tensor([1, 1, 2, 3, 1, 2, 4000])  # counts 3, 2, 1, 1 -> p = 3/7, 2/7, 1/7, 1/7
    histogram, ranked = plots.plot_code_usage(codes, num_codes=4096, bins=64)
    heights = [bar.get_height() for bar in ranked.patches]
    assert heights == [3, 2, 1, 1]
    p = np.array([3, 2, 1, 1]) / 7
    assert f"4 distinct codes of 4096, entropy {-(p * np.log2(p)).sum():.2f} bits" == ranked.get_title()
    assert sum(bar.get_height() for bar in histogram.patches) == 7  # every frame lands in one bin


def test_plot_unit_timelines_boxes_follow_the_durations_and_join_matching_rows():
    rows = {"original": (torch.tensor([4, 8, 15]), torch.tensor([0.1, 0.3, 0.2])),
            "rendition": (torch.tensor([4, 8, 15]), torch.tensor([0.2, 0.1, 0.4])),
            "other": (torch.tensor([1, 2]), torch.tensor([0.5, 0.5]))}
    ax = plots.plot_unit_timelines(rows, label_min_seconds=0.15)
    boxes = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(boxes) == 3 + 3 + 2
    assert [b.get_x() for b in boxes[:3]] == pytest.approx([0, 0.1, 0.4])
    assert [b.get_width() for b in boxes[3:6]] == pytest.approx([0.2, 0.1, 0.4])
    connectors = ax.get_lines()
    assert len(connectors) == 3  # rows 0-1 match unit for unit; rows 1-2 differ in length: no lines
    assert connectors[0].get_xdata() == pytest.approx([0.05, 0.1])  # centre of unit 0 in both rows
    assert sorted(t.get_text() for t in ax.texts) == sorted(["8", "15", "4", "15", "1", "2"])  # >= 0.15 s only
    assert ax.get_xlim() == pytest.approx((0, 1.0))
    with pytest.raises(ValueError, match="2 units but 3 durations"):
        plots.plot_unit_timelines({"bad": (torch.tensor([1, 2]), torch.tensor([0.1, 0.1, 0.1]))})


def test_plot_continuation_marks_the_boundary():
    wav = torch.randn(24000 * 2) * 0.1
    ax = plots.plot_continuation(wav, 24000, boundary_seconds=1.25)
    (line,) = [line for line in ax.get_lines() if np.ptp(line.get_xdata()) == 0]
    assert line.get_xdata()[0] == pytest.approx(1.25)
    (shade,) = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert (shade.get_x(), shade.get_x() + shade.get_width()) == pytest.approx((1.25, 2.0))
    assert [t.get_text().strip(" ◀▶") for t in ax.texts] == ["prompt", "continuation"]


def test_plot_k_lambda_curves_one_curve_per_group_in_x_order():
    rows = [{"k": 100, "lmbda": 600, "bps": 200.0, "ups": 30.0}, {"k": 100, "lmbda": 0, "bps": 300.0, "ups": 48.0},
            {"k": 500, "lmbda": 0, "bps": 400.0, "ups": 49.0}]
    ax = plots.plot_k_lambda_curves(rows, x="bps", y="ups")
    k100, k500 = ax.get_lines()
    assert list(k100.get_xdata()) == [200.0, 300.0] and list(k100.get_ydata()) == [30.0, 48.0]
    assert list(k500.get_xdata()) == [400.0]
    assert [t.get_text() for t in ax.texts] == ["600", "0", "0"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["k = 100", "k = 500"]
    ax = plots.plot_k_lambda_curves(rows, x="bps", y="ups", group=None, annotate=None)
    (single,) = ax.get_lines()
    assert list(single.get_xdata()) == [200.0, 300.0, 400.0] and not ax.texts


def test_marked_subplots_stamps_only_random_weights(monkeypatch):
    monkeypatch.delenv("DPSLM_WEIGHTS", raising=False)
    fig, axes = plots.marked_subplots(1, 2)
    assert len(axes) == 2 and not fig.texts
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    fig, ax = plots.marked_subplots(figsize=(6, 3))
    (stamp,) = fig.texts
    assert "RANDOM WEIGHTS" in stamp.get_text()
    left, bottom, width, height = fig.get_layout_engine().get()["rect"]
    assert bottom == pytest.approx(16 / (3 * fig.dpi)) and bottom + height == pytest.approx(1)  # a free bottom strip


# -- the RANDOM WEIGHTS stamp: on every figure of model outputs, once -------------------------

WAV = torch.randn(16000) * 0.1
UNITS = torch.tensor([1] * 20 + [2] * 30)
MODEL_OUTPUT_FIGURES = {  # each makes its own figure of something a model computed
    "plot_features": lambda: plots.plot_features(torch.randn(20, 4)),
    "plot_similarity": lambda: plots.plot_similarity(torch.randn(20, 4)),
    "plot_pca_over_time": lambda: plots.plot_pca_over_time(torch.randn(20, 4)),
    "plot_segmentation": lambda: plots.plot_segmentation(WAV, 16000, UNITS),
    "plot_durations": lambda: plots.plot_durations(torch.tensor([1, 2, 5])),
    "plot_segmentation_stack": lambda: plots.plot_segmentation_stack(WAV, 16000, {"a": UNITS, "b": UNITS})[0],
    "plot_bitrates": lambda: plots.plot_bitrates([0, 1], [Bitrate(50.0, 8.0, 400.0), Bitrate(30.0, 7.0, 210.0)])[0],
    "plot_codes": lambda: plots.plot_codes(torch.tensor([1, 2, 3])),
    "plot_code_tape": lambda: plots.plot_code_tape(torch.tensor([1, 2, 3])),
    "plot_code_usage": lambda: plots.plot_code_usage(torch.tensor([1, 2, 2]))[0],
    "plot_unit_timelines": lambda: plots.plot_unit_timelines({"a": (torch.tensor([1, 2]), torch.tensor([0.1, 0.2]))}),
    "plot_continuation": lambda: plots.plot_continuation(WAV, 16000, 0.5),
    "plot_k_lambda_curves": lambda: plots.plot_k_lambda_curves([{"k": 100, "lmbda": 0, "x": 1.0, "y": 2.0}], "x", "y"),
    "plot_unit_surprisal": lambda: plots.plot_unit_surprisal(torch.tensor([1.0, 2.0]), torch.tensor([3, 4])),
    "plot_token_strip": lambda: plots.plot_token_strip(torch.tensor([4, 8, 2]), ELLAV_VOCAB),
    "plot_training": lambda: plots.plot_training(SimpleNamespace(metrics=[{"step": 1, "train_loss": 2.0}])),
}
INPUT_FIGURES = {  # the input audio or a worked example: true whatever the weights
    "plot_waveform": lambda: plots.plot_waveform(WAV, 16000),
    "plot_spectrogram": lambda: plots.plot_spectrogram(WAV, 16000),
    "plot_frame_windows": lambda: plots.plot_frame_windows(),
    "plot_dp_table": lambda: plots.plot_dp_table(np.ones((3, 2)), [0, 0, 1]),
    "plot_rate_distortion": lambda: plots.plot_rate_distortion(  # weight-free log-mel units: no model
        [RatePoint(0.0, 50.0, 6.0, 300.0, 1.0), RatePoint(100.0, 20.0, 5.0, 100.0, 2.0)])[0],
}


def stamps(fig):
    return [text for text in fig.texts if text.get_gid() == plots.RANDOM_WEIGHTS_STAMP]


NEVER_MODEL_OUTPUTS = {"plot_toy_experiment"}  # notebook 09: weight-free features or the released WavLM only


def test_every_plot_function_says_whether_it_draws_model_outputs():
    functions = {name for name in vars(plots) if name.startswith("plot_")}
    assert functions == set(MODEL_OUTPUT_FIGURES) | set(INPUT_FIGURES) | NEVER_MODEL_OUTPUTS


@pytest.mark.parametrize("name", sorted(MODEL_OUTPUT_FIGURES))
def test_model_output_figures_are_stamped_once_under_random_weights(name, monkeypatch):
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    fig = MODEL_OUTPUT_FIGURES[name]().figure
    (stamp,) = stamps(fig)
    assert stamp.get_text() == checkpoints.RANDOM_WEIGHTS_MESSAGE and stamp.get_color() == "red"
    monkeypatch.setenv("DPSLM_WEIGHTS", "pretrained")
    assert not stamps(MODEL_OUTPUT_FIGURES[name]().figure)


@pytest.mark.parametrize("name", sorted(INPUT_FIGURES))
def test_input_figures_are_never_stamped(name, monkeypatch):
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    assert not stamps(INPUT_FIGURES[name]().figure)


def test_mark_random_weights_stamps_a_figure_once(monkeypatch):
    monkeypatch.setenv("DPSLM_WEIGHTS", "random-tiny")
    fig, ax = plots.marked_subplots()
    plots.plot_similarity(torch.randn(10, 3), ax=ax)  # drawn into a stamped figure: no second stamp
    plots.mark_random_weights(fig)
    assert len(stamps(fig)) == 1
    plain = plt.figure()
    plots.mark_random_weights(plain)  # a figure made elsewhere (a widget's) gets the same stamp
    plots.mark_random_weights(plain)
    assert len(stamps(plain)) == 1


# -- notebooks 03 (unit LM) and 04 (ELLA-V) --------------------------------------------------


def test_plot_unit_surprisal_one_bar_per_unit_over_its_time_span():
    surprisal = torch.tensor([2.0, 5.0, 1.0])
    ax = plots.plot_unit_surprisal(surprisal, torch.tensor([5, 10, 25]), frame_rate=50.0,
                                   units=torch.tensor([7, 8, 9]), label_min_frames=10)
    bars = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(bars) == 3
    assert [b.get_x() for b in bars] == pytest.approx([0.0, 0.1, 0.3])  # starts: cumulative frames / 50 Hz
    assert [b.get_width() for b in bars] == pytest.approx([0.1, 0.2, 0.5])
    assert [b.get_height() for b in bars] == pytest.approx([2.0, 5.0, 1.0])
    (mean,) = [line for line in ax.get_lines() if np.ptp(line.get_ydata()) == 0]
    assert mean.get_ydata()[0] == pytest.approx(8 / 3)
    assert "total 8.0 nats" in ax.get_legend().get_texts()[0].get_text()
    assert [t.get_text() for t in ax.texts] == ["8", "9"]  # the 5-frame unit is too short for a label
    assert ax.get_xlim() == pytest.approx((0, 0.8))
    with pytest.raises(ValueError, match="3 surprisal values but 2 durations"):
        plots.plot_unit_surprisal(surprisal, torch.tensor([1, 2]))


ELLAV_VOCAB = {"UNK": 0, "BOS": 1, "EOP": 2, "EOS": 3, "u0": 4, "u1": 5, "u10": 6, "u2": 7, "0": 8, "1": 9, "2": 10}


def test_token_names_and_kinds_follow_the_vocabulary():
    names = plots.token_names(torch.tensor([6, 1, 7, 9, 2, 3, 0, 42]), ELLAV_VOCAB)
    assert names == ["u10", "BOS", "u2", "1", "EOP", "EOS", "UNK", "<42?>"]
    assert [plots.token_kind(n) for n in names] == ["unit", "special", "unit", "codec", "EOP", "special",
                                                    "special", "special"]


def test_plot_token_strip_one_cell_per_token_wrapped_into_rows():
    tokens = torch.tensor([5, 6, 1, 5, 8, 10, 2, 6, 9, 2, 3])  # u1 u10 BOS u1 | 0 2 EOP u10 1 EOP EOS
    forced = [False] * 4 + [False, False, False, True, False, False, True]
    ax = plots.plot_token_strip(tokens, ELLAV_VOCAB, per_row=4, forced=forced, prompt_length=4)
    cells = [p for p in ax.patches if p.get_gid() == "token"]
    assert len(cells) == len(tokens)
    assert [(c.get_x(), c.get_y() + 0.4) for c in cells[3:6]] == [(3, 0), (0, 1), (1, 1)]  # row r holds tokens 4r..
    assert sum(c.get_hatch() is not None for c in cells) == 2
    colours = [matplotlib.colors.to_hex(c.get_facecolor()) for c in cells]
    assert colours[2] == plots.TOKEN_KIND_COLOURS["special"] and colours[6] == plots.TOKEN_KIND_COLOURS["EOP"]
    assert colours[4] == plots.TOKEN_KIND_COLOURS["codec"] and colours[7] == plots.TOKEN_KIND_COLOURS["unit"]
    labels = [t.get_text() for t in ax.texts if t.get_text() in plots.token_names(tokens, ELLAV_VOCAB)]
    assert labels == plots.token_names(tokens, ELLAV_VOCAB)
    (end,) = [line for line in ax.get_lines() if line.get_gid() == "prompt-end"]
    assert list(end.get_xdata()) == [4, 4] and end.get_ydata()[0] == pytest.approx(-0.5)  # end of row 0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "4", "8"]
    assert "forced, not sampled" in [t.get_text() for t in ax.get_legend().get_texts()]
    with pytest.raises(ValueError, match="forced has 2 entries"):
        plots.plot_token_strip(tokens, ELLAV_VOCAB, forced=[True, False])
