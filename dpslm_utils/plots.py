"""Matplotlib figures shared by the notebooks, the demo and the CLI.

Every function draws into ``ax`` (a new figure when omitted) and returns the axes, so figures can be
composed. Time is always on the x-axis in seconds.

One figure style: constrained layout, and a RANDOM WEIGHTS stamp (:func:`mark_random_weights`) on every
figure of model outputs while the models are random. A function that makes its own figure for model
outputs stamps it; for a figure you compose, make it with :func:`marked_subplots`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from .checkpoints import RANDOM_WEIGHTS_MESSAGE, using_random_weights


RANDOM_WEIGHTS_STAMP = "dpslm-random-weights"
"""The ``gid`` of the text :func:`mark_random_weights` puts on a figure (one per figure)."""


def mark_random_weights(fig: plt.Figure) -> None:
    """Stamp a red RANDOM WEIGHTS line on ``fig`` when the models have random weights (once per figure)."""
    if using_random_weights() and not any(text.get_gid() == RANDOM_WEIGHTS_STAMP for text in fig.texts):
        fig.text(0.99, 0.01, RANDOM_WEIGHTS_MESSAGE, ha="right", va="bottom", color="red", fontsize=8,
                 gid=RANDOM_WEIGHTS_STAMP)


def marked_subplots(nrows: int = 1, ncols: int = 1, **subplots_kw) -> tuple[plt.Figure, np.ndarray | plt.Axes]:
    """``plt.subplots`` (constrained layout) for figures of model outputs, already stamped by
    :func:`mark_random_weights`; under random weights a strip at the bottom is kept free for the
    stamp, so it never covers an axis label."""
    fig, axes = plt.subplots(nrows, ncols, layout="constrained", **subplots_kw)
    if using_random_weights():
        strip = 16 / (fig.get_figheight() * fig.dpi)  # about one line of 8-point text
        fig.get_layout_engine().set(rect=(0, strip, 1, 1 - strip))
        mark_random_weights(fig)
    return fig, axes


def _axes(ax: plt.Axes | None, figsize: tuple[float, float] = (10, 3), model_output: bool = True) -> plt.Axes:
    """``ax``, or the axes of a new figure: :func:`marked_subplots` for model outputs, else a plain one
    (input audio, a worked example)."""
    if ax is not None:
        return ax
    if model_output:
        return marked_subplots(figsize=figsize)[1]
    return plt.subplots(figsize=figsize, layout="constrained")[1]


def log_spectrogram(wav: torch.Tensor, sample_rate: int, window_ms: float = 25.0, hop_ms: float = 10.0) -> np.ndarray:
    """Log-power spectrogram ``[freq, frames]`` in dB (Hann window, 25 ms / 10 ms by default)."""
    wav = torch.as_tensor(wav).float().reshape(-1)
    n_fft = int(sample_rate * window_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    spec = torch.stft(wav, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    return (10 * torch.log10(spec + 1e-10)).numpy()


def plot_waveform(wav: torch.Tensor, sample_rate: int, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    ax = _axes(ax, (10, 2), model_output=False)
    wav = torch.as_tensor(wav).float().reshape(-1).numpy()
    ax.plot(np.arange(len(wav)) / sample_rate, wav, lw=0.5)
    ax.set(xlabel="time (s)", ylabel="amplitude", title=title, xlim=(0, len(wav) / sample_rate))
    return ax


def plot_spectrogram(wav: torch.Tensor, sample_rate: int, ax: plt.Axes | None = None, title: str = "",
                     max_hz: float = 8000.0) -> plt.Axes:
    ax = _axes(ax, model_output=False)
    spec = log_spectrogram(wav, sample_rate)
    duration = torch.as_tensor(wav).numel() / sample_rate
    top = min(max_hz, sample_rate / 2)
    rows = int(spec.shape[0] * top / (sample_rate / 2))
    ax.imshow(spec[:rows], origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, top),
              vmin=spec.max() - 80, vmax=spec.max())
    ax.set(xlabel="time (s)", ylabel="frequency (Hz)", title=title)
    return ax


def segment_boundaries(units: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame units ``[T]`` -> (segment start frames, end frames, unit of each segment)."""
    units = torch.as_tensor(units).reshape(-1).cpu().numpy()
    change = np.flatnonzero(np.diff(units)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(units)]])
    return starts, ends, units[starts]


def plot_segmentation(wav: torch.Tensor, sample_rate: int, units: torch.Tensor, frame_rate: float = 50.0,
                      ax: plt.Axes | None = None, title: str = "", label_min_frames: int = 3) -> plt.Axes:
    """Spectrogram with one vertical line per unit boundary and the unit id written in each segment.

    ``units`` are per-frame (50 Hz) units ``[T]``. Segments shorter than ``label_min_frames`` get no
    label, to keep the picture readable for small λ.
    """
    ax = plot_spectrogram(wav, sample_rate, ax=_axes(ax), title=title)
    starts, ends, labels = segment_boundaries(units)
    top = ax.get_ylim()[1]
    for start, end, label in zip(starts, ends, labels):
        ax.axvline(start / frame_rate, color="white", lw=0.8, alpha=0.8)
        if end - start >= label_min_frames:
            ax.text((start + end) / 2 / frame_rate, top * 0.93, str(label), color="white", fontsize=7,
                    ha="center", va="top", rotation=90)
    return ax


def mark_span(ax: plt.Axes, start: float, end: float, color: str = "cyan") -> plt.Axes:
    """Highlight the time span ``start``..``end`` (s) of ``ax``: a shaded band with solid edges and a
    triangle on the top edge, so that even a 20 ms span of a spectrogram can be found."""
    ax.axvspan(start, end, facecolor=color, alpha=0.4, edgecolor=color, lw=1.5)
    ax.plot([(start + end) / 2], [1.0], marker="v", ms=11, color=color, mec="black", clip_on=False,
            transform=ax.get_xaxis_transform())
    return ax


def plot_durations(durations: torch.Tensor, frame_rate: float = 50.0, ax: plt.Axes | None = None,
                   label: str | None = None) -> plt.Axes:
    """Histogram of segment durations in milliseconds (one frame = 1000 / frame_rate ms)."""
    ax = _axes(ax, (5, 3))
    ms = torch.as_tensor(durations).float().cpu().numpy() * 1000 / frame_rate
    bins = np.arange(0, max(ms.max(), 100) + 40, 20) - 10
    ax.hist(ms, bins=bins, alpha=0.6, label=label)
    ax.set(xlabel="segment duration (ms)", ylabel="segments")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 segments
    return ax


# ---------------------------------------------------------------------------------------------
# Notebooks 01 (features) and 02 (DPDP)
# ---------------------------------------------------------------------------------------------


def _seconds(frames: int, frame_rate: float) -> float:
    return frames / frame_rate


def plot_features(features: torch.Tensor, frame_rate: float = 50.0, ax: plt.Axes | None = None, title: str = "",
                  clip_percentile: float = 99.0, colorbar: bool = True) -> plt.Axes:
    """Heat map of features ``[T, D]``: time (s) on x, feature dimension on y, a diverging colour map.

    Colours are clipped symmetrically at the ``clip_percentile`` of ``|x|``, so a few large
    dimensions (WavLM has some) do not wash out the rest.
    """
    ax = _axes(ax)
    x = torch.as_tensor(features).detach().float().cpu().numpy()
    limit = float(np.percentile(np.abs(x), clip_percentile)) or 1.0
    image = ax.imshow(x.T, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                      extent=(0, _seconds(x.shape[0], frame_rate), -0.5, x.shape[1] - 0.5), interpolation="nearest")
    ax.set(xlabel="time (s)", ylabel="feature dimension", title=title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
    return ax


def cosine_similarity_matrix(features: torch.Tensor) -> np.ndarray:
    """Cosine similarity of every pair of frames: ``[T, D]`` -> ``[T, T]`` in [-1, 1] (float64)."""
    x = torch.as_tensor(features).detach().double().cpu()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x @ x.T).clamp(-1.0, 1.0).numpy()


def plot_similarity(features: torch.Tensor, frame_rate: float = 50.0, ax: plt.Axes | None = None, title: str = "",
                    colorbar: bool = True) -> plt.Axes:
    """Frame-by-frame cosine similarity matrix of features ``[T, D]``, both axes in seconds.

    Bright squares on the diagonal are stretches of similar frames (a sound held for a while);
    bright spots off the diagonal are the same sound recurring later. Colours run from the 2nd
    percentile of the similarities to 1.
    """
    ax = _axes(ax, (4.5, 4))
    sim = cosine_similarity_matrix(features)
    duration = _seconds(sim.shape[0], frame_rate)
    image = ax.imshow(sim, origin="lower", cmap="viridis", extent=(0, duration, 0, duration),
                      vmin=min(float(np.percentile(sim, 2)), 0.999), vmax=1.0, interpolation="nearest")
    ax.set(xlabel="time (s)", ylabel="time (s)", title=title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, pad=0.02, fraction=0.046, label="cosine similarity")
    return ax


def feature_pca(features: torch.Tensor, n_components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Project features ``[T, D]`` on their top principal components.

    Returns ``(projections [T, n], explained [n])``: the centred frames on the first ``n``
    principal axes (signs fixed so that each axis's largest-magnitude projection is positive) and
    the fraction of the total variance each axis explains.
    """
    x = torch.as_tensor(features).detach().double().cpu()
    x = x - x.mean(dim=0)
    n_components = min(n_components, *x.shape)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    projections = (x @ vh[:n_components].T).numpy()
    signs = np.sign(projections[np.abs(projections).argmax(axis=0), np.arange(n_components)])
    variance = (s**2).numpy()
    return projections * np.where(signs == 0, 1, signs), variance[:n_components] / max(variance.sum(), 1e-300)


def plot_pca_over_time(features: torch.Tensor, frame_rate: float = 50.0, n_components: int = 3,
                       ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """The first ``n_components`` principal components of features ``[T, D]`` as curves over time,
    each labelled with the share of variance it explains."""
    ax = _axes(ax, (10, 2.5))
    projections, explained = feature_pca(features, n_components)
    t = (np.arange(projections.shape[0]) + 0.5) / frame_rate
    for i in range(projections.shape[1]):
        ax.plot(t, projections[:, i], lw=1.2, label=f"PC{i + 1} ({100 * explained[i]:.0f}% of variance)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="time (s)", ylabel="projection", title=title, xlim=(0, _seconds(projections.shape[0], frame_rate)))
    ax.legend(loc="upper right", fontsize=8, ncol=n_components)
    return ax


def plot_frame_windows(frames: int = 5, sample_rate: int = 16000, hop: int = 320, window: int = 400,
                       ax: plt.Axes | None = None) -> plt.Axes:
    """Which samples WavLM's conv stack reads for each of the first ``frames`` frames.

    The waveform is padded with ``(window − hop) / 2`` zeros on both sides (shaded); frame t reads
    the ``window`` padded samples from ``t · hop``, i.e. original samples
    ``[t · hop − pad, t · hop − pad + window)``, centred on ``t · hop + hop / 2``.
    """
    ax = _axes(ax, (10, 2.4), model_output=False)
    pad = (window - hop) // 2
    ax.axvspan(-pad, 0, color="grey", alpha=0.3, label=f"{pad} zeros of padding")
    for t in range(frames):
        start = t * hop - pad
        ax.barh(t, window, left=start, height=0.6, color=f"C{t % 10}", alpha=0.7)
        ax.plot([t * hop + hop / 2], [t], "k|", ms=12)
        ms = 1000 * hop / sample_rate
        ax.text(start + window + 10, t, f"frame {t} ≈ {t * ms:.0f}–{(t + 1) * ms:.0f} ms", va="center", fontsize=8)
    ax.set(xlabel=f"sample index (at {sample_rate // 1000} kHz)", ylabel="frame", ylim=(frames - 0.4, -0.6),
           xlim=(-pad - 20, (frames - 1) * hop + window + 300),
           title=f"each frame reads {window} samples ({1000 * window / sample_rate:.0f} ms), "
                 f"frames are {hop} samples ({1000 * hop / sample_rate:.0f} ms) apart")
    ax.set_yticks(range(frames))
    ax.legend(loc="upper right", fontsize=8)
    return ax


def plot_dp_table(cost: np.ndarray, units: torch.Tensor | np.ndarray, ax: plt.Axes | None = None,
                  title: str = "", row_labels: list[str] | None = None, fmt: str = "{:.1f}") -> plt.Axes:
    """A dynamic-programming table ``cost [T, K]`` (frames across, units down) with the chosen path.

    Every cell shows its value; the cells of the path ``units [T]`` are outlined in black and joined
    by a line, so the eye can follow where the path stays on a unit and where it switches.
    """
    cost = np.asarray(cost, dtype=float)
    units = np.asarray(units).reshape(-1)
    if units.shape[0] != cost.shape[0]:
        raise ValueError(f"units has {units.shape[0]} frames but the table has {cost.shape[0]}")
    num_frames, k = cost.shape
    ax = _axes(ax, (max(4.0, 0.9 * num_frames + 1.5), max(2.0, 0.6 * k + 1.0)), model_output=False)
    finite = cost[np.isfinite(cost)]
    ax.imshow(cost.T, origin="upper", cmap="Blues", aspect="auto",
              vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for t in range(num_frames):
        for u in range(k):
            value = cost[t, u]
            ax.text(t, u, fmt.format(value) if np.isfinite(value) else "∞", ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(value) and value > middle else "black")
    for t, u in enumerate(units):
        ax.add_patch(plt.Rectangle((t - 0.5, u - 0.5), 1, 1, fill=False, edgecolor="black", lw=2.5))
    ax.plot(np.arange(num_frames), units, color="orange", lw=2, alpha=0.6, zorder=2)  # under the numbers
    ax.set_xticks(range(num_frames), [f"t={t}" for t in range(num_frames)])
    ax.set_yticks(range(k), row_labels if row_labels is not None else [f"u={u}" for u in range(k)])
    ax.set(xlabel="frame", ylabel="unit", title=title)
    return ax


def plot_segmentation_stack(wav: torch.Tensor, sample_rate: int, frame_units: dict[str, torch.Tensor],
                            frame_rate: float = 50.0, panel_height: float = 2.0,
                            label_min_frames: int = 3) -> np.ndarray:
    """One :func:`plot_segmentation` panel per entry of ``frame_units`` (title -> per-frame units
    ``[T]``), stacked with a shared time axis. Returns the array of axes, top to bottom."""
    _, axes = marked_subplots(len(frame_units), 1, figsize=(10, panel_height * len(frame_units)), sharex=True,
                              squeeze=False)
    axes = axes[:, 0]
    for ax, (title, units) in zip(axes, frame_units.items()):
        plot_segmentation(wav, sample_rate, units, frame_rate, ax=ax, title=title, label_min_frames=label_min_frames)
        ax.set_xlabel("")
    axes[-1].set_xlabel("time (s)")
    return axes


def plot_bitrates(lmbdas, bitrates, axes=None, label: str | None = None, marker: str = "o") -> np.ndarray:
    """Units per second and bits per second against λ, side by side (two axes; pass them to overlay k's).

    ``bitrates`` are :class:`dpslm_utils.quantize.Bitrate` results, one per λ in ``lmbdas``.
    """
    if axes is None:
        axes = marked_subplots(1, 2, figsize=(10, 3.2))[1]
    lmbdas = np.asarray(lmbdas, dtype=float)
    axes[0].plot(lmbdas, [b.units_per_second for b in bitrates], marker=marker, label=label)
    axes[1].plot(lmbdas, [b.bits_per_second for b in bitrates], marker=marker, label=label)
    axes[0].set(xlabel="duration penalty λ", ylabel="units per second", title="deduplicated units / s")
    axes[1].set(xlabel="duration penalty λ", ylabel="bits per second", title="bitrate = units/s × entropy")
    for ax in axes:
        ax.grid(alpha=0.3)
        if label is not None:
            ax.legend(fontsize=8)
    return np.asarray(axes)


def plot_rate_distortion(points, axes=None, label: str | None = None, marker: str = "o",
                         distortion: str = "mean squared log-mel error") -> np.ndarray:  # fmt: skip
    """Distortion against units per second and against bits per second, side by side, each point labelled with λ.

    ``points`` are :class:`dpslm_utils.RatePoint` results of :func:`dpslm_utils.rate_distortion` (one
    per λ); pass ``axes`` to overlay several feature/codebook pairs (``label`` names each curve).
    ``distortion`` is the y-axis label (for features other than log-mel: "mean squared feature error").
    Its own figure is unstamped (weight-free log-mel units need no model); for units of a model's features
    pass ``axes`` from :func:`marked_subplots`.
    """
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")[1]
    points = sorted(points, key=lambda p: p.units_per_second)
    y = [p.distortion for p in points]
    for ax, rate, xlabel in ((axes[0], "units_per_second", "units per second"), (axes[1], "bits_per_second", "bits per second")):
        x = [getattr(p, rate) for p in points]
        (line,) = ax.plot(x, y, marker=marker, label=label)
        for p, xi, yi in zip(points, x, y):
            ax.annotate(f"λ={p.lmbda:.0f}" if p.lmbda >= 1 else f"λ={p.lmbda:.2g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line.get_color())
        ax.set(xlabel=xlabel, ylabel=distortion)
        ax.grid(alpha=0.3)
        if label is not None:
            ax.legend(fontsize=8)
    axes[0].set_title("coarser units (fewer per second) lose more")
    axes[1].set_title("rate = units/s × entropy (bits/unit)")
    return np.asarray(axes)


# ---------------------------------------------------------------------------------------------
# Notebooks 05 (vocoding), 06 (end to end) and 07 (the (k, λ) grid)
# ---------------------------------------------------------------------------------------------


def _ints(values) -> np.ndarray:
    return torch.as_tensor(values).reshape(-1).cpu().numpy()


def plot_codes(codes: torch.Tensor, frame_rate: float = 40.0, num_codes: int = 4096, ax: plt.Axes | None = None,
               title: str = "") -> plt.Axes:
    """Codec codes ``[L]`` over time: one dot per frame at the frame's centre, the code id on the y-axis.

    Consecutive frames are joined by a faint line, so runs of one code show up as flat stretches.
    Dots are coloured by id, which makes a code that recurs easy to spot.
    """
    ax = _axes(ax, (10, 2.5))
    codes = _ints(codes)
    t = (np.arange(len(codes)) + 0.5) / frame_rate
    ax.plot(t, codes, color="grey", lw=0.5, alpha=0.6)
    ax.scatter(t, codes, c=codes, cmap="turbo", vmin=0, vmax=num_codes - 1, s=12, zorder=3)
    ax.set(xlabel="time (s)", ylabel="code id", title=title, xlim=(0, len(codes) / frame_rate),
           ylim=(-0.02 * num_codes, 1.02 * num_codes))
    return ax


def plot_code_tape(codes: torch.Tensor, frame_rate: float = 40.0, start_frame: int = 0, num_codes: int = 4096,
                   ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    """A short stretch of codes ``[L]`` as a tape of cells, one per frame, each labelled with its id.

    Cell i spans ``[(start_frame + i) / frame_rate, (start_frame + i + 1) / frame_rate)`` seconds and
    is coloured by its id (the same colours as :func:`plot_codes`). Meant for a few dozen codes.
    """
    ax = _axes(ax, (10, 1.2))
    codes = _ints(codes)
    colours = plt.get_cmap("turbo")(codes / max(num_codes - 1, 1))
    for i, (code, colour) in enumerate(zip(codes, colours)):
        left = (start_frame + i) / frame_rate
        ax.add_patch(plt.Rectangle((left, 0), 1 / frame_rate, 1, facecolor=colour, edgecolor="black", lw=0.5,
                                   alpha=0.75))
        ax.text(left + 0.5 / frame_rate, 0.5, str(code), ha="center", va="center", rotation=90, fontsize=7)
    ax.set(xlim=(start_frame / frame_rate, (start_frame + len(codes)) / frame_rate), ylim=(0, 1),
           xlabel="time (s)", title=title)
    ax.set_yticks([])
    return ax


def code_counts(codes: torch.Tensor, num_codes: int = 4096) -> np.ndarray:
    """How often each code id occurs in ``codes`` (``[L]`` or a list of such): ``int64 [num_codes]``."""
    if isinstance(codes, (list, tuple)):
        codes = torch.cat([torch.as_tensor(c).reshape(-1) for c in codes]) if codes else torch.zeros(0)
    return np.bincount(_ints(codes).astype(np.int64), minlength=num_codes)


def plot_code_usage(codes: torch.Tensor, num_codes: int = 4096, axes=None, bins: int = 64) -> np.ndarray:
    """Two views of which codes ``codes`` uses (``[L]`` or a list of such): returns the two axes.

    Left: a histogram over the id range in ``bins`` bins (is the whole codebook in use?). Right:
    the count of every code that occurs, most frequent first (a rank-frequency plot: one bar per
    distinct code), with the number of distinct codes and their entropy in the title.
    """
    if axes is None:
        axes = marked_subplots(1, 2, figsize=(11, 3))[1]
    counts = code_counts(codes, num_codes)
    ids = np.repeat(np.arange(num_codes), counts)
    axes[0].hist(ids, bins=np.linspace(0, num_codes, bins + 1), color="C0")
    axes[0].set(xlabel="code id", ylabel="frames", xlim=(0, num_codes),
                title=f"where in the codebook ({bins} bins of {num_codes // bins} ids)")
    used = np.sort(counts[counts > 0])[::-1]
    p = used / max(used.sum(), 1)
    entropy = float(-(p * np.log2(p)).sum())
    axes[1].bar(np.arange(1, len(used) + 1), used, width=1.0, color="C1")
    axes[1].set(xlabel="rank of the code", ylabel="frames", xlim=(0.5, max(len(used), 1) + 0.5),
                title=f"{len(used)} distinct codes of {num_codes}, entropy {entropy:.2f} bits")
    return np.asarray(axes)


def plot_unit_timelines(rows: dict[str, tuple[torch.Tensor, torch.Tensor]], ax: plt.Axes | None = None,
                        title: str = "", label_min_seconds: float = 0.06) -> plt.Axes:
    """The same unit sequence laid out in time in several ways, one row each, top to bottom.

    ``rows`` maps a row name to ``(units [N], durations [N] in seconds)``. Each unit is a box as long
    as its duration, labelled with its id when at least ``label_min_seconds`` long. When two
    neighbouring rows hold the same number of units, the centres of corresponding boxes are joined
    by grey lines, so you can follow one unit from row to row.
    """
    ax = _axes(ax, (12, 0.9 * len(rows) + 1.2))
    centres = []  # box centres per row, to join corresponding units
    for row, (name, (units, durations)) in enumerate(rows.items()):
        units = _ints(units)
        durations = torch.as_tensor(durations).reshape(-1).double().cpu().numpy()
        if len(units) != len(durations):
            raise ValueError(f"row {name!r}: {len(units)} units but {len(durations)} durations")
        starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
        for i, (unit, start, length) in enumerate(zip(units, starts, durations)):
            ax.add_patch(plt.Rectangle((start, row - 0.3), length, 0.6, facecolor=f"C{i % 2}", edgecolor="black",
                                       lw=0.4, alpha=0.55))
            if length >= label_min_seconds:
                ax.text(start + length / 2, row, str(unit), ha="center", va="center", fontsize=6, rotation=90)
        centres.append(starts + durations / 2)
    for row in range(len(centres) - 1):
        upper, lower = centres[row], centres[row + 1]
        if len(upper) == len(lower):
            for x0, x1 in zip(upper, lower):
                ax.plot([x0, x1], [row + 0.3, row + 0.7], color="grey", lw=0.4, alpha=0.7)
    longest = max((float(torch.as_tensor(d).double().sum()) for _, d in rows.values()), default=0.0)
    ax.set(xlim=(0, max(longest, 1e-3)), ylim=(len(rows) - 0.5, -0.5), xlabel="time (s)", title=title)
    ax.set_yticks(range(len(rows)), list(rows))
    return ax


def plot_continuation(wav: torch.Tensor, sample_rate: int, boundary_seconds: float, ax: plt.Axes | None = None,
                      title: str = "", labels: tuple[str, str] = ("prompt", "continuation")) -> plt.Axes:
    """Spectrogram of a continued prompt with the boundary marked: a dashed line at ``boundary_seconds``,
    the part after it shaded, and ``labels`` written on either side."""
    ax = plot_spectrogram(wav, sample_rate, ax=_axes(ax), title=title)
    end = torch.as_tensor(wav).numel() / sample_rate
    ax.axvline(boundary_seconds, color="cyan", lw=2, ls="--")
    ax.axvspan(boundary_seconds, end, color="cyan", alpha=0.12)
    top = ax.get_ylim()[1]
    for text, align in ((f"◀ {labels[0]} ", "right"), (f" {labels[1]} ▶", "left")):
        ax.text(boundary_seconds, top * 0.95, text, color="cyan", ha=align, va="top", fontsize=10, fontweight="bold",
                bbox=dict(facecolor="black", alpha=0.55, edgecolor="none", pad=2))
    return ax


def plot_k_lambda_curves(rows: list[dict], x: str, y: str, group: str | None = "k", annotate: str | None = "lmbda",
                         ax: plt.Axes | None = None, xlabel: str | None = None, ylabel: str | None = None,
                         title: str = "") -> plt.Axes:
    """A measurement over (k, λ) pairs, one curve per k: ``rows`` are dicts (one per pair), drawn as
    ``row[x]`` against ``row[y]`` in the order of ``x``, one curve per value of ``row[group]``
    (``group=None``: a single curve), each point labelled with ``row[annotate]`` (λ) unless None."""
    ax = _axes(ax, (6, 4))
    groups = sorted({row[group] for row in rows}) if group is not None else [None]
    for i, value in enumerate(groups):
        members = sorted((row for row in rows if group is None or row[group] == value), key=lambda row: row[x])
        xs, ys = [row[x] for row in members], [row[y] for row in members]
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=None if group is None else f"{group} = {value}")
        if annotate is not None:
            for row in members:
                ax.annotate(f"{row[annotate]:g}", (row[x], row[y]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=f"C{i}")
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title)
    ax.grid(alpha=0.3)
    if group is not None:
        ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------------------------------------
# Notebooks 03 (unit LM) and 04 (ELLA-V)
# ---------------------------------------------------------------------------------------------


def plot_unit_surprisal(surprisal: torch.Tensor, durations: torch.Tensor, frame_rate: float = 50.0,
                        ax: plt.Axes | None = None, title: str = "", color: str = "C3",
                        units: torch.Tensor | None = None, label_min_frames: int = 4) -> plt.Axes:
    """Per-unit surprisal ``[N]`` (nats) over time: unit i is a bar spanning the time it lasted.

    ``durations [N]`` are in frames at ``frame_rate`` (e.g. ``EncodedSpeech.durations``), so the bars
    line up with a spectrogram of the same utterance drawn above them. A dashed line marks the mean
    surprisal per unit. With ``units [N]``, bars at least ``label_min_frames`` wide are labelled with
    their unit id.
    """
    ax = _axes(ax, (10, 2.2))
    surprisal = torch.as_tensor(surprisal).reshape(-1).double().cpu().numpy()
    frames = torch.as_tensor(durations).reshape(-1).double().cpu().numpy()
    if len(surprisal) != len(frames):
        raise ValueError(f"{len(surprisal)} surprisal values but {len(frames)} durations")
    starts = np.concatenate([[0.0], np.cumsum(frames)[:-1]]) / frame_rate
    widths = frames / frame_rate
    ax.bar(starts, surprisal, width=widths, align="edge", color=color, edgecolor="black", lw=0.4, alpha=0.75)
    if len(surprisal):
        ax.axhline(surprisal.mean(), color="black", ls="--", lw=0.8,
                   label=f"mean {surprisal.mean():.2f} nats/unit, total {surprisal.sum():.1f} nats")
        ax.legend(loc="upper right", fontsize=8)
    if units is not None:
        for unit, start, width, height, length in zip(_ints(units), starts, widths, surprisal, frames):
            if length >= label_min_frames:
                ax.text(start + width / 2, height, str(unit), ha="center", va="bottom", fontsize=6, rotation=90)
    top = max(float(surprisal.max()) * 1.25, 1e-3) if len(surprisal) else 1.0
    ax.set(xlabel="time (s)", ylabel="surprisal (nats)", title=title, xlim=(0, frames.sum() / frame_rate or 1e-3),
           ylim=(0, top))
    return ax


TOKEN_KIND_COLOURS = {"unit": "#6baed6", "codec": "#fdae6b", "EOP": "#e34a33", "special": "#969696"}
"""Cell colours of :func:`plot_token_strip`: unit tokens, codec tokens, EOP, the other special tokens."""


def token_names(tokens: torch.Tensor, token_to_id: dict[str, int]) -> list[str]:
    """The names of token ids ``[L]`` in a tokenizer's ``token_to_id_dict`` (``"u17"``, ``"EOP"``, ``"2268"``)."""
    id_to_name = {i: name for name, i in token_to_id.items()}
    return [id_to_name.get(int(i), f"<{int(i)}?>") for i in _ints(tokens)]


def token_kind(name: str) -> str:
    """``"unit"`` (``u{n}``), ``"codec"`` (a number), ``"EOP"`` or ``"special"`` (BOS, EOS, UNK, unknown)."""
    if name == "EOP":
        return "EOP"
    if name.isdigit():
        return "codec"
    if name.startswith("u") and name[1:].isdigit():
        return "unit"
    return "special"


def plot_token_strip(tokens: torch.Tensor, token_to_id: dict[str, int], ax: plt.Axes | None = None,
                     title: str = "", per_row: int = 24, forced=None, prompt_length: int = 0) -> plt.Axes:
    """An ELLA-V token sequence ``[L]`` (ids) as a strip of labelled cells, ``per_row`` cells per row.

    Each cell shows the token's name in ``token_to_id`` (a codec token's name is its code id) and is
    coloured by kind (:data:`TOKEN_KIND_COLOURS`). ``forced [L]`` (bools) hatches the tokens that were
    forced rather than sampled. ``prompt_length`` draws a thick line after the first
    ``prompt_length`` tokens, the prompt. The y-axis gives the position of each row's first token.
    """
    tokens = _ints(tokens)
    names = token_names(tokens, token_to_id)
    forced = np.zeros(len(tokens), bool) if forced is None else np.asarray(forced, bool).reshape(-1)
    if len(forced) != len(tokens):
        raise ValueError(f"forced has {len(forced)} entries but there are {len(tokens)} tokens")
    rows = max(1, -(-len(tokens) // per_row))
    ax = _axes(ax, (12, 0.55 * rows + 1.3))
    for i, (name, is_forced) in enumerate(zip(names, forced)):
        row, col = divmod(i, per_row)
        ax.add_patch(plt.Rectangle((col, row - 0.4), 1, 0.8, facecolor=TOKEN_KIND_COLOURS[token_kind(name)],
                                   edgecolor="black", lw=1.6 if is_forced else 0.5, hatch="///" if is_forced else None,
                                   gid="token"))
        ax.text(col + 0.5, row, name, ha="center", va="center", fontsize=7 if len(name) <= 4 else 6,
                fontweight="bold" if token_kind(name) != "codec" else "normal",
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1) if is_forced else None)
    if 0 < prompt_length <= len(tokens):
        row, col = divmod(prompt_length, per_row)
        if col == 0 and row > 0:  # the prompt ends a row: draw the line at that row's end
            row, col = row - 1, per_row
        ax.plot([col, col], [row - 0.5, row + 0.5], color="black", lw=3, gid="prompt-end")
        ax.text(col, row - 0.5, "prompt ◀ ▶ generated ", ha="center", va="bottom", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black", lw=0.5, label=label)
               for label, c in (("unit token u{n}", TOKEN_KIND_COLOURS["unit"]),
                                ("codec token (code id)", TOKEN_KIND_COLOURS["codec"]),
                                ("EOP", TOKEN_KIND_COLOURS["EOP"]),
                                ("BOS / EOS / UNK", TOKEN_KIND_COLOURS["special"]))]
    if forced.any():
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", lw=1.6, hatch="///",
                                     label="forced, not sampled"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=7,
              frameon=False)
    ax.set(xlim=(-0.1, per_row + 0.1), ylim=(rows - 0.4, -0.85), title=title)
    ax.set_xticks([])
    ax.set_yticks(range(rows), [str(r * per_row) for r in range(rows)])
    ax.set_ylabel("position")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return ax


def _training_metrics(run) -> list[dict]:
    """``metrics.jsonl`` of a TrainingRun (anything with ``.metrics``) or of a training output folder."""
    if hasattr(run, "metrics"):
        return run.metrics
    import json
    from pathlib import Path

    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise ValueError(f"{path} does not exist: expected a training output folder or a TrainingRun")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_training(runs, ax: plt.Axes | None = None, x: str = "step", title: str = "") -> plt.Axes:
    """Train (thin line) and validation (dots, thick line) loss of one or several training runs.

    ``runs``: a TrainingRun or output folder, a list of them, or a dict label -> run. ``x``: "step"
    (optimizer steps) or "tokens" (training tokens seen, all processes together).
    """
    if x not in ("step", "tokens"):
        raise ValueError(f"x must be 'step' or 'tokens', got {x!r}")
    if isinstance(runs, dict):
        labelled = list(runs.items())
    else:
        runs = runs if isinstance(runs, (list, tuple)) else [runs]
        labelled = [(str(getattr(run, "out_dir", run)), run) for run in runs]
    ax = _axes(ax, (8, 4))
    for i, (label, run) in enumerate(labelled):
        metrics = _training_metrics(run)
        color = f"C{i}"
        train = [(m[x], m["train_loss"]) for m in metrics if m.get("train_loss") is not None]
        val = [(m[x], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), color=color, lw=0.8, alpha=0.6, label=f"{label} (train)")
        if val:
            ax.plot(*zip(*val), color=color, lw=2, marker="o", ms=4, label=f"{label} (validation)")
    ax.set(xlabel="optimizer step" if x == "step" else "training tokens", ylabel="cross-entropy (nats/token)",
           title=title)  # fmt: skip
    ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------------------------------------
# Notebook 09: the toy experiment
# ---------------------------------------------------------------------------------------------


def plot_toy_experiment(conditions, axes=None, tasks: tuple[str, ...] = ("lexical", "syntactic")) -> np.ndarray:
    """Accuracy of each :class:`~dpslm_utils.toy_experiment.Condition` against bitrate (left, last stage,
    95 % bootstrap intervals) and against the seconds of speech seen in training (right, every stage):
    one row per task, one line per (features, k), the phone LM in black, chance dashed.

    Never stamped RANDOM WEIGHTS: the experiment runs on weight-free features or the released WavLM only.
    """
    if axes is None:
        _, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), layout="constrained", squeeze=False)
    groups: dict[tuple, list] = {}
    for condition in conditions:
        groups.setdefault((condition.features, condition.k), []).append(condition)
    for row, task in zip(axes, tasks):
        by_rate, by_speech = row
        for i, ((features, k), members) in enumerate(groups.items()):
            phones = features == "phones"
            style = dict(color="k", marker="*", ms=11) if phones else dict(color=f"C{i}", marker="os^v"[i % 4])
            label = "phone LM (topline)" if phones else f"{features}, k = {k}"
            members = sorted(members, key=lambda c: c.rate.bits_per_second)
            x = np.array([c.rate.bits_per_second for c in members])
            y = np.array([c.final.accuracy(task) for c in members])
            intervals = np.array([c.final.interval(task) for c in members]).T
            by_rate.errorbar(x, 100 * y, yerr=100 * np.abs(intervals - y), capsize=3, label=label, **style)
            for c, xi, yi in zip(members, x, y):
                if not phones:
                    by_rate.annotate(f"{c.target:g}/s", (xi, 100 * yi), textcoords="offset points", xytext=(4, 4),
                                     fontsize=7, color=style["color"])
            for j, c in enumerate(members):
                by_speech.plot([s.seconds / 60 for s in c.stages], [100 * s.accuracy(task) for s in c.stages],
                               ls="--" if phones else "-", alpha=1 if phones else 0.5 + 0.5 * j / max(1, len(members) - 1),
                               label=label if phones else f"{label}, {c.target:g} units/s", **style)
        for ax in row:
            ax.axhline(50, color="gray", ls=":", lw=1)
            ax.set(xscale="log", ylabel=f"{task} accuracy (%)")
            ax.xaxis.set_major_formatter(plt.ScalarFormatter())  # 20, 50, 100 rather than 2×10¹
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.grid(alpha=0.3)
        by_rate.set(xlabel="bitrate of the training units (bits/s)", title=f"{task}: accuracy vs bitrate (95 % CI)")
        by_speech.set(xlabel="speech seen in training (minutes)", title=f"{task}: accuracy during training")
    axes[0][0].legend(fontsize=7)
    axes[0][1].legend(fontsize=6, ncol=2)
    return axes
