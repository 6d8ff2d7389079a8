"""verl-commeff: communication-efficient GRPO for verl (PowerSGD boundary codec + async anchor)."""

from setuptools import find_packages, setup

setup(
    name="verl-commeff",
    version="0.1.0",
    description="A verl plugin: PowerSGD-compressed actor updates corrected by an asynchronous stale-weight anchor",
    packages=find_packages(include=["verl_commeff", "verl_commeff.*"]),
    package_data={"verl_commeff": ["conf/*.yaml"]},
    python_requires=">=3.10,<3.13",
    install_requires=[
        "verl==0.9.1",
        # verl.workers.engine_workers needs these, but verl keeps them in its `verl-core` extra.
        "fastapi",
        "uvicorn",
        # the default v1 trainer imports transfer_queue (also only in `verl-core`).
        "TransferQueue",
        # verl/workers/rollout/router.py imports it (the v1 trainer needs it), but verl declares it nowhere.
        "cachetools",
        # `verl-commeff report`
        "matplotlib",
        "pandas",
        "tensorboard",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "pytest-timeout"]},
    entry_points={
        "verl.plugins": ["commeff = verl_commeff.plugin"],
        "console_scripts": ["verl-commeff = verl_commeff.cli:main"],
    },
)
