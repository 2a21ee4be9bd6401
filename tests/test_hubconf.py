import importlib.util
from pathlib import Path

import pytest
import torch

import dpslm_utils

REPO = Path(__file__).resolve().parent.parent


def test_torch_hub_loads_the_pipeline_from_this_repo(random_tiny):
    model = torch.hub.load(str(REPO), "dpslm", source="local", k=100, lmbda=600, device="cpu")
    assert isinstance(model, dpslm_utils.DPSLM) and (model.k, model.lmbda) == (100, 600) and model.random_weights


ENTRY_POINTS = {"dpslm", "unit_encoder", "wavlm_large", "codebook", "unit_lm", "ellav", "wavtokenizer", "phone_lm", "phone_tts"}


def _import_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    return hubconf


def test_hubconf_exposes_exactly_its_entry_points():
    hubconf = _import_hubconf()
    # torch.hub.list's rule (torch 2.9 has no source="local" for list/help): public callables of hubconf
    listed = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert listed == ENTRY_POINTS  # no imported classes leak into torch.hub.list


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_has_help(entry):
    text = getattr(_import_hubconf(), entry).__doc__  # what torch.hub.help returns
    assert text and len(text.split()) >= 8, f"torch.hub.help(..., {entry!r}) says too little: {text!r}"


def test_torch_hub_entry_points_validate_their_arguments(random_tiny):
    with pytest.raises(ValueError, match="valid lmbda for k=500"):
        torch.hub.load(str(REPO), "unit_lm", source="local", k=500, lmbda=1)
    codebook = torch.hub.load(str(REPO), "codebook", source="local", k=100)
    assert codebook.shape[0] == 100


@pytest.mark.parametrize("entry, kwargs", [("unit_lm", {"k": 100, "lmbda": 600}), ("ellav", {"k": 100, "lmbda": 600})])
def test_torch_hub_entry_points_pass_fast_through(random_tiny, entry, kwargs):
    model = torch.hub.load(str(REPO), entry, source="local", fast="int8", **kwargs)
    assert model.fast == "int8"
    assert torch.hub.load(str(REPO), entry, source="local", **kwargs).fast is None


def test_torch_hub_loads_the_phone_toplines(random_tiny):
    plm = torch.hub.load(str(REPO), "phone_lm", source="local")
    assert isinstance(plm, dpslm_utils.PhoneLM) and plm.random_weights
    assert isinstance(torch.hub.load(str(REPO), "phone_tts", source="local"), dpslm_utils.PhoneTTS)
