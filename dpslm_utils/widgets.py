"""ipywidgets explorers for the notebooks.

Every explorer draws its default view once while its cell runs, as an ordinary cell output (so a
static render of the notebook, and nbval, see a picture without any kernel callback), and redraws
that same output in place whenever a control changes (through IPython display handles). Figures are
rendered to PNG here, without pyplot, so no backend ever shows them a second time.
"""

from __future__ import annotations

import io

import ipywidgets as widgets
import torch
from IPython.display import DisplayHandle, Image, Markdown, display
from matplotlib.figure import Figure

from . import plots
from .codebooks import load_codebook
from .quantize import bitrate, deduplicate, dpdp
from .registry import VALID_LAMBDAS


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


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
    k with :func:`dpslm_utils.load_codebook` and kept. Changing the λ slider or the k drop-down
    reruns DPDP and redraws the segmentation over the spectrogram, the histogram of segment
    durations and a line with units/s and bitrate. :meth:`show` puts it in the notebook;
    :func:`dpdp_explorer` builds and shows one.
    """

    def __init__(self, wav: torch.Tensor, sample_rate: int, encoder, k: int = 500, lmbda: int = 4500,
                 ks: tuple[int, ...] = (100, 200, 500, 1000), max_lmbda: int = 10000, step: int = 100,
                 neighbor_fraction: float | None = None, layer: int = 11):
        if k not in ks:
            raise ValueError(f"k={k} is not one of the choices ks={list(ks)}")
        if not 0 <= lmbda <= max_lmbda:
            raise ValueError(f"lmbda={lmbda} is outside the slider's range 0..{max_lmbda}")
        if neighbor_fraction is not None and not 0 < neighbor_fraction <= 1:
            raise ValueError(f"neighbor_fraction must be None or in (0, 1], got {neighbor_fraction}")
        self.wav, self.sample_rate = wav, sample_rate
        self.neighbor_fraction = neighbor_fraction
        self.features = encoder(wav, sample_rate, layer=layer)
        self.frame_rate = float(getattr(encoder, "frame_rate", 50.0))
        self.codebooks = _Codebooks(layer, self.features.device)
        self.k_dropdown = widgets.Dropdown(options=list(ks), value=k, description="k")
        self.lmbda_slider = widgets.IntSlider(value=int(lmbda), min=0, max=int(max_lmbda), step=int(step),
                                              description="λ", continuous_update=False,
                                              layout=widgets.Layout(width="60%"))
        self.controls = widgets.HBox([self.k_dropdown, self.lmbda_slider])
        self.units: torch.Tensor | None = None
        self.summary = ""
        self.figure: Figure | None = None
        self._figure_handle = self._text_handle = None
        self.k_dropdown.observe(self._changed, names="value")
        self.lmbda_slider.observe(self._changed, names="value")
        self.redraw()

    @property
    def k(self) -> int:
        return int(self.k_dropdown.value)

    @property
    def lmbda(self) -> int:
        return int(self.lmbda_slider.value)

    @property
    def num_neighbors(self) -> int | None:
        return None if self.neighbor_fraction is None else max(1, round(self.neighbor_fraction * self.k))

    def redraw(self) -> None:
        """Recompute the units for the current (k, λ) and redraw the figure and the summary line."""
        self.units = dpdp(self.features, self.codebooks[self.k], self.lmbda, self.num_neighbors).cpu()
        _, durations = deduplicate(self.units)
        rate = bitrate(self.units, self.frame_rate)
        valid = VALID_LAMBDAS.get(self.k, ())
        released = ("Released unit LM and ELLA-V exist for this pair" if self.lmbda in valid else
                    f"No released unit LM / ELLA-V for this pair (λ with models for k={self.k}: {list(valid)})"
                    if valid else f"No released unit LM / ELLA-V for k={self.k}")
        self.summary = (f"**k = {self.k}, λ = {self.lmbda}**: {len(durations)} segments in "
                        f"{self.units.numel() / self.frame_rate:.2f} s → **{rate.units_per_second:.1f} units/s**, "
                        f"mean duration {1000 * durations.float().mean() / self.frame_rate:.0f} ms, entropy "
                        f"{rate.entropy_bits:.2f} bits/unit → **{rate.bits_per_second:.0f} bits/s** "
                        f"(one utterance: the entropy is underestimated). {released}.")
        self.figure = self._draw(durations, rate)
        if self._figure_handle is not None:
            self._figure_handle.update(Image(figure_png(self.figure)))
            self._text_handle.update(Markdown(self.summary))

    def _draw(self, durations: torch.Tensor, rate) -> Figure:
        fig = Figure(figsize=(13, 3.4))
        grid = fig.add_gridspec(1, 2, width_ratios=(3.2, 1), wspace=0.15, bottom=0.2)
        ax = fig.add_subplot(grid[0])
        plots.plot_segmentation(self.wav, self.sample_rate, self.units, self.frame_rate, ax=ax,
                                title=f"k = {self.k}, λ = {self.lmbda}: {rate.units_per_second:.1f} units/s, "
                                      f"{rate.bits_per_second:.0f} bits/s")
        plots.plot_durations(durations, self.frame_rate, ax=fig.add_subplot(grid[1]))
        plots.mark_random_weights(fig)
        return fig

    def _changed(self, change) -> None:
        self.redraw()

    def show(self) -> DPDPExplorer:
        """Display the controls, the figure and the summary (the default view is drawn right away)."""
        display(self.controls)
        self._figure_handle, self._text_handle = DisplayHandle(), DisplayHandle()
        self._figure_handle.display(Image(figure_png(self.figure)))
        self._text_handle.display(Markdown(self.summary))
        return self


def dpdp_explorer(wav: torch.Tensor, sample_rate: int, encoder, k: int = 500, lmbda: int = 4500,
                  **options) -> DPDPExplorer:
    """Build a :class:`DPDPExplorer` for ``wav`` and show it: a λ slider and a k drop-down over the
    segmentation plot, the duration histogram and units/s + bitrate. Returns the explorer (its
    ``units``, ``summary``, ``k_dropdown`` and ``lmbda_slider`` can be used from code)."""
    return DPDPExplorer(wav, sample_rate, encoder, k, lmbda, **options).show()


# ---------------------------------------------------------------------------------------------
# Notebook 07: the (k, λ) grid
# ---------------------------------------------------------------------------------------------


class KLambdaExplorer:
    """One utterance under any of the 24 released (k, λ) pairs: units, bitrate and resynthesized speech.

    The features are computed by the caller once (WavLM layer 11, ``[T, D]``). Choosing k and λ in
    the drop-downs (λ offers the released values of the chosen k) reruns only DPDP, with each
    codebook loaded once per k, and redraws the segmentation, units/s, bitrate and the unit
    sequence. The *resynthesize* button loads the pipeline of the selected pair with
    ``pipeline_factory(k, lmbda)`` (default :meth:`dpslm_utils.DPSLM.from_pretrained`) on its first
    use only, keeps it, and plays ELLA-V + WavTokenizer's rendition of the units under a spectrogram
    that shows which unit each stretch of speech came from. :meth:`show` puts it in the notebook;
    :func:`k_lambda_explorer` builds and shows one.
    """

    def __init__(self, wav: torch.Tensor, sample_rate: int, features: torch.Tensor, k: int = 500,
                 lmbda: int = 4500, frame_rate: float = 50.0, seed: int | None = 0, temperature: float = 1.0,
                 top_p: float = 0.8, device=None, pipeline_factory=None, max_units_shown: int = 60):
        if k not in VALID_LAMBDAS or lmbda not in VALID_LAMBDAS[k]:
            raise ValueError(f"(k={k}, lmbda={lmbda}) is not a released pair; see dpslm_utils.VALID_COMBINATIONS")
        self.wav, self.sample_rate, self.features, self.frame_rate = wav, sample_rate, features, float(frame_rate)
        self.seed, self.temperature, self.top_p, self.max_units_shown = seed, temperature, top_p, max_units_shown
        self.pipeline_factory = pipeline_factory or (lambda k, lmbda: _released_pipeline(k, lmbda, device))
        self.pipelines: dict[tuple[int, int], object] = {}
        self.syntheses: dict[tuple[int, int], object] = {}
        self.codebooks = _Codebooks(11, features.device)
        self.k_dropdown = widgets.Dropdown(options=list(VALID_LAMBDAS), value=k, description="k")
        self.lmbda_dropdown = widgets.Dropdown(options=list(VALID_LAMBDAS[k]), value=lmbda, description="λ")
        self.button = widgets.Button(description="resynthesize", icon="volume-up",
                                     tooltip="load the unit LM / ELLA-V / WavTokenizer of this pair (once) and speak")
        self.controls = widgets.HBox([self.k_dropdown, self.lmbda_dropdown, self.button])
        self.units: torch.Tensor | None = None
        self.summary = ""
        self.figure: Figure | None = None
        self.synthesis_figure: Figure | None = None
        self.status = ""  # the line shown above the audio player (a hint, progress or an error)
        self._handles: dict[str, DisplayHandle] = {}
        self._switching_k = False
        self.k_dropdown.observe(self._k_changed, names="value")
        self.lmbda_dropdown.observe(self._lmbda_changed, names="value")
        self.button.on_click(self._clicked)
        self.redraw()

    @property
    def pair(self) -> tuple[int, int]:
        return int(self.k_dropdown.value), int(self.lmbda_dropdown.value)

    def redraw(self) -> None:
        """DPDP for the selected pair; redraw the segmentation and the summary, and show the pair's
        earlier rendition if there is one."""
        k, lmbda = self.pair
        self.units = dpdp(self.features, self.codebooks[k], lmbda).cpu()
        units, _ = deduplicate(self.units)
        rate = bitrate(self.units, self.frame_rate)
        shown = " ".join(f"u{u}" for u in units[: self.max_units_shown].tolist())
        more = f" … ({len(units) - self.max_units_shown} more)" if len(units) > self.max_units_shown else ""
        seconds = self.units.numel() / self.frame_rate
        self.summary = (f"**k = {k}, λ = {lmbda}**: {len(units)} units in {seconds:.2f} s "
                        f"→ **{rate.units_per_second:.1f} units/s**, mean duration "
                        f"{1000 * seconds / len(units):.0f} ms, {rate.entropy_bits:.2f} bits/unit "
                        f"→ **{rate.bits_per_second:.0f} bits/s** (one utterance: entropy underestimated)  \n"
                        f"`{shown}{more}`")
        self.figure = Figure(figsize=(12, 3))
        plots.plot_segmentation(self.wav, self.sample_rate, self.units, self.frame_rate, ax=self.figure.add_subplot(),
                                title=f"DPDP units, k = {k}, λ = {lmbda}")
        plots.mark_random_weights(self.figure)
        self._update("figure", Image(figure_png(self.figure)))
        self._update("summary", Markdown(self.summary))
        self._show_synthesis()

    def pipeline(self, k: int, lmbda: int):
        """The pipeline of a pair: built by ``pipeline_factory`` on first use, then kept."""
        if (k, lmbda) not in self.pipelines:
            self.pipelines[(k, lmbda)] = self.pipeline_factory(k, lmbda)
        return self.pipelines[(k, lmbda)]

    def resynthesize(self):
        """Speak the current units with the selected pair's ELLA-V + WavTokenizer; returns the ``Synthesis``."""
        pair = self.pair
        units, _ = deduplicate(self.units)
        (synthesis,) = self.pipeline(*pair).synthesize(units, n=1, temperature=self.temperature, top_p=self.top_p,
                                                       seed=self.seed)
        self.syntheses[pair] = synthesis
        self._show_synthesis()
        return synthesis

    def _show_synthesis(self) -> None:
        from IPython.display import Audio

        synthesis = self.syntheses.get(self.pair)
        if synthesis is None:
            self.synthesis_figure = None
            self._set_status(f"*Press **resynthesize** to hear these units (loads the models of k = {self.pair[0]}, "
                             f"λ = {self.pair[1]} the first time).*")
            self._update("synthesis", Markdown(""))
            return
        fig = Figure(figsize=(12, 3))
        alignment = synthesis.alignment
        plots.plot_segmentation(synthesis.wav, synthesis.sample_rate, alignment.frame_units(), alignment.codec_rate,
                                ax=fig.add_subplot(),
                                title=f"resynthesis (k = {self.pair[0]}, λ = {self.pair[1]}): "
                                      f"{len(synthesis.codes)} codes at {alignment.codec_rate:g} Hz, unit boundaries")
        plots.mark_random_weights(fig)
        self.synthesis_figure = fig
        self.status = f"resynthesis with k = {self.pair[0]}, λ = {self.pair[1]}"
        self._update("audio", Audio(synthesis.wav.numpy(), rate=synthesis.sample_rate))
        self._update("synthesis", Image(figure_png(fig)))

    def _set_status(self, text: str) -> None:
        self.status = text
        self._update("audio", Markdown(text))

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

    def _clicked(self, button) -> None:
        self.button.disabled = True
        self._set_status(f"*loading the models of k = {self.pair[0]}, λ = {self.pair[1]} and synthesizing …*")
        try:
            self.resynthesize()
        except Exception as e:  # a callback's exception would vanish into the kernel log: show it
            self._set_status(f"**could not resynthesize:** `{type(e).__name__}: {e}`")
        finally:
            self.button.disabled = False

    def show(self) -> KLambdaExplorer:
        """Display the controls, the segmentation, the summary and the audio area (drawn right away)."""
        display(self.controls)
        for name in ("figure", "summary", "audio", "synthesis"):
            self._handles[name] = DisplayHandle()
        self._handles["figure"].display(Image(figure_png(self.figure)))
        self._handles["summary"].display(Markdown(self.summary))
        self._handles["audio"].display(Markdown(self.status))
        self._handles["synthesis"].display(Markdown(""))
        self._show_synthesis()
        return self


def _released_pipeline(k: int, lmbda: int, device=None):
    from .pipeline import DPSLM

    return DPSLM.from_pretrained(k, lmbda, device=device)


def k_lambda_explorer(wav: torch.Tensor, sample_rate: int, features: torch.Tensor, k: int = 500, lmbda: int = 4500,
                      **options) -> KLambdaExplorer:
    """Build a :class:`KLambdaExplorer` for ``wav`` (with its layer-11 ``features [T, D]``) and show it.

    Returns the explorer: its ``units``, ``summary``, ``k_dropdown``, ``lmbda_dropdown``,
    :meth:`~KLambdaExplorer.resynthesize` and ``syntheses`` can be used from code."""
    return KLambdaExplorer(wav, sample_rate, features, k, lmbda, **options).show()
