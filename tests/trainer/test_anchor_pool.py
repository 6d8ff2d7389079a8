"""placement=separate on a cluster without room for the anchor's pool: a clear error at start, not a hang."""

import pytest

from verl_commeff.config import AnchorConfig, CommEffConfigError


@pytest.fixture(scope="module")
def two_cpu_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _pool(count):
    from verl.single_controller.ray import RayResourcePool

    return RayResourcePool(process_on_nodes=[count], use_gpu=False, max_colocate_count=1, name_prefix="t_anchor")


def test_a_pool_the_cluster_cannot_grant_fails_naming_what_is_missing(two_cpu_ray):
    from verl_commeff.trainer.anchor_group import ensure_pool_fits

    with pytest.raises(CommEffConfigError, match=r"could not grant the anchor's own pool \(3 × \{'CPU': 1\}.*"
                                                 r"placement_timeout_s=2s; free now: \{'CPU': 2\.0\}"):
        ensure_pool_fits(_pool(3), timeout_s=2)


def test_a_pool_that_fits_passes_and_leaves_the_resources_free(two_cpu_ray):
    from verl_commeff.trainer.anchor_group import anchor_resource_pool

    pool = anchor_resource_pool(AnchorConfig(placement="separate", n_gpus_per_node=2, placement_timeout_s=30),
                                actor_pool=None, actor_world=2)
    assert pool._store == [2]
    # the probe gave its bundles back: verl can now create the pool's own placement group
    assert two_cpu_ray.get(pool.get_placement_groups(device_name="cpu")[0].ready(), timeout=30) is not None


def test_the_timeout_knob_is_validated():
    with pytest.raises(CommEffConfigError, match="commeff.anchor.placement_timeout_s=0"):
        AnchorConfig(placement_timeout_s=0)


def test_anchor_world_must_be_between_one_and_the_actors():
    from verl_commeff.trainer.anchor_group import anchor_resource_pool

    with pytest.raises(CommEffConfigError, match=r"commeff.anchor.n_gpus_per_node × nnodes = 4 must be between 1 "
                                                 r"and the actor's world size 2"):
        anchor_resource_pool(AnchorConfig(placement="separate", n_gpus_per_node=2, nnodes=2), actor_pool=None,
                             actor_world=2)


def test_a_smaller_anchor_needs_fsdp2():
    from verl_commeff.trainer.anchor_group import anchor_resource_pool

    with pytest.raises(CommEffConfigError, match=r"= 1 differs from the actor's world size 2, which needs "
                                                 r"actor_rollout_ref.actor.strategy=fsdp2 \(got 'fsdp'\)"):
        anchor_resource_pool(AnchorConfig(placement="separate", n_gpus_per_node=1), actor_pool=None, actor_world=2,
                             strategy="fsdp")
