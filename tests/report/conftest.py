"""Fixtures of the report tests: the seed's three arms written once in every format."""

from pathlib import Path

import pytest

from tests.report.synthetic_runs import WRITERS, seed_arms, write_run


@pytest.fixture(scope="session")
def seed_records():
    """The seed's arms as verl would log them (dense control, K=5, K=20 with a spiral at 91)."""
    return seed_arms()


@pytest.fixture(scope="session")
def seed_runs(tmp_path_factory, seed_records) -> dict[str, dict[str, Path]]:
    """format → arm → path, for the same records written as JSONL, TensorBoard and wandb CSV."""
    root = tmp_path_factory.mktemp("seed_runs")
    return {fmt: {arm: write_run(records, root, arm, fmt) for arm, records in seed_records.items()} for fmt in WRITERS}
