"""The architecture table: for every family, the hooked neurons equal a manual computation of the MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from core.errors import InputError, ModelError
from core.models import ARCHITECTURES, architecture_for, load_subject_model, parse_device_map, resolve_model_name
from tests import tiny_models

FAMILIES = ["gpt2", "gpt_neox", "llama", "qwen2", "gemma", "bert"]


def manual_neurons(family: str, block: torch.nn.Module, config, mlp_input: torch.Tensor) -> torch.Tensor:
    """docs/METHOD.md §1 written out by hand: post-nonlinearity, or act(gate)·up for gated MLPs."""
    if family == "gpt2":
        mlp = block.mlp
        return ACT2FN[config.activation_function](mlp_input @ mlp.c_fc.weight + mlp.c_fc.bias)
    if family == "gpt_neox":
        dense = block.mlp.dense_h_to_4h
        return ACT2FN[config.hidden_act](F.linear(mlp_input, dense.weight, dense.bias))
    if family in ("llama", "qwen2", "gemma"):
        mlp = block.mlp
        act = ACT2FN[getattr(config, "hidden_activation", None) or config.hidden_act]
        return act(F.linear(mlp_input, mlp.gate_proj.weight)) * F.linear(mlp_input, mlp.up_proj.weight)
    if family == "bert":
        dense = block.intermediate.dense
        return ACT2FN[config.hidden_act](F.linear(mlp_input, dense.weight, dense.bias))
    raise ValueError(family)


def mlp_input_module(family: str, block: torch.nn.Module) -> torch.nn.Module:
    return block.intermediate if family == "bert" else block.mlp


@pytest.mark.parametrize("family", FAMILIES)
def test_hooked_neurons_equal_manual_mlp(family, tmp_path):
    subject = load_subject_model(str(tiny_models.build(family, tmp_path / family)), device="cpu")
    layer = 1
    block = subject.model.get_submodule(subject.architecture.layers)[layer]
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        mlp_input_module(family, block).register_forward_pre_hook(
            lambda _m, inputs: captured.__setitem__("mlp_input", inputs[0])
        ),
        subject.mlp_out(layer).register_forward_pre_hook(lambda _m, inputs: captured.__setitem__("hooked", inputs[0])),
    ]
    ids = subject.tokenizer(["The river rose through the night."], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        subject.model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    with torch.inference_mode():
        expected = manual_neurons(family, block, subject.model.config, captured["mlp_input"])
    assert captured["hooked"].shape[-1] == subject.n_neurons == tiny_models.INTERMEDIATE
    torch.testing.assert_close(captured["hooked"], expected, rtol=1e-5, atol=1e-6)


def test_every_family_is_in_the_table():
    assert {arch.family for arch in ARCHITECTURES.values()} == {"gpt2", "gpt_neox", "llama", "gemma", "bert"}
    assert architecture_for("mistral").gated and architecture_for("qwen2").gated


def test_unsupported_architecture_lists_supported_ones():
    with pytest.raises(ModelError, match=r"not supported; supported types: .*bert.*gpt2.*llama"):
        architecture_for("t5")


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load model"):
        load_subject_model(str(tmp_path / "no-such-model"), device="cpu")


def test_layer_out_of_range(tmp_path):
    subject = load_subject_model(str(tiny_models.build("gpt2", tmp_path / "m")), device="cpu")
    with pytest.raises(InputError, match=r"layer 7 out of range: .* has layers 0..2"):
        subject.check_layers([0, 7])


def test_default_model_name():
    assert resolve_model_name("default") == resolve_model_name(None) == "all-MiniLM-L6-v2"
    assert resolve_model_name("gpt2-xl") == "gpt2-xl"


@pytest.mark.slow
def test_default_model_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    subject = load_subject_model("default", device="cpu")
    assert (subject.n_layers, subject.n_neurons, subject.architecture.family) == (6, 1536, "bert")


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model", "models/org/name"])
def test_a_missing_model_folder_is_named_as_a_folder(name):
    with pytest.raises(ModelError, match="no such folder") as raised:
        load_subject_model(name, device="cpu")
    assert "Repo id" not in str(raised.value) and "huggingface.co" not in str(raised.value)


def test_an_unusable_device_is_an_input_error_not_a_torch_crash(tmp_path):
    path = str(tiny_models.build("gpt2", tmp_path / "m"))
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        load_subject_model(path, device="tpu")


def test_device_map_is_a_strategy_or_a_json_object(tmp_path):
    assert parse_device_map("auto") == "auto" and parse_device_map("balanced_low_0") == "balanced_low_0"
    assert parse_device_map('{"h.0": 0, "h.1": "cpu"}') == {"h.0": 0, "h.1": "cpu"}
    for bad in ("everywhere", "[1, 2]", "{}"):
        with pytest.raises(InputError, match="neither auto, balanced"):
            parse_device_map(bad)
    subject = load_subject_model(str(tiny_models.build("gpt2", tmp_path / "m")), device="cpu", device_map="auto")
    assert subject.device == "cpu" and [subject.layer_device(layer).type for layer in range(3)] == ["cpu"] * 3
