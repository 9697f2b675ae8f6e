"""Settings: the device a user names is checked before any model is loaded."""

from __future__ import annotations

import pytest
import torch

from core import config
from core.errors import InputError


def test_resolve_device_accepts_cpu_and_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.resolve_device("cpu") == "cpu"
    monkeypatch.setenv(config.ENV_DEVICE, "cpu")
    assert config.resolve_device(None) == "cpu"


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "meta"])
def test_an_unknown_device_is_one_clear_error(name: str) -> None:
    with pytest.raises(InputError, match=f"device '{name}'"):
        config.resolve_device(name)


def test_a_bad_device_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV_DEVICE, "gpu")
    with pytest.raises(InputError, match=r"\$EVAL_DEVICE"):
        config.resolve_device(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_to_use_the_cpu() -> None:
    with pytest.raises(InputError, match="not available on this machine; use --device cpu"):
        config.resolve_device("cuda")


def test_a_gpu_index_beyond_the_machine_is_refused() -> None:
    with pytest.raises(InputError, match="cuda:99"):
        config.resolve_device("cuda:99")
