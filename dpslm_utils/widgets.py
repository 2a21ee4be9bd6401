"""ipywidgets explorers for the notebooks.

Every explorer draws its default view once while its cell runs, as an ordinary cell output (so a
static render of the notebook, and nbval, see a picture without any kernel callback), and redraws
that same output in place whenever a control changes (through IPython display handles). Figures are
rendered to PNG here, without pyplot, so no backend ever shows them a second time.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict

import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import Audio, DisplayHandle, Image, Markdown, display
from matplotlib.figure import Figure

from . import plots
from .checkpoints import weights_mode
from .codebooks import feature_codebook, load_codebook
from .ellav import ELLAV
from .features import feature_encoder, resynthesize_units
from .pipeline import DPSLM, shared_vocoder, resolve_device
from .quantize import bitrate, deduplicate, dpdp
from .rates import RatePoint, rate_distortion
from .registry import CODEBOOK_SIZES, PAPER_NUM_NEIGHBORS, VALID_LAMBDAS
from .ulm import UnitLM


FIGURE_WIDTH = 8.0
"""Inches (800 px at the PNG's 100 dpi). JupyterLab shrinks a wider picture to its output area, about
580 px in a 1024 px window with the file browser open: at this width tick labels stay about 10 px
tall (the 14-inch figure of notebook 02's explorer shrank them to 6 px)."""


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def audible(clip: torch.Tensor, sample_rate: int, seconds: float = 1.0, gap: float = 0.25) -> tuple[torch.Tensor, int]:
    """``clip [n]`` repeated, ``gap`` seconds of silence apart, until it lasts at least ``seconds``;
    returns the samples ``[m]`` and how many times the clip is in them.

    A 40 ms unit played once is a click, and the browser's player shows a sub-second clip as
    "0:00 / 0:00"; a few repetitions can be heard, and the player shows a length.
    """
    clip = clip.reshape(-1)
    if clip.numel() >= seconds * sample_rate:
        return clip, 1
    silence = clip.new_zeros(round(gap * sample_rate))
    repeats = math.ceil((seconds * sample_rate + silence.numel()) / (clip.numel() + silence.numel()))
    return torch.cat([clip, silence] * (repeats - 1) + [clip]), repeats


def _row(*children) -> widgets.HBox:
    """Controls side by side; in a narrow window they wrap onto the next line instead of shrinking."""
    return widgets.HBox(list(children), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))


def _slider_layout() -> widgets.Layout:
    """A slider that takes the room its row leaves, but at least 320 px for label, track and readout
    (squeezed into a row it had kept a 45 px track)."""
    return widgets.Layout(flex="1 1 320px", min_width="320px", max_width="560px")


def _button(description: str, tooltip: str, **options) -> widgets.Button:
    """A button as wide as its text (the default width cuts "score word / non-word")."""
    return widgets.Button(description=description, tooltip=tooltip, layout=widgets.Layout(width="auto"), **options)


WHOLE_LABEL = {"description_width": "initial"}
"""Widget style: the description gets the width it needs (the default cuts "temperature" to "temperat…")."""


PLAYER_WIDTH_PX = 260
"""Width of a :func:`player`: two side by side fit the output area of a 1024 px JupyterLab window (about
580 px with the file browser open); at the browser's default 300 px every player took a row of its own."""


def player(wav: torch.Tensor, sample_rate: int, label: str) -> str:
    """HTML: an audio player for ``wav [samples]`` with ``label`` (HTML) above it, for :func:`players`."""
    audio = Audio(torch.as_tensor(wav).reshape(-1).numpy(), rate=sample_rate)._repr_html_()
    audio = audio.replace("<audio ", f"<audio style='width:{PLAYER_WIDTH_PX}px' ", 1)
    return f"<div style='text-align:center'>{label}<br>{audio}</div>"


def players(cells: list[str]) -> str:
    """HTML: :func:`player` cells side by side, wrapping onto the next line in a narrow window."""
    return "<div style='display:flex; flex-wrap:wrap; gap:4px 16px'>" + "".join(cells) + "</div>"


# ---------------------------------------------------------------------------------------------
# Hearing units without weights (notebooks 02 and 07)
# ---------------------------------------------------------------------------------------------

WEIGHT_FREE_LAMBDAS = (0.0, *np.geomspace(1.0, 1e5, 61).tolist())
"""Log-mel λ at which :class:`WeightFreeVoice` measures rate and distortion: 0 (k-means units), then 1 to
100 000 in steps of about 21 %, from every frame its nearest centroid to one unit per utterance."""


class WeightFreeVoice:
    """DPDP units of one utterance that can be heard without any model weights.

    The utterance's log-mel features ``[T, 80]`` (``feature_encoder("fbank")``) are quantized by DPDP
    on the shipped log-mel codebook (``feature_codebook("fbank")``, k = 100); each frame gets its
    unit's centroid spectrum back, and Griffin-Lim turns that into audio
    (:func:`~dpslm_utils.resynthesize_units`). ``points`` holds the rate and distortion of every
    λ in ``lambdas`` (:func:`~dpslm_utils.rate_distortion`): :meth:`at_share` picks the λ whose units
    keep a given share of the k-means (λ = 0) rate, which is how other units (WavLM at some λ, a
    released pair's bitrate) are matched: a log-mel codebook of 100 entries cannot reach their
    absolute rates, but it can be as much coarser than its own k-means units as they are than theirs.
    """

    def __init__(self, wav: torch.Tensor, sample_rate: int, lambdas=WEIGHT_FREE_LAMBDAS):
        self.encoder, self.codebook = feature_encoder("fbank"), feature_codebook("fbank")
        self.sample_rate = self.encoder.sample_rate
        self.features = self.encoder(wav, sample_rate)
        lambdas = sorted({0.0, *map(float, lambdas)})  # λ = 0 first: the k-means rate every share refers to
        self.points: list[RatePoint] = rate_distortion(self.features, self.codebook, lambdas)
        self._audio: dict[float, torch.Tensor] = {}

    def at_share(self, share: float, rate: str = "units_per_second") -> RatePoint:
        """The measured point whose ``rate`` ("units_per_second" or "bits_per_second") is nearest to
        ``share`` × the rate at λ = 0 (of equally near ones, the smallest λ)."""
        if rate not in ("units_per_second", "bits_per_second"):
            raise ValueError(f"rate must be 'units_per_second' or 'bits_per_second', got {rate!r}")
        target = share * getattr(self.points[0], rate)
        return min(self.points, key=lambda p: (abs(getattr(p, rate) - target), p.lmbda))

    def units(self, lmbda: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Deduplicated log-mel units ``[N]`` and their durations ``[N]`` (frames) at ``lmbda``."""
        return deduplicate(dpdp(self.features, self.codebook, lmbda))

    def speak(self, lmbda: float) -> torch.Tensor:
        """The utterance rebuilt from its units at ``lmbda``: ``[320 T]`` samples at :attr:`sample_rate`
        (computed once per λ)."""
        if lmbda not in self._audio:
            self._audio[lmbda] = resynthesize_units(*self.units(lmbda), self.codebook, self.encoder)
        return self._audio[lmbda]


class _Codebooks:
    """Released codebooks by size k, each loaded on first use and then kept (one per explorer)."""

    def __init__(self, layer: int, device: torch.device):
        self.layer, self.device, self._loaded = layer, device, {}

    def __getitem__(self, k: int) -> torch.Tensor:
        if k not in self._loaded:
            self._loaded[k] = load_codebook(k, self.layer, device=self.device)
        return self._loaded[k]


# ---------------------------------------------------------------------------------------------
# Notebook 02: DPDP
# ---------------------------------------------------------------------------------------------


class DPDPExplorer:
    """DPDP units of one utterance for a chosen codebook size k and duration penalty λ.

    WavLM runs once (``encoder(wav, sample_rate, layer=layer)``); each codebook is loaded once per
    k and kept. The controls: k (every released codebook, 2000 included), λ, the search (exact, or
    the paper's: each frame restricted to its ``PAPER_NUM_NEIGHBORS[k]`` nearest entries) and a
    segment. Each change reruns DPDP and redraws the segmentation (the chosen segment shaded), the
    duration histogram and the units/s-vs-λ curve of this k and search with the current point
    marked, the summary line, and an audio player with the chosen segment's samples.

    With ``weight_free`` (the default) a second player speaks the whole utterance without any
    weights (:class:`WeightFreeVoice`): log-mel units that keep the same share of their k-means rate
    as the current units keep of theirs, so the sound coarsens as λ grows. With random weights it is
    the only real sound; with the released weights, a comparison. :meth:`show` puts it in the
    notebook; :func:`dpdp_explorer` builds and shows one.
    """

    def __init__(self, wav: torch.Tensor, sample_rate: int, encoder, k: int = 500, lmbda: int = 4500,
                 ks: tuple[int, ...] = CODEBOOK_SIZES, max_lmbda: int = 10000, step: int = 100,
                 restricted: bool = False, layer: int = 11, curve_points: int = 11, weight_free: bool = True):
        if k not in ks:
            raise ValueError(f"k={k} is not one of the choices ks={list(ks)}")
        if not 0 <= lmbda <= max_lmbda:
            raise ValueError(f"lmbda={lmbda} is outside the slider's range 0..{max_lmbda}")
        self.wav, self.sample_rate = wav, sample_rate
        self.features = encoder(wav, sample_rate, layer=layer)
        self.frame_rate = float(getattr(encoder, "frame_rate", 50.0))
        self.random_weights = bool(getattr(encoder, "random_weights", False))
        self.voice = WeightFreeVoice(wav, sample_rate) if weight_free else None
        self.weight_free_point: RatePoint | None = None  # the log-mel units the weight-free player speaks
        self.weight_free_label = ""
        self.codebooks = _Codebooks(layer, self.features.device)
        self.curve_lmbdas = np.linspace(0, max_lmbda, curve_points).round().astype(int)
        self._curves: dict[tuple[int, bool], np.ndarray] = {}  # (k, restricted) -> units/s at curve_lmbdas
        self.k_dropdown = widgets.Dropdown(options=list(ks), value=k, description="k", style=WHOLE_LABEL,
                                           layout=widgets.Layout(width="130px"))
        self.lmbda_slider = widgets.IntSlider(value=int(lmbda), min=0, max=int(max_lmbda), step=int(step),
                                              description="λ", continuous_update=False, style=WHOLE_LABEL,
                                              layout=_slider_layout())
        self.search_toggle = widgets.ToggleButtons(
            options=[("exact", False), ("paper: 5 % nearest", True)], value=bool(restricted), description="search",
            style={**WHOLE_LABEL, "button_width": "auto"},  # the label beside the buttons, side by side
            layout=widgets.Layout(display="flex", flex="0 0 auto", align_items="center"))
        self.segment_slider = widgets.IntSlider(value=0, min=0, max=0, description="segment", style=WHOLE_LABEL,
                                                continuous_update=False, layout=_slider_layout())
        self.controls = widgets.VBox([_row(self.k_dropdown, self.lmbda_slider),
                                      _row(self.search_toggle, self.segment_slider)])
        self.units: torch.Tensor | None = None
        self.summary = ""
        self.figure: Figure | None = None
        self._handles: dict[str, DisplayHandle] = {}
        self._recomputing = False
        for control in (self.k_dropdown, self.lmbda_slider, self.search_toggle):
            control.observe(self._changed, names="value")
        self.segment_slider.observe(self._segment_changed, names="value")
        self.redraw()

    @property
    def k(self) -> int:
        return int(self.k_dropdown.value)

    @property
    def lmbda(self) -> int:
        return int(self.lmbda_slider.value)

    @property
    def restricted(self) -> bool:
        return bool(self.search_toggle.value)

    @property
    def num_neighbors(self) -> int | None:
        """``None`` (exact search) or the paper's ``PAPER_NUM_NEIGHBORS[k]`` (5 % of k)."""
        return PAPER_NUM_NEIGHBORS[self.k] if self.restricted else None

    def quantize(self, lmbda: int) -> torch.Tensor:
        """Per-frame units ``[T]`` of the utterance for the current k and search at ``lmbda``."""
        return dpdp(self.features, self.codebooks[self.k], lmbda, self.num_neighbors).cpu()

    def curve(self) -> np.ndarray:
        """Units per second at each of ``curve_lmbdas`` for the current k and search (computed once)."""
        key = (self.k, self.restricted)
        if key not in self._curves:
            self._curves[key] = np.array([bitrate(self.quantize(int(lmbda)), self.frame_rate).units_per_second
                                          for lmbda in self.curve_lmbdas])
        return self._curves[key]

    def weight_free_audio(self) -> torch.Tensor:
        """The weight-free resynthesis ``[samples]`` at ``voice.sample_rate`` of the whole utterance
        (log-mel units at :attr:`weight_free_point`)."""
        return self.voice.speak(self.weight_free_point.lmbda)

    def segment_audio(self) -> torch.Tensor:
        """The samples ``[1, n]`` of the chosen segment (its frames at ``sample_rate``)."""
        start, end = self._segment_frames()
        hop = self.sample_rate / self.frame_rate
        return self.wav[..., round(start * hop): round(end * hop)]

    def _segment_frames(self) -> tuple[int, int]:
        _, durations = deduplicate(self.units)
        ends = durations.cumsum(0)
        i = self.segment_slider.value
        return int(ends[i] - durations[i]), int(ends[i])

    def redraw(self) -> None:
        """Rerun DPDP for the current controls; redraw the figure, the summary and the segment audio."""
        self.units = self.quantize(self.lmbda)
        units, durations = deduplicate(self.units)
        self._recomputing = True  # moving the segment slider's range fires its observer: draw once, below
        try:
            self.segment_slider.max = len(units) - 1
            self.segment_slider.value = min(self.segment_slider.value, len(units) - 1)
        finally:
            self._recomputing = False
        rate = bitrate(self.units, self.frame_rate)
        valid = VALID_LAMBDAS.get(self.k, ())
        released = ("Released unit LM and ELLA-V exist for this pair" if self.lmbda in valid else
                    f"No released unit LM / ELLA-V for this pair (λ with models for k={self.k}: {list(valid)})"
                    if valid else f"No released unit LM / ELLA-V for k={self.k}")
        search = f"paper search ({self.num_neighbors} nearest of {self.k})" if self.restricted else "exact search"
        self.summary = (f"**k = {self.k}, λ = {self.lmbda}**, {search}: {len(durations)} segments in "
                        f"{self.units.numel() / self.frame_rate:.2f} s → **{rate.units_per_second:.1f} units/s**, "
                        f"mean duration {1000 * durations.float().mean() / self.frame_rate:.0f} ms, entropy "
                        f"{rate.entropy_bits:.2f} bits/unit → **{rate.bits_per_second:.0f} bits/s** "
                        f"(one utterance: the entropy is underestimated). {released}.")
        if self.voice is not None:
            self._match_weight_free(rate.units_per_second)
        self._draw_and_play()
        self._publish_weight_free()

    def _match_weight_free(self, units_per_second: float) -> None:
        """Choose the log-mel units with the current units' share of their k-means rate, and say what they are."""
        share = units_per_second / self.curve()[0]  # curve_lmbdas[0] == 0: the k-means rate of this k and search
        point = self.weight_free_point = self.voice.at_share(share)
        why = ("no weights at all (the units above are random)" if self.random_weights else
               "for comparison, no model weights")
        self.weight_free_label = (
            f"**weight-free resynthesis**, {why}: the whole utterance as log-mel units (k = 100) that keep "
            f"{share:.0%} of their k-means rate, as the units of k = {self.k}, λ = {self.lmbda} keep of theirs: "
            f"{point.units_per_second:.1f} units/s, {point.bits_per_second:.0f} bits/s "
            f"(log-mel λ = {point.lmbda:.0f}), "
            f"mean squared log-mel error {point.distortion:.2f}. Each frame is its unit's centroid spectrum; "
            "it sounds robotic: no neural vocoder, Griffin-Lim guesses the phase.")

    def _draw_and_play(self) -> None:
        """Draw the figure for the current units and segment, then update what is shown."""
        units, durations = deduplicate(self.units)
        rate = bitrate(self.units, self.frame_rate)
        fig = Figure(figsize=(FIGURE_WIDTH, 5.6))
        grid = fig.add_gridspec(2, 2, height_ratios=(1.2, 1), hspace=0.55, wspace=0.3)
        ax = fig.add_subplot(grid[0, :])
        plots.plot_segmentation(self.wav, self.sample_rate, self.units, self.frame_rate, ax=ax)
        ax.set_title(f"k = {self.k}, λ = {self.lmbda}: {rate.units_per_second:.1f} units/s, "
                     f"{rate.bits_per_second:.0f} bits/s", pad=12)  # room for the segment's triangle
        start, end = self._segment_frames()
        plots.mark_span(ax, start / self.frame_rate, end / self.frame_rate)
        plots.plot_durations(durations, self.frame_rate, ax=fig.add_subplot(grid[1, 0]))
        curve_ax = fig.add_subplot(grid[1, 1])
        curve_ax.plot(self.curve_lmbdas, self.curve(), "o-", ms=3, color="C0")
        curve_ax.plot([self.lmbda], [rate.units_per_second], "*", ms=14, color="C3", mec="black")
        curve_ax.set(xlabel="λ", ylabel="units per second", title=f"k = {self.k}: units/s vs λ")
        curve_ax.grid(alpha=0.3)
        plots.mark_random_weights(fig)
        self.figure = fig
        self._publish()

    def _publish(self) -> None:
        """Put the current figure, summary and segment audio into the displayed outputs (if shown)."""
        if not self._handles:
            return
        units, _ = deduplicate(self.units)
        start, end = self._segment_frames()
        i = self.segment_slider.value
        self._update("figure", Image(figure_png(self.figure)))
        self._update("summary", Markdown(self.summary))
        heard, repeats = audible(self.segment_audio()[0], self.sample_rate)
        self._update("segment", Markdown(f"hear segment {i} (unit u{int(units[i])}, "
                                         f"{1000 * (end - start) / self.frame_rate:.0f} ms"
                                         f"{f', played {repeats}×' if repeats > 1 else ''}):"))
        self._update("audio", Audio(heard.numpy(), rate=self.sample_rate))

    def _publish_weight_free(self) -> None:
        """Put the weight-free label and player into the displayed outputs (if shown). They change with k, λ
        and the search, not with the segment: a segment move leaves the player (and whoever listens) alone."""
        if self._handles and self.voice is not None:
            self._update("weight_free", Markdown(self.weight_free_label))
            self._update("weight_free_audio", Audio(self.weight_free_audio().numpy(), rate=self.voice.sample_rate))

    def _changed(self, change) -> None:
        self.redraw()

    def _segment_changed(self, change) -> None:
        if not self._recomputing:
            self._draw_and_play()

    def _update(self, name: str, content) -> None:
        if name in self._handles:
            self._handles[name].update(content)

    def show(self) -> DPDPExplorer:
        """Display the controls, the figure, the summary, the segment audio and the weight-free
        resynthesis (drawn right away)."""
        display(self.controls)
        names = ["figure", "summary", "segment", "audio"]
        if self.voice is not None:
            names += ["weight_free", "weight_free_audio"]
        for name in names:
            self._handles[name] = DisplayHandle()
            self._handles[name].display(Markdown(""))
        self._publish()
        self._publish_weight_free()
        return self


def dpdp_explorer(wav: torch.Tensor, sample_rate: int, encoder, k: int = 500, lmbda: int = 4500,
                  **options) -> DPDPExplorer:
    """Build a :class:`DPDPExplorer` for ``wav`` and show it. Returns the explorer (its ``units``,
    ``summary``, ``segment_audio()`` and controls can be used from code)."""
    return DPDPExplorer(wav, sample_rate, encoder, k, lmbda, **options).show()


# ---------------------------------------------------------------------------------------------
# Notebook 07: the (k, λ) grid
# ---------------------------------------------------------------------------------------------


class Voice:
    """What resynthesis from known units needs, and nothing more: one pair's ELLA-V + the vocoder.

    ``synthesize`` is :meth:`dpslm_utils.DPSLM.synthesize` itself (it only reads ``ellav`` and
    ``vocoder``), so the explorer speaks exactly as the pipeline does without loading WavLM again
    or the unit LM.
    """

    synthesize = DPSLM.synthesize

    def __init__(self, ellav, vocoder):
        self.ellav, self.vocoder = ellav, vocoder


def released_voice(k: int, lmbda: int, device=None) -> Voice:
    """The released ELLA-V of (k, λ) with the shared 40 Hz WavTokenizer."""
    device = resolve_device(device)
    return Voice(ELLAV.from_pretrained(k, lmbda, device=device), shared_vocoder(device, weights_mode()))


def released_unit_lm(k: int, lmbda: int, device=None):
    """The released unit LM of (k, λ) (1k hours)."""
    return UnitLM.from_pretrained(k, lmbda, device=device)


class KLambdaExplorer:
    """One utterance under any of the 24 released (k, λ) pairs: units, bitrate, speech and scores.

    The features ``[T, D]`` (WavLM layer 11) are computed by the caller once. Choosing k and λ (λ
    offers the released values of the chosen k) reruns only DPDP, by default with the paper's
    restricted search (``PAPER_NUM_NEIGHBORS[k]``) that made the models' training units, and redraws
    the segmentation, units/s, bitrate and unit sequence. *resynthesize* speaks the units with the
    pair's ELLA-V + WavTokenizer (``voice_factory(k, lmbda)``, default :func:`released_voice`) at the
    chosen temperature, top-p and seed; at most ``max_loaded`` voices stay in memory (the least
    recently used is dropped). *keep as A* pins the current rendition for an A/B comparison with the
    next pair. *score word / non-word* (when ``word_features``/``nonword_features`` are given) loads
    the pair's unit LM (``lm_factory``), stores the log-likelihood margin and frees the model again.
    :meth:`show` puts it in the notebook; :func:`k_lambda_explorer` builds and shows one.
    """

    def __init__(self, wav: torch.Tensor, sample_rate: int, features: torch.Tensor, k: int = 500,
                 lmbda: int = 4500, frame_rate: float = 50.0, seed: int = 0, temperature: float = 1.0,
                 top_p: float = 0.8, device=None, voice_factory=None, lm_factory=None, max_loaded: int = 2,
                 word_features: torch.Tensor | None = None, nonword_features: torch.Tensor | None = None,
                 restricted: bool = True, max_units_shown: int = 60):
        if k not in VALID_LAMBDAS or lmbda not in VALID_LAMBDAS[k]:
            raise ValueError(f"(k={k}, lmbda={lmbda}) is not a released pair; see dpslm_utils.VALID_COMBINATIONS")
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.wav, self.sample_rate, self.features, self.frame_rate = wav, sample_rate, features, float(frame_rate)
        self.word_features, self.nonword_features = word_features, nonword_features
        self.restricted, self.max_units_shown, self.max_loaded = restricted, max_units_shown, max_loaded
        self.voice_factory = voice_factory or (lambda k, lmbda: released_voice(k, lmbda, device))
        self.lm_factory = lm_factory or (lambda k, lmbda: released_unit_lm(k, lmbda, device))
        self.voices: OrderedDict[tuple[int, int], object] = OrderedDict()  # least recently used first
        self.syntheses: dict[tuple[int, int], object] = {}
        self.margins: dict[tuple[int, int], float] = {}
        self.a: tuple[tuple[int, int], object] | None = None  # (pair, synthesis) pinned for A/B
        self.codebooks = _Codebooks(11, features.device)
        self.k_dropdown = widgets.Dropdown(options=list(VALID_LAMBDAS), value=k, description="k", style=WHOLE_LABEL,
                                           layout=widgets.Layout(width="130px"))
        self.lmbda_dropdown = widgets.Dropdown(options=list(VALID_LAMBDAS[k]), value=lmbda, description="λ",
                                               style=WHOLE_LABEL, layout=widgets.Layout(width="130px"))
        self.temperature_slider = widgets.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.05,
                                                      description="temperature", continuous_update=False,
                                                      style=WHOLE_LABEL, layout=_slider_layout())
        self.top_p_slider = widgets.FloatSlider(value=top_p, min=0.0, max=1.0, step=0.05, description="top-p",
                                                continuous_update=False, style=WHOLE_LABEL, layout=_slider_layout())
        self.seed_box = widgets.IntText(value=seed, description="seed", style=WHOLE_LABEL,
                                        layout=widgets.Layout(width="130px"))
        self.button = _button("resynthesize", "load this pair's ELLA-V (once) and speak the units", icon="volume-up")
        self.pin_button = _button("keep as A", "pin this rendition for A/B")
        self.score_button = _button("score word / non-word", "load this pair's unit LM, score the pair, free it",
                                    disabled=word_features is None or nonword_features is None)
        self.controls = widgets.VBox([
            _row(self.k_dropdown, self.lmbda_dropdown, self.seed_box),
            _row(self.temperature_slider, self.top_p_slider),
            _row(self.button, self.pin_button, self.score_button),
        ])
        self.units: torch.Tensor | None = None
        self.summary = ""
        self.figure: Figure | None = None
        self.synthesis_figure: Figure | None = None
        self.status = ""  # the line shown above the audio player (a hint, progress or an error)
        self._handles: dict[str, DisplayHandle] = {}
        self._switching_k = False
        self.k_dropdown.observe(self._k_changed, names="value")
        self.lmbda_dropdown.observe(self._lmbda_changed, names="value")
        self.button.on_click(lambda _: self._report_errors("resynthesize", self.resynthesize))
        self.pin_button.on_click(lambda _: self._report_errors("keep as A", self.keep_as_a))
        self.score_button.on_click(lambda _: self._report_errors("score", self.score_pair))
        self.redraw()

    @property
    def pair(self) -> tuple[int, int]:
        return int(self.k_dropdown.value), int(self.lmbda_dropdown.value)

    def quantize(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame units ``[T]`` of ``features`` under the selected pair (paper's search if restricted)."""
        k, lmbda = self.pair
        return dpdp(features, self.codebooks[k], lmbda, PAPER_NUM_NEIGHBORS[k] if self.restricted else None).cpu()

    def redraw(self) -> None:
        """DPDP for the selected pair; redraw the segmentation and the summary, and show the pair's
        earlier rendition if there is one."""
        k, lmbda = self.pair
        self.units = self.quantize(self.features)
        units, _ = deduplicate(self.units)
        rate = bitrate(self.units, self.frame_rate)
        shown = " ".join(f"u{u}" for u in units[: self.max_units_shown].tolist())
        more = f" … ({len(units) - self.max_units_shown} more)" if len(units) > self.max_units_shown else ""
        seconds = self.units.numel() / self.frame_rate
        margin = self.margins.get(self.pair)
        scored = ("" if margin is None else
                  f"  \nword − non-word log-likelihood: **{margin:+.2f} nats** "
                  f"({'the word' if margin > 0 else 'the non-word'} is preferred)")
        self.summary = (f"**k = {k}, λ = {lmbda}**: {len(units)} units in {seconds:.2f} s "
                        f"→ **{rate.units_per_second:.1f} units/s**, mean duration "
                        f"{1000 * seconds / len(units):.0f} ms, {rate.entropy_bits:.2f} bits/unit "
                        f"→ **{rate.bits_per_second:.0f} bits/s** (one utterance: entropy underestimated)"
                        f"{scored}  \n`{shown}{more}`")
        self.figure = Figure(figsize=(FIGURE_WIDTH, 2.8))
        plots.plot_segmentation(self.wav, self.sample_rate, self.units, self.frame_rate, ax=self.figure.add_subplot(),
                                title=f"DPDP units, k = {k}, λ = {lmbda}")
        plots.mark_random_weights(self.figure)
        self._update("figure", Image(figure_png(self.figure)))
        self._update("summary", Markdown(self.summary))
        self._show_synthesis()

    def voice(self, k: int, lmbda: int):
        """The voice of a pair: built by ``voice_factory`` on first use; the least recently used one is
        dropped when more than ``max_loaded`` are held."""
        pair = (k, lmbda)
        if pair not in self.voices:
            self.voices[pair] = self.voice_factory(k, lmbda)
        self.voices.move_to_end(pair)
        while len(self.voices) > self.max_loaded:
            self.voices.popitem(last=False)
        return self.voices[pair]

    def resynthesize(self):
        """Speak the current units with the selected pair's ELLA-V + WavTokenizer; returns the ``Synthesis``."""
        pair = self.pair
        self._set_status(f"*loading the ELLA-V of k = {pair[0]}, λ = {pair[1]} (once) and synthesizing …*")
        units, _ = deduplicate(self.units)
        (synthesis,) = self.voice(*pair).synthesize(units, n=1, temperature=self.temperature_slider.value,
                                                    top_p=self.top_p_slider.value, seed=self.seed_box.value)
        self.syntheses[pair] = synthesis
        self._show_synthesis()
        return synthesis

    def keep_as_a(self):
        """Pin the current pair's rendition as A (resynthesizing first if needed); returns it."""
        synthesis = self.syntheses.get(self.pair) or self.resynthesize()
        self.a = (self.pair, synthesis)
        self._show_a()
        return synthesis

    def score_pair(self) -> float:
        """log p(word) − log p(non-word) in nats under the selected pair's unit LM, on units of the
        pair's DPDP; the unit LM is loaded for this call only."""
        if self.word_features is None or self.nonword_features is None:
            raise ValueError("pass word_features and nonword_features to score a word / non-word pair")
        lm = self.lm_factory(*self.pair)
        word, nonword = (deduplicate(self.quantize(x))[0] for x in (self.word_features, self.nonword_features))
        self.margins[self.pair] = lm.loglikelihood(word) - lm.loglikelihood(nonword)
        del lm
        self.redraw()
        return self.margins[self.pair]

    def _show_synthesis(self) -> None:
        synthesis = self.syntheses.get(self.pair)
        if synthesis is None:
            self.synthesis_figure = None
            self._set_status(f"*Press **resynthesize** to hear these units (loads the ELLA-V of k = {self.pair[0]}, "
                             f"λ = {self.pair[1]} the first time).*")
            self._update("audio", Markdown(""))  # not the previous pair's rendition under this pair's hint
            self._update("synthesis", Markdown(""))
            return
        fig = Figure(figsize=(FIGURE_WIDTH, 2.8))
        alignment = synthesis.alignment
        plots.plot_segmentation(synthesis.wav, synthesis.sample_rate, alignment.frame_units(), alignment.codec_rate,
                                ax=fig.add_subplot(),
                                title=f"resynthesis (k = {self.pair[0]}, λ = {self.pair[1]}): "
                                      f"{len(synthesis.codes)} codes at {alignment.codec_rate:g} Hz, unit boundaries")
        plots.mark_random_weights(fig)
        self.synthesis_figure = fig
        self.status = f"B: resynthesis with k = {self.pair[0]}, λ = {self.pair[1]}"
        self._update("status", Markdown(self.status))
        self._update("audio", Audio(synthesis.wav.numpy(), rate=synthesis.sample_rate))
        self._update("synthesis", Image(figure_png(fig)))

    def _show_a(self) -> None:
        if self.a is None:
            self._update("a_label", Markdown("*A: press **keep as A** to pin a rendition for comparison.*"))
            return
        (k, lmbda), synthesis = self.a
        self._update("a_label", Markdown(f"A: k = {k}, λ = {lmbda}"))
        self._update("a_audio", Audio(synthesis.wav.numpy(), rate=synthesis.sample_rate))

    def _set_status(self, text: str) -> None:
        self.status = text
        self._update("status", Markdown(text))

    def _update(self, name: str, content) -> None:
        if name in self._handles:
            self._handles[name].update(content)

    def _k_changed(self, change) -> None:
        old, new = VALID_LAMBDAS[change["old"]], VALID_LAMBDAS[change["new"]]
        rank = old.index(self.lmbda_dropdown.value) if self.lmbda_dropdown.value in old else 0
        self._switching_k = True  # replacing the options fires a λ change of its own: redraw once, below
        try:
            self.lmbda_dropdown.options = list(new)
            self.lmbda_dropdown.value = new[rank]  # the same position on the new k's λ scale
        finally:
            self._switching_k = False
        self.redraw()

    def _lmbda_changed(self, change) -> None:
        if not self._switching_k:
            self.redraw()

    def _report_errors(self, action: str, callback) -> None:
        """Run a button's action; a callback's exception would vanish into the kernel log: show it."""
        buttons = (self.button, self.pin_button, self.score_button)
        enabled = [not b.disabled for b in buttons]
        for b in buttons:
            b.disabled = True
        try:
            callback()
        except Exception as e:
            self._set_status(f"**could not {action}:** `{type(e).__name__}: {e}`")
        finally:
            for b, on in zip(buttons, enabled):
                b.disabled = not on

    def show(self) -> KLambdaExplorer:
        """Display the controls, the original audio, the segmentation, the summary and the A/B area."""
        display(self.controls, Markdown("original:"), Audio(self.wav[0].numpy(), rate=self.sample_rate))
        for name in ("figure", "summary", "a_label", "a_audio", "status", "audio", "synthesis"):
            self._handles[name] = DisplayHandle()
            self._handles[name].display(Markdown(""))
        self._update("figure", Image(figure_png(self.figure)))
        self._update("summary", Markdown(self.summary))
        self._show_a()
        self._show_synthesis()
        return self


def k_lambda_explorer(wav: torch.Tensor, sample_rate: int, features: torch.Tensor, k: int = 500, lmbda: int = 4500,
                      **options) -> KLambdaExplorer:
    """Build a :class:`KLambdaExplorer` for ``wav`` (with its layer-11 ``features [T, D]``) and show it.

    Returns the explorer: its ``units``, ``summary``, controls, :meth:`~KLambdaExplorer.resynthesize`,
    :meth:`~KLambdaExplorer.keep_as_a`, :meth:`~KLambdaExplorer.score_pair`, ``syntheses`` and
    ``margins`` can be used from code."""
    return KLambdaExplorer(wav, sample_rate, features, k, lmbda, **options).show()
