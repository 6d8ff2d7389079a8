"""Simulated pipeline stages: which decoder layers end a stage (SPEC §2).

The L decoder layers are split into ``pp_size`` contiguous stages, as even as possible,
earlier stages one layer longer (L=28, pp_size=8 → 4,4,4,4,3,3,3,3). The output of the
last layer of every non-final stage is a boundary (L=28 → layers 3, 7, 11, 15, 18, 21,
24; 0-based).
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

__all__ = ["boundary_layers", "find_decoder_layers", "stage_sizes"]

# Last attribute name of the decoder-layer ModuleList in Hugging Face decoder-only models:
# Qwen2/Llama/Mistral ``model.layers``, GPT-NeoX ``gpt_neox.layers``, OPT
# ``model.decoder.layers``, GPT-2/Falcon/Bloom ``transformer.h``.
_LAYER_LIST_NAMES = ("layers", "h", "blocks")


def _check_stages(num_layers: int, pp_size: int) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers={num_layers!r} is out of range: must be an integer >= 1")
    if isinstance(pp_size, bool) or not isinstance(pp_size, int) or not 1 <= pp_size <= num_layers:
        raise ValueError(f"pp_size={pp_size!r} is out of range: must be an integer in [1, {num_layers}] (num_layers)")


def stage_sizes(num_layers: int, pp_size: int) -> list[int]:
    """Layers per stage: contiguous, as even as possible, earlier stages one longer.

    Args:
        num_layers: L, decoder layers of the model (≥ 1).
        pp_size: number of stages, 1 ≤ pp_size ≤ L.

    Returns:
        ``pp_size`` positive ints summing to L, non-increasing.
    """
    _check_stages(num_layers, pp_size)
    base, extra = divmod(num_layers, pp_size)
    return [base + 1 if stage < extra else base for stage in range(pp_size)]


def boundary_layers(num_layers: int, pp_size: int) -> list[int]:
    """0-based indices of the last layer of every non-final stage (``pp_size − 1`` of them).

    Args:
        num_layers: L, decoder layers of the model (≥ 1).
        pp_size: number of stages, 1 ≤ pp_size ≤ L.
    """
    boundaries, end = [], 0
    for size in stage_sizes(num_layers, pp_size)[:-1]:
        end += size
        boundaries.append(end - 1)
    return boundaries


def _expected_num_layers(model: nn.Module) -> Optional[int]:
    """``num_hidden_layers`` of the first Hugging Face config found in ``model`` (text part)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None:
            continue
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        num = getattr(config, "num_hidden_layers", None)
        if isinstance(num, int):
            return num
    return None


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers of a Hugging Face decoder-only model.

    Works through wrappers (FSDP1 ``_fsdp_wrapped_module``, activation-checkpoint wrappers,
    peft, DDP ``.module``) because it searches ``model.named_modules()``: the candidates are
    ModuleLists named ``layers``, ``h`` or ``blocks``; when the model carries a config, only
    those whose length is its ``num_hidden_layers`` count. The elements are returned as they
    sit in the list (e.g. FSDP1-wrapped layers), which is where the codec hooks them.

    Args:
        model: the (possibly wrapped) model.

    Raises:
        ValueError: no candidate, or more than one (the message lists them; pass the layers
            explicitly then).
    """
    expected = _expected_num_layers(model)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _LAYER_LIST_NAMES and len(module) > 0
    ]
    matching = [(name, module) for name, module in found if expected is None or len(module) == expected]
    if len(matching) == 1:
        return matching[0][1]
    described = ", ".join(f"{name} (len {len(module)})" for name, module in found) or "none"
    if not matching:
        raise ValueError(
            f"find_decoder_layers: no decoder-layer ModuleList in {type(model).__name__}"
            f"{'' if expected is None else f' with num_hidden_layers={expected} entries'}; "
            f"ModuleLists named {list(_LAYER_LIST_NAMES)} found: {described}"
        )
    raise ValueError(
        f"find_decoder_layers: several decoder-layer candidates in {type(model).__name__}: "
        f"{', '.join(name for name, _ in matching)}; pass the layers explicitly"
    )
