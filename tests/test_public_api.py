import subprocess
import sys

import pytest

import dpslm_utils


@pytest.mark.parametrize("name", dpslm_utils.__all__)
def test_every_public_name_resolves(name):
    assert getattr(dpslm_utils, name) is not None


def test_function_named_like_a_module_is_the_function():
    from dpslm_utils import dpdp

    assert callable(dpdp) and dpslm_utils.dpdp is dpdp


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dpslm_utils.nope  # noqa: B018


def test_importing_the_package_loads_no_stage():
    code = "import sys, dpslm_utils; print(sorted(m for m in sys.modules if m.startswith('dpslm_utils.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
