"""Checks on the run's inputs before Ray starts: the model directory, the data files, the run's length.

Without them, a bad model path, a parquet without the columns verl's reward reads, or
``max_response_length=0`` end minutes later, inside a Ray actor, in messages that do not
name the cause (``HFValidationError``, ``Received an empty list as keys``), and
``commeff.codec.rank`` larger than the model's hidden size is reported only after the
model is loaded. Everything here reads files only (``config.json``, parquet footers), so
it costs well under a second. Remote paths (``hdfs://``, ``s3://``, ...) and hub model ids
that are not in the local cache are left to verl.

:func:`check_inputs` is called by :mod:`verl_commeff.main` after the config checks.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

__all__ = ["check_data", "check_inputs", "check_model", "check_run_length"]

logger = logging.getLogger("verl_commeff")

_REMOTE = ("hdfs://", "s3://", "gs://", "http://", "https://", "oss://")
# The columns verl's default reward path reads (``data_source`` picks the scorer, ``reward_model.ground_truth``).
_REWARD_COLUMNS = ("reward_model", "data_source")


def _error(message: str):
    from verl_commeff.config import CommEffConfigError

    return CommEffConfigError(message)


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``)."""
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") != 1 or os.path.exists(path.split("/")[0])


def _model_config_file(path: str) -> Optional[str]:
    """``config.json`` of the model at ``path`` (a local dir, or a hub id found in the local cache); None if unknown.

    Raises:
        CommEffConfigError: a local path that does not exist, or a directory without ``config.json``.
    """
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        found = os.path.join(local, "config.json")
        if not os.path.isfile(found):
            raise _error(f"actor_rollout_ref.model.path={path!r} has no config.json: not a Hugging Face model directory")
        return found
    if path.startswith(_REMOTE):
        return None
    if _looks_local(path):
        raise _error(f"actor_rollout_ref.model.path={path!r} does not exist (a local path: build or download the "
                     "model there, e.g. `python -m verl_commeff.presets --out DIR` for the tiny CPU model)")
    try:  # a hub id: use its config only if it is already cached (no download here)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # an id the hub library rejects is reported by verl itself
        return None
    return cached if isinstance(cached, str) else None


def check_model(config: Any, commeff: Any) -> None:
    """The model directory exists and the codec fits the model (rank ≤ hidden size, pp_size ≤ layers).

    Args:
        config: the whole trainer config (``actor_rollout_ref.model.path`` is read).
        commeff: the validated :class:`~verl_commeff.config.CommEffConfig`.

    Raises:
        CommEffConfigError: a missing local model path or config.json, or codec knobs the model cannot take.
    """
    from verl_commeff.config import CommEffConfigError, check_against_model

    path = str(config.actor_rollout_ref.model.path)
    found = _model_config_file(path)
    if found is None or not commeff.enable or not commeff.codec.enable:
        return
    with open(found) as f:
        hf = json.load(f)
    hf = hf.get("text_config", hf) if "hidden_size" not in hf else hf
    if "hidden_size" not in hf or "num_hidden_layers" not in hf:
        return  # an architecture the codec check cannot read: the codec's own check runs at set-up
    try:
        check_against_model(commeff.codec, int(hf["hidden_size"]), int(hf["num_hidden_layers"]))
    except CommEffConfigError as e:
        raise _error(f"{e} (the model at {path} has hidden_size={hf['hidden_size']}, "
                     f"num_hidden_layers={hf['num_hidden_layers']})") from None


def _as_list(files: Any) -> list[str]:
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    return [str(f) for f in files]


def check_data(config: Any) -> Optional[int]:
    """The data files exist and carry the columns verl reads; the lengths are positive.

    Returns:
        The number of training rows (from the parquet footers), or None when unknown
        (remote or non-parquet files).

    Raises:
        CommEffConfigError: a non-positive ``data.max_prompt_length``/``max_response_length``,
            a missing file, or a parquet without the prompt column or the reward's columns
            (unless ``reward.custom_reward_function.path`` is set).
    """
    data = config.data
    for key in ("max_prompt_length", "max_response_length"):
        value = data.get(key)
        if value is not None and int(value) < 1:
            raise _error(f"data.{key}={value} is out of range: must be >= 1 (tokens)")
    custom = config.get("reward", {}).get("custom_reward_function", {}).get("path")
    required = [str(data.get("prompt_key", "prompt"))] + ([] if custom else list(_REWARD_COLUMNS))
    train_rows: Optional[int] = 0
    for key in ("train_files", "val_files"):
        for f in _as_list(data.get(key)):
            if f.startswith(_REMOTE):
                train_rows = None if key == "train_files" else train_rows
                continue
            local = os.path.expanduser(f)
            if not os.path.exists(local):
                raise _error(f"data.{key}: {f} does not exist")
            if not local.endswith(".parquet"):
                train_rows = None if key == "train_files" else train_rows
                continue
            import pyarrow.parquet as pq

            meta = pq.read_metadata(local)
            columns = meta.schema.to_arrow_schema().names
            missing = [c for c in required if c not in columns]
            if missing:
                why = "the prompt" if missing[0] == required[0] else "verl's reward (data_source picks the scorer, " \
                                                                    "reward_model.ground_truth is the answer)"
                raise _error(f"data.{key}: {f} has no column {missing[0]!r}, needed by {why}; its columns are "
                             f"{columns}")
            if key == "train_files" and train_rows is not None:
                train_rows += meta.num_rows
    return train_rows


def check_run_length(config: Any, commeff: Any, train_rows: Optional[int]) -> None:
    """Warn when K reaches past the run: every fire would be a warm-up fire replaying tick 1.

    Args:
        config: the trainer config (batch sizes, ``trainer.total_training_steps`` / ``total_epochs``).
        commeff: the validated comm-eff config.
        train_rows: training rows, for the run length when ``total_training_steps`` is unset.
    """
    from verl_commeff.clock import ticks_per_step
    from verl_commeff.schedule import FireSchedule

    if not (commeff.enable and commeff.anchor.enable):
        return
    actor = config.actor_rollout_ref.actor
    batch = int(config.data.train_batch_size)
    tps = ticks_per_step(batch, int(actor.ppo_mini_batch_size), int(actor.ppo_epochs))
    steps = config.trainer.get("total_training_steps")
    if steps is None:
        if train_rows is None:
            return
        steps = (train_rows // batch) * int(config.trainer.total_epochs)  # verl's dataloader drops the last batch
    ticks = int(steps) * tps
    schedule = FireSchedule(commeff.anchor.delay_k, commeff.anchor.cadence, tps, commeff.q_cadence)
    fires = [t for t in range(commeff.anchor.cadence, ticks + 1, commeff.anchor.cadence)]
    warmup = [t for t in fires if schedule.is_warmup(t)]
    if fires and len(warmup) == len(fires):
        logger.warning(
            "commeff.anchor.delay_k=%d reaches past the run (%d steps x %d ticks = %d ticks): all %d fires are warm-up "
            "fires replaying tick 1, none replays the mini-batch K ticks back. Use a K below %d or a longer run.",
            commeff.anchor.delay_k, int(steps), tps, ticks, len(fires), ticks)
    elif not fires:
        logger.warning("commeff.anchor.cadence=%d is longer than the run (%d ticks): the anchor never fires",
                       commeff.anchor.cadence, ticks)


def check_inputs(config: Any) -> None:
    """All of the above, in order (model, data, run length); see the module doc.

    Raises:
        CommEffConfigError: see :func:`check_model` and :func:`check_data`.
    """
    from verl_commeff.config import to_commeff_config

    commeff = to_commeff_config(config.get("commeff"))
    check_model(config, commeff)
    rows = check_data(config)
    check_run_length(config, commeff, rows)
