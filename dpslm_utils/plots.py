"""Matplotlib figures shared by the notebooks, the demo and the CLI.

Every function draws into ``ax`` (a new figure when omitted) and returns the axes, so figures can be
composed. Time is always on the x-axis in seconds.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .checkpoints import RANDOM_WEIGHTS_MESSAGE, using_random_weights


def _axes(ax: plt.Axes | None, figsize: tuple[float, float] = (10, 3)) -> plt.Axes:
    return ax if ax is not None else plt.subplots(figsize=figsize)[1]


def mark_random_weights(fig: plt.Figure) -> None:
    """Stamp a red warning on ``fig`` when the models have random weights."""
    if using_random_weights():
        fig.text(0.99, 0.01, RANDOM_WEIGHTS_MESSAGE, ha="right", va="bottom", color="red", fontsize=8)


def log_spectrogram(wav: torch.Tensor, sample_rate: int, window_ms: float = 25.0, hop_ms: float = 10.0) -> np.ndarray:
    """Log-power spectrogram ``[freq, frames]`` in dB (Hann window, 25 ms / 10 ms by default)."""
    wav = torch.as_tensor(wav).float().reshape(-1)
    n_fft = int(sample_rate * window_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    spec = torch.stft(wav, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    return (10 * torch.log10(spec + 1e-10)).numpy()


def plot_waveform(wav: torch.Tensor, sample_rate: int, ax: plt.Axes | None = None, title: str = "") -> plt.Axes:
    ax = _axes(ax, (10, 2))
    wav = torch.as_tensor(wav).float().reshape(-1).numpy()
    ax.plot(np.arange(len(wav)) / sample_rate, wav, lw=0.5)
    ax.set(xlabel="time (s)", ylabel="amplitude", title=title, xlim=(0, len(wav) / sample_rate))
    return ax


def plot_spectrogram(wav: torch.Tensor, sample_rate: int, ax: plt.Axes | None = None, title: str = "",
                     max_hz: float = 8000.0) -> plt.Axes:
    ax = _axes(ax)
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
    ax = plot_spectrogram(wav, sample_rate, ax=ax, title=title)
    starts, ends, labels = segment_boundaries(units)
    top = ax.get_ylim()[1]
    for start, end, label in zip(starts, ends, labels):
        ax.axvline(start / frame_rate, color="white", lw=0.8, alpha=0.8)
        if end - start >= label_min_frames:
            ax.text((start + end) / 2 / frame_rate, top * 0.93, str(label), color="white", fontsize=7,
                    ha="center", va="top", rotation=90)
    return ax


def plot_durations(durations: torch.Tensor, frame_rate: float = 50.0, ax: plt.Axes | None = None,
                   label: str | None = None) -> plt.Axes:
    """Histogram of segment durations in milliseconds (one frame = 1000 / frame_rate ms)."""
    ax = _axes(ax, (5, 3))
    ms = torch.as_tensor(durations).float().cpu().numpy() * 1000 / frame_rate
    bins = np.arange(0, max(ms.max(), 100) + 40, 20) - 10
    ax.hist(ms, bins=bins, alpha=0.6, label=label)
    ax.set(xlabel="segment duration (ms)", ylabel="segments")
    return ax
