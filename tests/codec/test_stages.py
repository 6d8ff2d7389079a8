import pytest
import torch.nn as nn

from verl_commeff.codec import BoundaryCodec, boundary_layers, find_decoder_layers, stage_sizes
from verl_commeff.config import CodecConfig, CommEffConfigError, check_against_model

from tests.codec.tiny import HIDDEN, codec_config, tiny_qwen2


def test_seed_surface_stages_and_boundaries():
    assert stage_sizes(28, 8) == [4, 4, 4, 4, 3, 3, 3, 3]
    assert boundary_layers(28, 8) == [3, 7, 11, 15, 18, 21, 24]


@pytest.mark.parametrize("num_layers, pp_size", [(28, 8), (28, 7), (5, 5), (7, 3), (4, 2), (9, 1), (64, 12)])
def test_stages_are_contiguous_even_and_front_loaded(num_layers, pp_size):
    sizes = stage_sizes(num_layers, pp_size)
    assert len(sizes) == pp_size and sum(sizes) == num_layers
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)
    # Boundaries are the running ends of the non-final stages.
    ends = [sum(sizes[: i + 1]) - 1 for i in range(pp_size - 1)]
    assert boundary_layers(num_layers, pp_size) == ends


def test_explicit_small_cases():
    assert stage_sizes(7, 3) == [3, 2, 2]
    assert boundary_layers(7, 3) == [2, 4]
    assert boundary_layers(4, 4) == [0, 1, 2]
    assert boundary_layers(9, 1) == []


@pytest.mark.parametrize(
    "num_layers, pp_size, match", [(28, 29, r"pp_size=29 .*\[1, 28\]"), (28, 0, "pp_size=0"), (0, 1, "num_layers=0")]
)
def test_stage_functions_reject_bad_arguments(num_layers, pp_size, match):
    with pytest.raises(ValueError, match=match):
        stage_sizes(num_layers, pp_size)


@pytest.mark.parametrize(
    "rank, pp_size, match",
    [(65, 2, r"commeff\.codec\.rank=65 .*\[1, 64\]"), (8, 5, r"commeff\.codec\.pp_size=5 .*\[2, 4\]")],
)
def test_invalid_rank_or_pp_size_raise_the_config_error(rank, pp_size, match):
    cfg = CodecConfig(rank=rank, pp_size=pp_size)
    with pytest.raises(CommEffConfigError, match=match):
        check_against_model(cfg, HIDDEN, 4)
    with pytest.raises(CommEffConfigError, match=match):
        BoundaryCodec(cfg, HIDDEN, 4)


def test_rank_zero_and_pp_one_rejected_by_the_config():
    with pytest.raises(CommEffConfigError, match="rank=0"):
        CodecConfig(rank=0)
    with pytest.raises(CommEffConfigError, match="pp_size=1"):
        CodecConfig(pp_size=1)


class _Wrapper(nn.Module):
    """Stand-in for FSDP1 / DDP wrappers: the model under ``_fsdp_wrapped_module`` or ``module``."""

    def __init__(self, inner, attr):
        super().__init__()
        setattr(self, attr, inner)


def test_find_decoder_layers_plain_and_through_wrappers():
    model = tiny_qwen2(num_layers=4)
    layers = model.model.layers
    assert find_decoder_layers(model) is layers
    assert find_decoder_layers(_Wrapper(_Wrapper(model, "_fsdp_wrapped_module"), "module")) is layers


def test_find_decoder_layers_through_peft():
    peft = pytest.importorskip("peft")
    model = tiny_qwen2(num_layers=4)
    layers = model.model.layers
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert find_decoder_layers(wrapped) is layers


def test_find_decoder_layers_errors_name_the_model_class():
    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4))

    with pytest.raises(ValueError, match="NoLayers"):
        find_decoder_layers(NoLayers())

    class TwoStacks(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Module()
            self.a.layers = nn.ModuleList([nn.Linear(2, 2)])
            self.b = nn.Module()
            self.b.layers = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ValueError, match=r"several .* a\.layers, b\.layers"):
        find_decoder_layers(TwoStacks())


def test_install_checks_the_layer_count():
    codec = BoundaryCodec(codec_config(pp_size=2), HIDDEN, 6)
    with pytest.raises(ValueError, match="4 decoder layers.*num_layers=6"):
        codec.install(tiny_qwen2(num_layers=4))
