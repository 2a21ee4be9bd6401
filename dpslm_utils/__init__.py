"""dpslm_utils: the DP-SLM pipeline, one stage per module.

    audio (16 kHz) -> WavLMEncoder (layer-11 features, 50 Hz) -> dpdp / DPDPQuantizer (units)
                      or feature_encoder("mfcc" | "fbank"): weight-free features on the same 50 Hz grid
        -> deduplicate -> UnitLM (log-likelihood, continuations)
                       -> ELLAV (WavTokenizer codes, 40 Hz) -> WavTokenizer (24 kHz speech)

Every public name below is importable from the package itself (``from dpslm_utils import dpdp``).
Names are imported lazily, so ``import dpslm_utils`` stays fast and loads a stage only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # registry.py: the official files and the valid (k, λ) pairs
    "VALID_COMBINATIONS": "registry",
    "VALID_LAMBDAS": "registry",
    "CODEBOOK_SIZES": "registry",
    "PAPER_NUM_NEIGHBORS": "registry",
    "check_combination": "registry",
    # checkpoints.py: download + verify + cache, the random-tiny switch
    "CheckpointError": "checkpoints",
    "cache_dir": "checkpoints",
    "download": "checkpoints",
    "weights_mode": "checkpoints",
    "using_random_weights": "checkpoints",
    # audio.py
    "load_audio": "audio",
    "as_waveform": "audio",
    "to_mono": "audio",
    "resample": "audio",
    "example_audio": "audio",
    # wavlm.py
    "WavLMEncoder": "wavlm",
    # features.py: WavLM, MFCC and log-mel features by name; units back to audio
    "feature_encoder": "features",
    "FeatureEncoder": "features",
    "resynthesize_units": "features",
    # codebooks.py
    "load_codebook": "codebooks",
    "train_codebook": "codebooks",
    "feature_codebook": "codebooks",
    "save_codebook": "codebooks",
    "read_codebook": "codebooks",
    # quantize.py (not dpdp.py: a submodule named like the dpdp function would shadow it)
    "dpdp": "quantize",
    "dpdp_batch": "quantize",
    "dpdp_cost": "quantize",
    "DPDPQuantizer": "quantize",
    "deduplicate": "quantize",
    "bitrate": "quantize",
    "Bitrate": "quantize",
    # rates.py (not rate_distortion.py, which would shadow the function): λ for a units/s target, rate against distortion
    "lambda_for_rate": "rates",
    "rate_distortion": "rates",
    "RatePoint": "rates",
    # ulm.py, ellav.py (on the shared decoder in transformer.py)
    "UnitLM": "ulm",
    "ELLAV": "ellav",
    # wavtokenizer.py
    "WavTokenizer": "wavtokenizer",
    # evaluation.py: ZeroSpeech sWUGGY / sBLIMP, phone ABX
    "read_gold": "evaluation",
    "lexical_accuracy": "evaluation",
    "syntactic_accuracy": "evaluation",
    "pair_accuracy": "evaluation",
    "PairAccuracy": "evaluation",
    "bootstrap_interval": "evaluation",
    "paired_bootstrap_interval": "evaluation",
    "unit_phone_purity": "evaluation",
    "phone_normalized_mutual_information": "evaluation",
    "score_files": "evaluation",
    "evaluate_zerospeech": "evaluation",
    "abx_error_rates": "evaluation",
    "abx_representations": "evaluation",
    # corpora.py: the evaluation corpora
    "download_corpus": "corpora",
    "slm21_stand_in_dir": "corpora",
    # pipeline.py
    "DPSLM": "pipeline",
    "UnitEncoder": "pipeline",
    # phones.py: the phone toplines
    "PhoneLM": "phones",
    "PhoneTTS": "phones",
    "text_to_phones": "phones",
    "US_ARPA_PHONES": "registry",
    # wer.py: resynthesis intelligibility
    "resynthesis_wer": "wer",
    "word_error_rate": "wer",
    "normalize_text": "wer",
    "whisper_asr": "wer",
    "read_transcripts": "wer",
    # training.py, datasets.py: train your own unit LM / ELLA-V (ellav.py: its training example)
    "train_ulm": "training",
    "train_ellav": "training",
    "TrainingRun": "training",
    "save_units": "datasets",
    "load_frame_units": "datasets",
    "ellav_example": "ellav",
    # tree_encoding.py: every audio file under a folder -> units or codec codes under another (dpslm encode, encode-codec)
    "encode_tree": "tree_encoding",
    "encode_codec_tree": "tree_encoding",
    "TreeResult": "tree_encoding",
    # toy_language.py: the toy spoken language of notebook 09
    "load_toy_language": "toy_language",
    "ToyLanguage": "toy_language",
    "PhoneAlignment": "toy_language",
    # toy_experiment.py: notebook 09's experiment (features -> codebooks -> rates -> unit LMs -> pair accuracy)
    "ToyExperimentConfig": "toy_experiment",
    "run_toy_experiment": "toy_experiment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dpslm_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
