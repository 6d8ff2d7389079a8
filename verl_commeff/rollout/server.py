"""The ``hf`` rollout server: a Ray async actor with the interface verl's agent loop and trainer call.

One :class:`HFRolloutServer` serves one rollout replica (one actor rank, since the
backend requires ``tensor_model_parallel_size=1``). It provides what verl 0.9.1 calls on
a server handle (``verl/workers/rollout/replica.py``, ``llm_server.py``):

* ``generate(prompt_ids, sampling_params, request_id, ...) -> TokenOutput`` (token in,
  token out), with ``extra_fields["global_steps"]`` like verl's vLLM server;
* ``sleep`` / ``wake_up(tags)``: with ``rollout.free_cache_engine`` the weights move to
  host memory while the trainer uses the accelerator (a no-op when generating on the host),
  and generation waits until ``wake_up`` resumes ``kv_cache``;
* ``abort_all_requests`` / ``resume_generation``: stop the running batch at its next token
  (partial tokens, ``stop_reason="aborted"``) and park (or reject) new requests until resumed;
* ``clear_kv_cache`` / ``release_kv_cache`` / ``resume_kv_cache``: Hugging Face keeps no
  KV cache between ``generate`` calls, so there is nothing to keep or free;
* ``update_weights(named_tensors, first, last, global_steps)``: the receiving end of
  :class:`verl_commeff.rollout.adapter.HFServerAdapter`.

Concurrent requests are batched: requests that share a sampling spec go through one
``model.generate`` call, up to ``rollout.max_num_seqs`` sequences and
``rollout.max_num_batched_tokens`` padded prompt+response tokens. Generation runs in a
thread so the actor keeps accepting requests and control calls meanwhile.

Which requests share a batch depends on arrival timing, so sampling does not use a shared
random stream: every request is sampled with its own seed (see
:class:`verl_commeff.rollout.generation.SeededGumbelSampler`), its ``sampling_params["seed"]``
when it has one (:mod:`verl_commeff.rollout.agent_loop` sends one per trajectory), else
one derived from ``rollout.seed``, this replica, the weights' step, the prompt and how many
identical prompts this replica has already seen at that step (reproducible as long as
identical prompts arrive in the same order).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from verl_commeff.rollout.generation import Generated, HFGenerator, eos_token_ids
from verl_commeff.rollout.options import (
    SamplingSpec,
    UnsupportedRolloutOption,
    check_rollout_config,
    parse_sampling_params,
    request_seed,
    response_budget,
    sampling_seed,
)

__all__ = ["HFRolloutServer", "generation_device", "server_actor_name"]

_log = logging.getLogger(__name__)

# How long the batcher waits after the first queued request so concurrent ones can join it.
BATCH_WINDOW_S = 0.01


def server_actor_name(replica_rank: int, suffix: str = "") -> str:
    """The Ray actor name of a replica's server, which the in-worker adapter looks up."""
    return f"hf_server_{replica_rank}{suffix}"


def generation_device(accelerator_id: Optional[str] = None) -> torch.device:
    """The device to generate on, as verl's platform names it (``cuda:1``, ``npu:0``, ``cpu``, ...).

    Args:
        accelerator_id: the Ray accelerator id of the actor rank this server sits next to
            (a physical id such as ``"3"``), or None to use the platform's current device.
            The server actor keeps the visible-devices variable it inherited from the node
            (``RAY_EXPERIMENTAL_NOSET_*``), so the id is looked up in that list; setting the
            variable instead would be too late once ``import verl`` has initialised the runtime.

    Returns:
        The torch device.
    """
    from verl.utils.device import get_device_id, get_device_name, get_visible_devices_keyword

    if accelerator_id is None:
        index = get_device_id()
        return torch.device(index) if isinstance(index, str) else torch.device(get_device_name(), index)
    keyword = get_visible_devices_keyword()
    visible = [v.strip() for v in os.environ.get(keyword, "").split(",") if v.strip()]
    if visible and accelerator_id not in visible:
        raise ValueError(f"hf rollout server: device {accelerator_id} is not in {keyword}={','.join(visible)}")
    return torch.device(get_device_name(), visible.index(accelerator_id) if visible else int(accelerator_id))


@dataclass
class _Request:
    """A queued generation request."""

    request_id: str
    prompt_ids: list[int]
    spec: SamplingSpec
    budget: int
    seed: int
    future: asyncio.Future = field(repr=False)


class HFRolloutServer:
    """Serves token-in/token-out generation for one replica with a Hugging Face model.

    Args:
        config: ``actor_rollout_ref.rollout`` (``RolloutConfig`` or DictConfig).
        model_config: ``actor_rollout_ref.model`` (``HFModelConfig`` or DictConfig).
        replica_rank: this replica's rank (part of the derived sampling seeds).
        accelerator_id: Ray accelerator id of the actor rank to share a device with
            (see :func:`generation_device`); None on the host or to use the current device.
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0, accelerator_id: Optional[str] = None):
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.device import get_torch_device
        from verl.utils.torch_dtypes import PrecisionType
        from verl.workers.config import HFModelConfig
        from verl.workers.rollout.utils import get_max_position_embeddings

        self.config = omega_conf_to_dataclass(config)
        check_rollout_config(self.config)
        self.model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        self.max_model_len = self.config.max_model_len or get_max_position_embeddings(self.model_config.hf_config)
        device = generation_device(accelerator_id)
        if device.index is not None:
            get_torch_device().set_device(device.index)

        tokenizer = self.model_config.tokenizer
        eos = eos_token_ids(tokenizer, self.model_config.generation_config)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.generator = HFGenerator.from_pretrained(
            self.model_config.local_path,
            self.model_config.hf_config,
            dtype=PrecisionType.to_dtype(self.config.dtype),
            device=device,
            eos_ids=eos,
            pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
            logprobs_mode=self.config.logprobs_mode,
            trust_remote_code=self.model_config.trust_remote_code,
        )
        _log.info("hf rollout replica %d: %s on %s", replica_rank, self.config.dtype, device)

        self.global_steps: Optional[int] = None
        self._queue: list[_Request] = []
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock = asyncio.Lock()  # one generate or weight copy at a time
        self._open = asyncio.Event()  # set while awake and not paused
        self._open.set()
        self._awake = True
        self._paused = False
        self._rejecting = False
        self._abort = threading.Event()  # stops the running batch
        self._running: list[str] = []
        self._seen: dict[tuple, int] = {}  # prompt -> identical requests so far at _seen_step (derived seeds)
        self._seen_step: Optional[int] = None

    # ------------------------------------------------------------------ generation

    async def ready(self) -> dict[str, Any]:
        """Report where the model lives (the replica awaits this to surface start-up errors)."""
        param = next(self.generator.model.parameters())
        return {"device": str(self.generator.device), "dtype": str(param.dtype), "max_model_len": self.max_model_len}

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
    ):
        """Generate a response for one prompt (called concurrently by verl's agent loop).

        Args:
            prompt_ids: prompt token ids.
            sampling_params: verl's sampling dict (see :mod:`verl_commeff.rollout.options`).
            request_id: caller's id (for abort bookkeeping; verl sends a fresh uuid, so it is not part of seeds).
            image_data: must be None (multi-modal input is not supported).
            video_data: must be None.
            audio_data: must be None.
            mm_processor_kwargs: must be empty.
            priority: accepted for interface compatibility; requests are served first come, first served.

        Returns:
            ``verl.workers.rollout.replica.TokenOutput`` with ``token_ids``, ``log_probs``
            (when ``sampling_params["logprobs"]``), ``stop_reason`` and ``extra_fields["global_steps"]``.

        Raises:
            UnsupportedRolloutOption: for multi-modal input or unsupported sampling params.
        """
        from verl.utils.tokenizer import normalize_token_ids
        from verl.workers.rollout.replica import TokenOutput

        if image_data is not None or video_data is not None or audio_data is not None or mm_processor_kwargs:
            raise UnsupportedRolloutOption("rollout.name=hf does not support multi-modal input (image/video/audio)")
        prompt_ids = normalize_token_ids(prompt_ids)
        spec, requested = parse_sampling_params(sampling_params, ignore_eos=self.config.ignore_eos)
        budget = response_budget(
            len(prompt_ids), self.config.prompt_length, self.config.response_length, self.max_model_len, requested
        )
        seed = sampling_seed(sampling_params)
        if seed is None:
            seed = self._derived_seed(prompt_ids)
        if self._paused and self._rejecting:
            result = Generated(token_ids=[], log_probs=None, aborted=True)
        else:
            future = asyncio.get_running_loop().create_future()
            self._queue.append(_Request(request_id, prompt_ids, spec, budget, seed, future))
            if self._batcher is None or self._batcher.done():
                self._batcher = asyncio.create_task(self._serve_queue())
            result = await future
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs if spec.logprobs else None,
            stop_reason="aborted" if result.aborted else "completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def _derived_seed(self, prompt_ids: list[int]) -> int:
        """A seed for a request without one: (rollout.seed, replica, step, prompt, occurrence of the prompt)."""
        if self._seen_step != self.global_steps:
            self._seen, self._seen_step = {}, self.global_steps  # only the current weights' step is kept
        prompt = tuple(prompt_ids)
        occurrence = self._seen.get(prompt, 0)
        self._seen[prompt] = occurrence + 1
        return request_seed(self.config.seed, self.replica_rank, self.global_steps, prompt, occurrence)

    async def _serve_queue(self) -> None:
        """Run queued requests batch by batch while the server is open."""
        while self._queue:
            await self._open.wait()
            await asyncio.sleep(BATCH_WINDOW_S)
            if not self._open.is_set() or not self._queue:
                continue
            batch = self._take_batch()
            _log.debug("hf rollout replica %d: generating a batch of %d", self.replica_rank, len(batch))
            self._running = [r.request_id for r in batch]
            try:
                async with self._model_lock:
                    results = await asyncio.to_thread(
                        self.generator.generate, [r.prompt_ids for r in batch], batch[0].spec,
                        [r.budget for r in batch], self._abort, [r.seed for r in batch],
                    )
            except Exception as error:  # reported to every caller of the batch
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            finally:
                self._running = []
            for request, result in zip(batch, results, strict=True):
                if not request.future.done():
                    request.future.set_result(result)

    def _take_batch(self) -> list[_Request]:
        """Pop the oldest request and the queued ones with the same spec that fit the batch limits."""
        first = self._queue[0]
        batch, width, budget = [], 0, 0
        for request in self._queue:
            if request.spec != first.spec:
                continue
            w, b = max(width, len(request.prompt_ids)), max(budget, request.budget)
            if batch and (len(batch) >= self.config.max_num_seqs
                          or (len(batch) + 1) * (w + b) > self.config.max_num_batched_tokens):
                break
            batch.append(request)
            width, budget = w, b
        taken = {id(r) for r in batch}
        self._queue = [r for r in self._queue if id(r) not in taken]
        return batch

    def _update_gate(self) -> None:
        if self._awake and not self._paused:
            self._open.set()
        else:
            self._open.clear()

    # ------------------------------------------------------------------ weights and memory

    async def update_weights(
        self, named_tensors: list[tuple[str, torch.Tensor]], first: bool, last: bool,
        global_steps: Optional[int] = None,
    ) -> None:
        """Load one bucket of weights (see :meth:`HFGenerator.load_weights`).

        Args:
            named_tensors: ``(hf_name, tensor)`` pairs.
            first: the bucket opens an update round.
            last: the bucket closes it (completeness is checked).
            global_steps: trainer step of these weights, reported with every later response.
        """
        async with self._model_lock:
            await asyncio.to_thread(self.generator.load_weights, named_tensors, first, last)
        if last and global_steps is not None:
            self.global_steps = global_steps

    async def sleep(self) -> None:
        """Stop serving and move the weights to host memory (only with ``free_cache_engine``)."""
        if not self.config.free_cache_engine:
            return
        self._awake = False
        self._update_gate()
        async with self._model_lock:  # let a running batch finish
            self.generator.offload()
            _empty_device_cache()

    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Resume ``weights`` (back to the device) and/or ``kv_cache`` (serve again); all when None."""
        tags = list(tags) if tags else ["weights", "kv_cache"]
        if "weights" in tags:
            async with self._model_lock:
                self.generator.onload()
        if "kv_cache" in tags:
            self._awake = True
            self._update_gate()

    async def clear_kv_cache(self) -> None:
        """No cache survives a ``generate`` call, so nothing to clear."""

    async def release_kv_cache(self) -> None:
        """Return cached allocator blocks to the device; weights stay."""
        _empty_device_cache()

    async def resume_kv_cache(self) -> None:
        """Nothing to restore (see :meth:`release_kv_cache`)."""

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Stop the running batch at its next token and hold (or reject) queued and new requests.

        Args:
            reset_prefix_cache: accepted for interface compatibility (there is no prefix cache).
            reject_request: answer queued and new requests at once with ``stop_reason="aborted"``
                instead of holding them until :meth:`resume_generation`.

        Returns:
            ``{"aborted_count": int, "request_ids": list[str]}`` (the interrupted batch).
        """
        self._paused, self._rejecting = True, reject_request
        self._update_gate()
        aborted = list(self._running)
        self._abort.set()
        async with self._model_lock:  # wait until the running batch has returned
            pass
        if reject_request:
            for request in self._queue:
                if not request.future.done():
                    request.future.set_result(Generated(token_ids=[], log_probs=None, aborted=True))
            self._queue = []
        return {"aborted_count": len(aborted), "request_ids": aborted}

    async def resume_generation(self) -> None:
        """Serve again after :meth:`abort_all_requests`."""
        self._abort.clear()
        self._paused = self._rejecting = False
        self._update_gate()

    async def set_global_steps(self, global_steps: int) -> None:
        """Record the trainer step of the current weights."""
        self.global_steps = global_steps

    async def start_profile(self, **kwargs) -> None:
        """Profiling is not implemented for this backend (no-op)."""

    async def stop_profile(self) -> None:
        """Profiling is not implemented for this backend (no-op)."""


def _empty_device_cache() -> None:
    from verl.utils.device import get_torch_device

    get_torch_device().empty_cache()
