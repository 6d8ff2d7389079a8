"""Batched token-in/token-out generation with a Hugging Face causal LM (no Ray, no verl server logic).

:class:`HFGenerator` owns one ``transformers`` model on one device. It left-pads a batch
of prompts, calls ``model.generate``, cuts every row at its own token budget and at its
first end-of-sequence token (kept, like vLLM), and, on request, returns one log-prob per
generated token taken from the scores ``generate`` itself used:

* ``processed_*`` (verl's default ``rollout.logprobs_mode``): ``generate``'s ``scores``,
  the logits after repetition penalty, temperature, top-k and top-p, i.e. the distribution
  the token was drawn from; for greedy decoding that is the plain softmax.
* ``raw_*``: ``generate``'s ``logits``, the model's unprocessed output.

``*_logprobs`` returns ``log_softmax`` of those at the chosen token, ``*_logits`` the
value itself. Scores are kept for every step of the batch, ``(steps, B, vocab)``,
so batches are bounded by the server (``rollout.max_num_batched_tokens``).

Sampling is reproducible per request: every sampled row carries its own seed, and the
token is drawn by the Gumbel-max trick, ``argmax(processed scores + Gumbel noise)``, with
the noise from a ``torch.Generator`` of that row only (:class:`SeededGumbelSampler`, the
last logits processor of a greedy ``generate``). A row's tokens therefore depend on its
prompt, its seed and the weights, not on which other requests share its batch or in
which order they arrived; ``generate``'s own ``do_sample`` path draws every row from one
global generator, so there they would. Temperature, top-k and top-p are applied before
the noise, in ``generate``'s own order, and the processed log-probs are taken before it.

It also receives weights by name (:meth:`load_weights`, with a completeness check per
update round) and can move its weights to host memory and back (sleep/wake-up).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from verl_commeff.rollout.options import SamplingSpec

__all__ = ["Generated", "HFGenerator", "SeededGumbelSampler", "eos_token_ids"]


@dataclass
class Generated:
    """One request's result.

    Attributes:
        token_ids: generated tokens, ending with the end-of-sequence token if one was produced.
        log_probs: one value per token in ``token_ids`` (see ``logprobs_mode``), or None.
        aborted: generation was stopped early by an abort.
    """

    token_ids: list[int]
    log_probs: Optional[list[float]]
    aborted: bool = False


def eos_token_ids(tokenizer, generation_config) -> list[int]:
    """End-of-sequence ids: the tokenizer's plus the model's ``generation_config`` ones (vLLM's rule).

    Args:
        tokenizer: the model's tokenizer (may be None).
        generation_config: the model's ``GenerationConfig`` (may be None).

    Returns:
        Sorted distinct token ids.
    """
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(generation_config, "eos_token_id", None)):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else source)
    return sorted(ids)


class _StopOnEvent:
    """A ``StoppingCriteria`` that ends every row once ``event`` is set (abort)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class SeededGumbelSampler:
    """The last logits processor of a seeded sampling batch: per-row Gumbel noise, so ``argmax`` samples.

    ``argmax_v(s_v + g_v)`` with ``g_v = -log(-log(u_v))``, ``u_v ~ U(0, 1)`` i.i.d., is a draw from
    ``softmax(s)`` (the Gumbel-max trick); tokens masked to ``-inf`` by top-k/top-p stay impossible.

    Args:
        seeds: one seed per batch row, in ``[0, 2**63)``.
        device: where the scores live (the generators draw there).
        keep_scores: record the scores as received (the processed distribution) for log-probs.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device, keep_scores: bool):
        self.generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        self.keep_scores = keep_scores
        self.scores: list[torch.Tensor] = []  # one (B, V) per step, before the noise

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Add one step of each row's own noise to the processed scores ``(B, V)``.

        1. Keep a copy of the processed scores (the log-probs are those of this distribution).
        2. Draw ``V`` uniforms per row from the row's generator (the same ``t``-th draw whatever the batch).
        3. Return ``scores + Gumbel(u)``.
        """
        # Step 1: the distribution the token is drawn from.
        if self.keep_scores:
            self.scores.append(scores.clone())
        # Step 2: each row advances only its own generator, by exactly V draws per step.
        uniforms = torch.stack([
            torch.rand(scores.shape[-1], generator=g, device=scores.device, dtype=torch.float32)
            for g in self.generators
        ])  # (B, V)
        # Step 3: Gumbel-max.
        gumbel = -torch.log(-torch.log(uniforms.clamp_min(torch.finfo(torch.float32).tiny)))  # (B, V)
        return scores + gumbel.to(scores.dtype)


class HFGenerator:
    """A Hugging Face causal LM that generates batches and accepts weight updates.

    Args:
        model: a loaded ``PreTrainedModel`` with a ``generate`` method (moved to ``device`` here).
        device: where generation runs.
        eos_ids: end-of-sequence token ids (may be empty).
        pad_token_id: id used to left-pad prompts.
        logprobs_mode: one of :data:`verl_commeff.rollout.options.LOGPROBS_MODES`.
    """

    def __init__(
        self, model, device: torch.device, eos_ids: Sequence[int], pad_token_id: int, logprobs_mode: str
    ):
        from transformers import GenerationConfig

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # A clean generation config: the checkpoint's defaults (top_k, temperature, eos, ...) must not
        # leak into requests, since generate() fills every unset field from it; each call sets its own.
        self.model.generation_config = GenerationConfig(pad_token_id=pad_token_id)
        self.eos_ids = frozenset(eos_ids)
        self.pad_token_id = pad_token_id
        self.raw_scores = logprobs_mode.startswith("raw_")
        self.return_logits = logprobs_mode.endswith("_logits")
        self._targets = dict(self.model.state_dict(keep_vars=True))  # name -> Parameter/buffer
        self._aliases: dict[int, list[str]] = {}  # id(Parameter) -> all its names (tied weights share one)
        for name, param in self.model.named_parameters(remove_duplicate=False):
            self._aliases.setdefault(id(param), []).append(name)
        self._pending: Optional[set[str]] = None

    @classmethod
    def from_pretrained(
        cls, path: str, hf_config, dtype: torch.dtype, device: torch.device, eos_ids: Sequence[int],
        pad_token_id: int, logprobs_mode: str, trust_remote_code: bool = False,
    ) -> "HFGenerator":
        """Load the checkpoint at ``path`` (with verl's resolved ``hf_config``) onto ``device``.

        Args:
            path: local model directory.
            hf_config: the model config verl built (attention implementation and overrides included).
            dtype: parameter dtype (``rollout.dtype``).
            device: where generation runs.
            eos_ids: end-of-sequence token ids.
            pad_token_id: padding id.
            logprobs_mode: see the class docstring.
            trust_remote_code: passed to ``from_pretrained``.

        Returns:
            The generator.
        """
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            path, config=hf_config, dtype=dtype, trust_remote_code=trust_remote_code
        )
        return cls(model, device, eos_ids, pad_token_id, logprobs_mode)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        spec: SamplingSpec,
        max_new_tokens: Sequence[int],
        stop: Optional[threading.Event] = None,
        seeds: Optional[Sequence[int]] = None,
    ) -> list[Generated]:
        """Generate for a batch of prompts that share one sampling spec.

        Args:
            prompts: token ids per request (non-empty).
            spec: decoding parameters shared by the batch.
            max_new_tokens: per-request token budget (>= 1).
            stop: when set during generation, every row stops and is reported aborted.
            seeds: one sampling seed per request (see :class:`SeededGumbelSampler`); None samples
                with ``generate``'s own ``do_sample`` from torch's global generator (batch-dependent).
                Ignored for greedy specs.

        Returns:
            One :class:`Generated` per prompt, in order.
        """
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)  # (B, P), left-padded
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, P)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"hf rollout: {len(seeds)} seeds for {len(prompts)} prompts")
        seeded = seeds is not None and not spec.greedy
        sampler = SeededGumbelSampler(seeds, self.device, keep_scores=spec.logprobs and not self.raw_scores) \
            if seeded else None
        config = GenerationConfig(
            max_new_tokens=max(max_new_tokens),
            min_new_tokens=0,
            num_beams=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=None if spec.ignore_eos or not self.eos_ids else sorted(self.eos_ids),
            return_dict_in_generate=True,
            output_scores=spec.logprobs and not self.raw_scores and not seeded,
            output_logits=spec.logprobs and self.raw_scores,
            # seeded: a greedy search over the warped scores plus the sampler's noise
            **(spec.greedy_generation_kwargs() if seeded else spec.generation_kwargs()),
        )
        criteria = StoppingCriteriaList([_StopOnEvent(stop)]) if stop is not None else None
        out = self.model.generate(
            input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
            generation_config=config, stopping_criteria=criteria,
            logits_processor=LogitsProcessorList([*spec.warpers(), sampler]) if seeded else None,
        )
        new_tokens = out.sequences[:, width:].cpu()  # (B, T), T <= max(max_new_tokens)
        steps = out.logits if self.raw_scores else (sampler.scores if seeded else out.scores)
        values = self._token_values(steps, out.sequences[:, width:]) if spec.logprobs else None  # (B, T) or None
        aborted = stop is not None and stop.is_set()

        results = []
        for row, budget in enumerate(max_new_tokens):
            tokens = new_tokens[row, :budget].tolist()
            end = None if spec.ignore_eos else next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
            tokens = tokens if end is None else tokens[: end + 1]
            log_probs = values[row, : len(tokens)].tolist() if values is not None else None
            cut_short = aborted and end is None and len(tokens) < budget  # rows that had finished stay completed
            results.append(Generated(token_ids=tokens, log_probs=log_probs, aborted=cut_short))
        return results

    def _token_values(self, steps: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs (or logits) of the generated tokens.

        Args:
            steps: one ``(B, V)`` score tensor per generation step.
            tokens: ``(B, T)`` generated tokens on the model's device.

        Returns:
            ``(B, T)`` float32 on the host.
        """
        columns = []
        for t, scores in enumerate(steps):
            scores = scores.float()  # (B, V)
            if not self.return_logits:
                scores = torch.log_softmax(scores, dim=-1)
            columns.append(scores.gather(-1, tokens[:, t : t + 1]))  # (B, 1)
        return torch.cat(columns, dim=1).cpu()  # (B, T)

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], first: bool, last: bool) -> None:
        """Copy received tensors into the model, by Hugging Face parameter name.

        One update round spans several calls (buckets): ``first`` opens it, ``last`` closes it
        and checks that every parameter was received (tied weights count once).

        Args:
            named_tensors: ``(name, tensor)`` pairs, any device/dtype (cast on copy).
            first: this call starts an update round.
            last: this call ends the round.

        Raises:
            KeyError: for a name the model does not have.
            ValueError: for a shape mismatch, or parameters missing at the end of the round.
        """
        if first or self._pending is None:
            self._pending = {name for names in self._aliases.values() for name in names}
        for name, tensor in named_tensors:
            target = self._targets.get(name)
            if target is None:
                known = ", ".join(list(self._targets)[:3])
                raise KeyError(f"hf rollout received weight {name!r}, which the model does not have (e.g. {known})")
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(f"hf rollout weight {name!r}: got shape {tuple(tensor.shape)}, "
                                 f"model has {tuple(target.shape)}")
            target.data.copy_(tensor)
            self._pending.difference_update(self._aliases.get(id(target), ()))
        if last:
            missing, self._pending = sorted(self._pending), None
            if missing:
                raise ValueError(f"hf rollout weight update ended without {len(missing)} parameter(s): {missing[:5]}")

    def offload(self) -> None:
        """Move the weights to host memory (sleep); a no-op when generating on the host already."""
        self.model.to("cpu")

    def onload(self) -> None:
        """Move the weights back to the generation device (wake-up)."""
        self.model.to(self.device)
