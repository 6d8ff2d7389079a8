"""Every knob is validated at construction with an error naming field, value and range."""

import pytest

from verl_commeff.config import (
    AdaptiveLambdaConfig,
    AnchorConfig,
    CodecConfig,
    CommEffConfig,
    CommEffConfigError,
    DPCodecConfig,
    MergerConfig,
    check_against_model,
)


def test_defaults_are_the_seed_k5_run():
    c = CommEffConfig()
    assert (c.codec.rank, c.codec.pp_size, c.codec.seed, c.codec.q_source) == (77, 8, 0, "anchor")
    assert (c.anchor.delay_k, c.anchor.cadence, c.anchor.beta) == (5, 5, 0.5)
    assert (c.merger.name, c.merger.alpha, c.merger.age_decay) == ("signed_ema", 0.25, 1.0)
    # the dose: the evidence dose since issue 17 (its λ* up to 1/(1 − α)), which turns the anchor's probe on
    assert (c.merger.adaptive.mode, c.merger.adaptive.cap, c.anchor.probe) == ("evidence", 4 / 3, "on")
    seed = CommEffConfig(merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off")))  # the seed's plain signed_ema
    assert (seed.merger.adaptive.lambda0, seed.merger.adaptive.cap, seed.anchor.probe) == (1.0, 1.0, "off")
    assert c.q_cadence == 5
    assert len(c.anchor.targets) == 7


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (CodecConfig, dict(rank=0), "commeff.codec.rank=0 is out of range: must be an integer >= 1"),
        (CodecConfig, dict(pp_size=1), "commeff.codec.pp_size=1 is out of range: must be an integer >= 2"),
        (CodecConfig, dict(q_source="slow"), "commeff.codec.q_source='slow' is not valid: must be one of ['anchor', 'fast']"),
        (CodecConfig, dict(q_cadence=0), "commeff.codec.q_cadence=0 is out of range"),
        (AnchorConfig, dict(delay_k=-1), "commeff.anchor.delay_k=-1 is out of range: must be an integer >= 0"),
        (AnchorConfig, dict(cadence=0), "commeff.anchor.cadence=0 is out of range: must be an integer >= 1"),
        (AnchorConfig, dict(cadence=2.5), "commeff.anchor.cadence=2.5 is out of range"),
        (AnchorConfig, dict(beta=1.0), r"commeff.anchor.beta=1.0 is out of range: must be a number in [0, 1)"),
        (AnchorConfig, dict(beta=-0.1), "commeff.anchor.beta=-0.1 is out of range"),
        (AnchorConfig, dict(placement="remote"), "commeff.anchor.placement='remote' is not valid"),
        (AnchorConfig, dict(sync="loose"), "commeff.anchor.sync='loose' is not valid"),
        (AnchorConfig, dict(transport="fp8"), "commeff.anchor.transport='fp8' is not valid"),
        (AnchorConfig, dict(snapshot_dtype="fp16"), "commeff.anchor.snapshot_dtype='fp16' is not valid"),
        (AnchorConfig, dict(snapshot_keyframe_every=0), "commeff.anchor.snapshot_keyframe_every=0 is out of range"),
        (AnchorConfig, dict(targets=[]), "commeff.anchor.targets=[] is out of range"),
        (MergerConfig, dict(alpha=1.5), "commeff.merger.alpha=1.5 is out of range: must be a number in [0, 1]"),
        (MergerConfig, dict(alpha=-0.01), "commeff.merger.alpha=-0.01 is out of range"),
        (MergerConfig, dict(age_decay=0.0), r"commeff.merger.age_decay=0.0 is out of range: must be a number in (0, 1]"),
        (MergerConfig, dict(age_decay=1.1), "commeff.merger.age_decay=1.1 is out of range"),
        (MergerConfig, dict(name="sign_sgd"), "commeff.merger.name='sign_sgd' is not valid: must be one of"),
        (MergerConfig, dict(checksum_every=-1), "commeff.merger.checksum_every=-1 is out of range"),
        (AdaptiveLambdaConfig, dict(cap=-0.5), "commeff.merger.adaptive.cap=-0.5 is out of range"),
        (AdaptiveLambdaConfig, dict(lambda0=-1.0), "commeff.merger.adaptive.lambda0=-1.0 is out of range"),
        (AdaptiveLambdaConfig, dict(window=0), "commeff.merger.adaptive.window=0 is out of range"),
        (AdaptiveLambdaConfig, dict(mode="median"), "commeff.merger.adaptive.mode='median' is not valid"),
    ],
)
def test_invalid_value_raises_naming_field_value_and_range(cls, kwargs, message):
    with pytest.raises(CommEffConfigError) as err:
        cls(**kwargs)
    assert message in str(err.value)


def test_unknown_merger_lists_the_valid_names():
    with pytest.raises(CommEffConfigError) as err:
        MergerConfig(name="nope")
    assert "'signed_ema'" in str(err.value) and "'none'" in str(err.value)


def test_model_dependent_checks():
    check_against_model(CodecConfig(rank=64, pp_size=8), hidden_size=64, num_layers=8)
    with pytest.raises(CommEffConfigError, match=r"commeff.codec.rank=77 is out of range: must be an integer in \[1, 64\]"):
        check_against_model(CodecConfig(rank=77), hidden_size=64, num_layers=28)
    with pytest.raises(CommEffConfigError, match=r"commeff.codec.pp_size=8 is out of range: must be an integer in \[2, 4\]"):
        check_against_model(CodecConfig(rank=8, pp_size=8), hidden_size=64, num_layers=4)


def test_cross_field_rules():
    with pytest.raises(CommEffConfigError, match="multiple of commeff.anchor.cadence=5"):
        CommEffConfig(codec=CodecConfig(q_cadence=7))
    off = MergerConfig(adaptive=AdaptiveLambdaConfig(mode="off"))
    assert CommEffConfig(codec=CodecConfig(q_cadence=7, q_source="fast"), merger=off).q_cadence == 7
    with pytest.raises(CommEffConfigError, match="mode='evidence' \\(the default\\) turns commeff.anchor.probe on, which "
                                                 "needs commeff.codec.q_source='anchor'"):
        CommEffConfig(codec=CodecConfig(q_source="fast"))
    with pytest.raises(CommEffConfigError, match="mode='evidence' \\(the default\\) needs commeff.anchor.sync='strict'"):
        CommEffConfig(anchor=AnchorConfig(sync="free"))
    with pytest.raises(CommEffConfigError, match="needs commeff.anchor.enable=True"):
        CommEffConfig(anchor=AnchorConfig(enable=False))
    # No anchor: the merger stays cold, the default (evidence) dose asks nothing and the probe stays off.
    no_anchor = CommEffConfig(anchor=AnchorConfig(enable=False), codec=CodecConfig(q_source="fast"))
    assert no_anchor.anchor.probe == "off"
    with pytest.raises(CommEffConfigError, match="commeff.anchor.probe=on needs commeff.anchor.enable=True"):
        CommEffConfig(anchor=AnchorConfig(enable=False, probe="on"), codec=CodecConfig(q_source="fast"))
    with pytest.raises(CommEffConfigError, match="transport='sign'"):
        CommEffConfig(anchor=AnchorConfig(transport="sign"), merger=MergerConfig(adaptive=AdaptiveLambdaConfig(mode="cos")))


@pytest.mark.parametrize("merger, mode, expected", [
    ("signed_ema", "off", "sign"),  # the default: only sign(M̄) is read
    ("signed_ema", "ratio", "sign"),
    ("signed_ema", "cos", "shards"),  # cos(G, M̄) needs M̄'s magnitudes
    ("none", "off", "sign"),
])
def test_transport_auto_resolves_from_the_merger(merger, mode, expected):
    c = CommEffConfig(merger=MergerConfig(name=merger, adaptive=AdaptiveLambdaConfig(mode=mode)))
    assert c.anchor.transport == expected
    assert CommEffConfig().anchor.transport == "sign"  # the default config sends sign bits
    explicit = CommEffConfig(anchor=AnchorConfig(transport="shards"))
    assert explicit.anchor.transport == "shards"  # an explicit choice is kept


def test_transport_auto_is_shards_for_a_merger_that_needs_magnitudes():
    from verl_commeff.mergers.registry import MERGER_REGISTRY, register_merger
    from verl_commeff.mergers.signed_ema import SignedEMAMerger

    @register_merger("_test_dense_reader")
    class DenseReader(SignedEMAMerger):
        signs_suffice = False

    try:
        assert CommEffConfig(merger=MergerConfig(name="_test_dense_reader")).anchor.transport == "shards"
    finally:
        del MERGER_REGISTRY["_test_dense_reader"]


def test_nested_dicts_from_yaml_become_dataclasses_and_fields_are_frozen():
    c = CommEffConfig(codec={"rank": 16}, anchor={"delay_k": 20, "cadence": 20}, merger={"adaptive": {"mode": "ratio"}})
    assert isinstance(c.codec, CodecConfig) and c.codec.rank == 16
    assert c.anchor.delay_k == 20 and c.q_cadence == 20
    assert isinstance(c.merger.adaptive, AdaptiveLambdaConfig) and c.merger.adaptive.mode == "ratio"
    with pytest.raises(Exception, match="frozen"):
        c.anchor.delay_k = 3


def test_yaml_node_matches_the_dataclasses_and_documents_every_field():
    """The shipped yaml has exactly the dataclass fields, the same defaults, and a comment per field."""
    import dataclasses
    import pathlib

    import verl_commeff
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    path = pathlib.Path(verl_commeff.__file__).parent / "conf" / "commeff.yaml"
    node = OmegaConf.load(path)
    built = omega_conf_to_dataclass(node)
    assert built == CommEffConfig()

    lines = path.read_text().splitlines()

    def check(cls, sub, indent):
        names = {f.name for f in dataclasses.fields(cls)} - {"_target_"}
        assert set(sub.keys()) - {"_target_"} == names, cls.__name__
        for name in names:
            i = next(i for i, line in enumerate(lines) if line.startswith(" " * indent + f"{name}:"))
            assert lines[i - 1].strip().startswith("#"), f"{cls.__name__}.{name} has no comment in the yaml"

    check(CommEffConfig, node, 0)
    check(CodecConfig, node.codec, 2)
    check(AnchorConfig, node.anchor, 2)
    check(MergerConfig, node.merger, 2)
    check(AdaptiveLambdaConfig, node.merger.adaptive, 4)
    check(DPCodecConfig, node.dp_codec, 2)


def test_to_commeff_config_from_yaml_node_and_unknown_keys():
    from omegaconf import OmegaConf

    from verl_commeff.config import to_commeff_config

    node = OmegaConf.create({"_target_": "x", "codec": {"rank": 16, "q_source": "fast"},
                             "merger": {"adaptive": {"mode": "ratio", "cap": 0.5}}})
    cfg = to_commeff_config(node)
    assert cfg.codec.rank == 16 and cfg.merger.adaptive.cap == 0.5
    with pytest.raises(CommEffConfigError, match=r"commeff.anchor.delay is not a knob: commeff.anchor has \[.*'delay_k'"):
        to_commeff_config({"anchor": {"delay": 3}})
    with pytest.raises(CommEffConfigError, match="commeff.merger.adaptive.mode='x'"):
        to_commeff_config({"merger": {"adaptive": {"mode": "x"}}})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(enable="yes"), "commeff.dp_codec.enable='yes' is out of range: must be true or false"),
        (dict(rank=0), "commeff.dp_codec.rank=0 is out of range: must be an integer >= 1"),
        (dict(rank=4.0), "commeff.dp_codec.rank=4.0 is out of range"),
        (dict(start_iter=-1), "commeff.dp_codec.start_iter=-1 is out of range: must be an integer >= 0"),
        (dict(min_compression_rate=0.0), "commeff.dp_codec.min_compression_rate=0.0 is out of range: must be a number in (0, inf)"),
        (dict(min_compression_rate=float("inf")), "commeff.dp_codec.min_compression_rate=inf is out of range"),
        (dict(min_compression_rate="2"), "commeff.dp_codec.min_compression_rate='2' is out of range"),
        (dict(use_error_feedback=1), "commeff.dp_codec.use_error_feedback=1 is out of range: must be true or false"),
        (dict(warm_start=None), "commeff.dp_codec.warm_start=None is out of range"),
        (dict(seed=-3), "commeff.dp_codec.seed=-3 is out of range: must be an integer >= 0"),
    ],
)
def test_dp_codec_knobs_are_validated(kwargs, message):
    from verl_commeff.config import DPCodecConfig

    with pytest.raises(CommEffConfigError) as err:
        DPCodecConfig(**kwargs)
    assert message in str(err.value)


def test_dp_codec_section_defaults_and_yaml_override():
    from verl_commeff.config import DPCodecConfig, to_commeff_config

    c = CommEffConfig()
    assert isinstance(c.dp_codec, DPCodecConfig) and c.dp_codec.enable is False
    assert (c.dp_codec.rank, c.dp_codec.start_iter, c.dp_codec.min_compression_rate) == (16, 10, 2.0)
    assert (c.dp_codec.params, c.dp_codec.factor_precision, c.dp_codec.embedding_rank) == ("all_2d", "bf16", None)
    assert c.dp_codec.use_error_feedback and c.dp_codec.warm_start
    cfg = to_commeff_config({"dp_codec": {"enable": True, "rank": 4, "start_iter": 0}})
    assert cfg.dp_codec.enable and cfg.dp_codec.rank == 4 and cfg.dp_codec.start_iter == 0
    with pytest.raises(CommEffConfigError, match=r"commeff.dp_codec.ranks is not a knob"):
        to_commeff_config({"dp_codec": {"ranks": 4}})
