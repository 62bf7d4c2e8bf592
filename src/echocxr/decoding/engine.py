"""One batched decoding engine for AR, multi-step block diffusion and one-step (fused cache) decoding.

The three decoders share the canvas (layout.py), the KV-cache handling, the stop logic (per-sample <eos> or
length, finished samples leave the batch with their cache rows) and the statistics; they differ only in
what one step feeds the model and how many tokens it commits.

Cache conventions (ECHO-SPEC §5): denoising passes do not keep their KV (`crop(-L)` right after); a vanilla
cache spends one extra forward to write a finished block; the fused cache feeds `[block n-1 | block n]` so the
forward that predicts block n also writes block n-1. With `use_cache=False` every forward recomputes the
whole sequence instead: the reference the cached paths are tested against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from echocxr.backbones.loading import Backbone
from echocxr.backbones.prompt import EncodedPrompt, encode_prompt
from echocxr.backbones.settings import (
    DECODERS,
    DEFAULT_LOOKAHEAD_THRESHOLD,
    DEFAULT_TIE_BREAK,
    DEFAULT_TIE_MARGIN,
    LOOKAHEAD_REMASKING,
    PREFILL_MODES,
    TIE_BREAKS,
    check_lookahead,
    check_tie_margin,
)
from echocxr.decoding.layout import Canvas, build_canvas
from echocxr.decoding.results import DecodeEvent, Generation
from echocxr.decoding.sampling import (
    REMASKING_STRATEGIES,
    image_tie_preference,
    sample_tokens,
    select_transfer,
    transfer_schedule,
)
from echocxr.diffusion.masks import canvas_mask
from echocxr.errors import UserError

EventHook = Callable[[DecodeEvent], None]


MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-5, 100.0  # sampling temperatures float32 logits survive


@dataclass
class DecodeConfig:
    decoder: str = "onestep"  # ar | multistep | onestep
    block_length: int = 4
    steps: int = 4  # multistep rounds per block
    remasking: str = "low_confidence_dynamic"
    threshold: float = 0.85
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    tie_ratio: float = 0.0  # greedy's canonical tie-break (sampling.sample_tokens); 0 = plain argmax
    # which near-top token a tie goes to: lowest_id (the same in every context), or one_step: in a multi-step
    # block, the one the block's first forward (all its positions masked, what a one-step decoder sees) ranks
    # highest, so the block's later tokens follow what one forward would have written where the teacher allows;
    # or image: lowest_id among the near-top tokens the image does not tell apart (their log-probability gain
    # over the same step under a blank image within `tie_margin` nats of the top token's; the others lose), so
    # a phrasing choice is canonical while a finding the image shows keeps the plain argmax. It decodes every
    # sample twice (its blank-image twin follows its tokens)
    tie_break: str = DEFAULT_TIE_BREAK
    tie_margin: float = DEFAULT_TIE_MARGIN
    # one-step with refinement: a block whose every token has confidence above `refine` is kept after its one
    # forward; otherwise the tokens at or below it are masked again and decoded in one more forward, seeing the rest
    refine: float = 0.0
    # multistep with d3LLM's look-ahead (multi-block) decoding: up to `lookahead` blocks after the current one
    # are denoised in the same forward, the next joining once the last open block has `lookahead_threshold` of
    # its positions committed; a look-ahead block commits only what passes `threshold` (0: plain multistep)
    lookahead: int = 0
    lookahead_threshold: float = DEFAULT_LOOKAHEAD_THRESHOLD
    prefill: str = "block_grid"  # block_grid (official) | response_aligned
    fused: bool = True  # one-step only: fused block KV cache
    use_cache: bool = True  # False: recompute everything each forward (reference path)
    record_logits: bool = False  # attach each step's block logits to events
    seed: int = 0

    def validate(self) -> DecodeConfig:
        if self.decoder not in DECODERS:
            raise UserError(f"unknown decoder {self.decoder!r} (use one of: {', '.join(DECODERS)})")
        if self.prefill not in PREFILL_MODES:
            raise UserError(f"unknown prefill mode {self.prefill!r} (use one of: {', '.join(PREFILL_MODES)})")
        if self.remasking not in REMASKING_STRATEGIES:
            raise UserError(f"unknown remasking {self.remasking!r} (use one of: {', '.join(REMASKING_STRATEGIES)})")
        if not 1 <= self.block_length <= 64:
            raise UserError(f"block length must be in 1..64, got {self.block_length}")
        if self.decoder == "multistep" and not 1 <= self.steps <= self.block_length:
            raise UserError(f"steps must be in 1..block length ({self.block_length}), got {self.steps}")
        if not 1 <= self.max_new_tokens <= 8192:
            raise UserError(f"max new tokens must be in 1..8192, got {self.max_new_tokens}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {self.threshold}")
        # NaN fails every comparison; a temperature outside this range makes float32 logits inf or NaN
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise UserError(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
                            f"got {self.temperature}")
        if not 0.0 <= self.refine <= 1.0:
            raise UserError(f"refine threshold must be in [0, 1], got {self.refine}")
        if self.refine > 0 and self.decoder != "onestep":
            raise UserError(f"--refine applies to the one-step decoder, not {self.decoder}")
        check_lookahead(self.lookahead, self.lookahead_threshold)
        if self.lookahead > 0:
            if self.decoder != "multistep":
                raise UserError(f"--lookahead applies to the multistep decoder, not {self.decoder}")
            if self.remasking not in LOOKAHEAD_REMASKING:
                raise UserError(f"--lookahead needs a threshold remasking ({' or '.join(LOOKAHEAD_REMASKING)}), "
                                f"not {self.remasking}")
            if self.tie_ratio > 0 and self.tie_break == "one_step":
                raise UserError("--tie-break one_step does not combine with --lookahead")
        if not 0.0 <= self.tie_ratio < 1.0:
            raise UserError(f"tie ratio must be in [0, 1), got {self.tie_ratio}")
        if self.tie_ratio > 0 and self.temperature > 0:
            raise UserError("a tie ratio applies to greedy decoding only (temperature 0)")
        if self.tie_break not in TIE_BREAKS:
            raise UserError(f"unknown tie break {self.tie_break!r} (use one of: {', '.join(TIE_BREAKS)})")
        check_tie_margin(self.tie_margin)
        if self.image_ties and (self.decoder == "ar" or self.lookahead > 0):
            raise UserError("--tie-break image applies to block decoding (multistep or onestep) without --lookahead")
        if not 0 < self.top_p <= 1.0 or self.top_k < 0:
            raise UserError("need 0 < top_p <= 1 and top_k >= 0")
        if not 0 <= self.seed < 2**64:  # torch.Generator takes 64-bit seeds
            shown = self.seed if abs(self.seed) < 10**20 else f"a {self.seed.bit_length()}-bit number"
            raise UserError(f"seed must be in 0..2^64-1, got {shown}")
        return self

    @property
    def steps_per_block(self) -> int:
        return 1 if self.decoder == "onestep" else self.steps

    @property
    def image_ties(self) -> bool:
        """Whether greedy near-ties are told apart by the image (each sample decodes beside a blank-image twin)."""
        return self.tie_ratio > 0 and self.tie_break == "image"


class _Batch:
    """The rows still decoding: canvas tensors, cache and per-row stats, shrunk as samples finish."""

    def __init__(self, canvas: Canvas, prompts: list[EncodedPrompt], device: torch.device):
        self.tokens = canvas.tokens.to(device)
        self.key_valid = canvas.key_valid.to(device)
        self.positions = canvas.positions.to(device)
        self.groups = canvas.groups.to(device)
        self.response_start = canvas.response_start.to(device)
        self.C = canvas.prefill_end
        self.n_blocks = canvas.n_blocks
        self.index = torch.arange(len(prompts), device=device)  # original sample of each row
        self.forwards = torch.zeros(len(prompts), dtype=torch.long, device=device)
        # each column's probability when it was committed: stays on the device, read once per finished sample
        self.conf = torch.zeros(self.tokens.shape, dtype=torch.float32, device=device)
        self.prompts = prompts
        self.cache = None

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def keep(self, rows: torch.Tensor) -> None:
        for name in ("tokens", "key_valid", "response_start", "index", "forwards", "conf"):
            setattr(self, name, getattr(self, name)[rows])
        self.positions = self.positions[:, rows]
        if self.cache is not None:
            self.cache.batch_select_indices(rows)

    def vision_inputs(self) -> dict:
        """pixel_values / image_grid_thw of the rows still in the batch, in row order."""
        pv = [self.prompts[int(i)].pixel_values for i in self.index]
        if all(p is None for p in pv):
            return {}
        grids = [self.prompts[int(i)].image_grid_thw for i in self.index]
        return {"pixel_values": torch.cat([p for p in pv if p is not None]),
                "image_grid_thw": torch.cat([g for g in grids if g is not None])}


class ReportEngine:
    """Decodes batches of encoded prompts with one backbone."""

    def __init__(self, backbone: Backbone):
        self.bb = backbone
        self.model = backbone.model
        self.device = backbone.device
        self.is_vision = backbone.is_vision
        self.eos = torch.tensor(backbone.eos_token_ids or [-1], device=self.device)
        # never emitted: the mask itself and vision placeholders (they would be read as image slots)
        cfg = self.model.config
        suppress = {backbone.mask_token_id}
        for name in ("image_token_id", "video_token_id"):
            if getattr(cfg, name, None) is not None:
                suppress.add(int(getattr(cfg, name)))
        self.suppress = torch.tensor(sorted(suppress), device=self.device)
        self.pad_id = backbone.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = backbone.eos_token_ids[0] if backbone.eos_token_ids else 0
        self.fast_path = None  # a decoding.fast_engine.FastPath: takes the configs it supports (see generate)

    # ---- public API -------------------------------------------------------------------------------
    def default_config(self, **overrides) -> DecodeConfig:
        """The model's settings with the caller's non-None overrides; multistep fills what was not given."""
        s = self.bb.settings
        cfg = DecodeConfig(decoder=s.decoder, block_length=s.block_length, steps=min(s.steps, s.block_length),
                           remasking=s.remasking, threshold=s.threshold, prefill=s.prefill)
        given = {k: v for k, v in overrides.items() if v is not None}
        cfg = replace(cfg, **given)
        return self.with_multistep_defaults(cfg, given)

    def with_multistep_defaults(self, cfg: DecodeConfig, given) -> DecodeConfig:
        """A multistep `cfg` with steps/remasking/threshold not in `given` taken from the model's
        multistep defaults (L steps on a one-step model, where its own `steps: 1` would be one-step)."""
        if cfg.decoder != "multistep":
            return cfg
        fill = self.bb.settings.multistep_defaults(cfg.block_length)
        cfg = replace(cfg, **{k: v for k, v in fill.items() if k not in given})
        if "lookahead" not in given and cfg.lookahead and not lookahead_fits(cfg):
            cfg = replace(cfg, lookahead=0)  # the model's look-ahead, but the caller chose a rule it cannot go with
        return cfg

    def encode(self, images, lang: str = "en", instruction: str | None = None) -> EncodedPrompt:
        """A prompt for this model: views resized to its training size, with warnings about the request."""
        from echocxr.decoding.notices import input_notices

        s = self.bb.settings
        images = list(images or [])
        prompt = encode_prompt(self.bb.tokenizer, self.bb.image_processor, images, lang=lang,
                               instruction=instruction, image_size=s.image_size)
        prompt.notices = input_notices(s, lang, images)
        return prompt

    @torch.inference_mode()
    def generate(self, prompts: list[EncodedPrompt], cfg: DecodeConfig, on_event: EventHook | None = None,
                 is_cancelled: Callable[[int], bool] | None = None) -> list[Generation]:
        """Decode a batch; results come back in prompt order.

        on_event: called after every denoising forward for each sample in it and when a sample ends;
        is_cancelled(sample): checked after every step, a cancelled sample leaves the batch (stop='cancelled').
        """
        cfg.validate()
        if not prompts:
            return []
        if self.fast_path is not None and self.fast_path.supports(cfg, prompts):
            return _batched(self.fast_path.generate(prompts, cfg, on_event=on_event, is_cancelled=is_cancelled))
        B = len(prompts)
        if cfg.image_ties:  # each sample decodes beside its blank-image twin, rows B.. (see _sample)
            if any(p.pixel_values is None for p in prompts):
                raise UserError("--tie-break image needs an image in every prompt")
            prompts = prompts + [replace(p, pixel_values=torch.zeros_like(p.pixel_values), notices=[])
                                 for p in prompts]
            if on_event is not None:
                on_event = _samples_only(on_event, B)
            if is_cancelled is not None:
                is_cancelled = _twin_follows(is_cancelled, B)
        mode = "ar" if cfg.decoder == "ar" else cfg.prefill
        rope = self._rope_index if self.is_vision else None
        canvas = build_canvas(prompts, mode, cfg.block_length, cfg.max_new_tokens,
                              fill_id=self.bb.mask_token_id if cfg.decoder != "ar" else self.pad_id,
                              pad_id=self.pad_id, rope_index=rope)
        batch = _Batch(canvas, prompts, self.device)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        results: list[Generation | None] = [None] * len(prompts)

        t0 = self._now()
        prefill_end = batch.C - 1 if cfg.decoder == "ar" else batch.C
        if cfg.use_cache:
            from transformers import DynamicCache

            batch.cache = DynamicCache()
            if prefill_end > 0:
                self._forward(batch, 0, prefill_end, keep=0, vision=True)
        prefill_s = self._now() - t0
        t_decode = self._now()
        finish = _Finisher(self, batch, cfg, results, prefill_s, t_decode, on_event, is_cancelled)
        if cfg.decoder == "ar":
            self._decode_ar(batch, cfg, gen, finish, on_event)
        elif cfg.lookahead > 0:
            self._decode_blocks_lookahead(batch, cfg, gen, finish, on_event)
        else:
            self._decode_blocks(batch, cfg, gen, finish, on_event)
        return _batched([r for r in results[:B] if r is not None])  # every sample ends by eos, length or cancel

    def request_warnings(self, prompt: EncodedPrompt, cfg: DecodeConfig) -> list[str]:
        """A sample's warnings: decoder outside the model's training, then the prompt's own (language, images)."""
        from echocxr.decoding.notices import decode_notices

        return decode_notices(self.bb.settings, cfg.decoder) + list(prompt.notices)

    # ---- decoders ---------------------------------------------------------------------------------
    def _decode_ar(self, batch: _Batch, cfg: DecodeConfig, gen, finish: _Finisher, on_event) -> None:
        for t in range(batch.n_blocks):
            if not len(batch):
                return
            col = batch.C - 1 + t
            logits = self._step_logits(batch, col, col + 1, cfg)
            tok, conf, _ = sample_tokens(logits[:, -1:], cfg.temperature, cfg.top_k, cfg.top_p, gen, cfg.tie_ratio)
            batch.tokens[:, col + 1] = tok[:, 0]
            batch.conf[:, col + 1] = conf[:, 0]
            batch.forwards += 1
            if on_event is not None:
                conf_l = conf[:, 0].tolist()
                for r in range(len(batch)):
                    on_event(DecodeEvent("step", int(batch.index[r]), t, 0, [int(tok[r, 0])], [True], t,
                                         logits[r, -1:].float().cpu() if cfg.record_logits else None,
                                         confidences=[conf_l[r]]))
            finish.after_step(col + 1, col + 2)

    def _decode_blocks(self, batch: _Batch, cfg: DecodeConfig, gen, finish: _Finisher, on_event) -> None:
        L = cfg.block_length
        schedule = transfer_schedule(L, cfg.steps_per_block)
        remasking, threshold = cfg.remasking, cfg.threshold
        if cfg.refine > 0 and L > 1:  # round 1 keeps the tokens above the threshold (at least the surest), 2 the rest
            schedule, remasking, threshold = [1, L - 1], "low_confidence_dynamic", cfg.refine
        fused = cfg.decoder == "onestep" and cfg.fused and cfg.use_cache
        mask_id = self.bb.mask_token_id
        for n in range(batch.n_blocks):
            if not len(batch):
                return
            b0 = batch.C + n * L
            b1 = b0 + L
            cur = batch.tokens[:, b0:b1].clone()
            cur_conf = batch.conf[:, b0:b1].clone()
            carry_prev = fused and n > 0  # this forward also writes block n-1's KV
            first = None  # the block's all-masked logits, for the one_step tie-break
            for step, k in enumerate(schedule):
                masked = cur == mask_id
                active = masked.any(dim=1)
                if not bool(active.any()):
                    break
                batch.tokens[:, b0:b1] = cur
                logits = self._step_logits(batch, b0 - L if carry_prev else b0, b1, cfg, denoise=True)
                if step == 0 and cfg.tie_break == "one_step":
                    first = logits
                x0, conf, probs = self._sample(logits, cfg, gen, prefer=first if step else None)
                commit = select_transfer(masked, conf, k, remasking, threshold, probs)
                cur = torch.where(commit, x0, cur)
                cur_conf = torch.where(commit, conf, cur_conf)  # the probability at the step that committed it
                batch.forwards += active.long()
                carry_prev = False
                if on_event is not None:
                    self._emit_steps(batch, on_event, n, step, cur, cur_conf, commit, active, b0, logits, cfg)
            batch.tokens[:, b0:b1] = cur
            batch.conf[:, b0:b1] = cur_conf
            finish.after_step(b0, b1)
            if cfg.use_cache and not fused and len(batch) and n + 1 < batch.n_blocks:
                self._forward(batch, b0, b1, keep=0)  # vanilla cache: write the finished block

    def _decode_blocks_lookahead(self, batch: _Batch, cfg: DecodeConfig, gen, finish: _Finisher, on_event) -> None:
        """Multistep with d3LLM's multi-block decoding (its `generate_multi_block[_kv_cache]`), batched.

        Per row, a window of blocks: the current block n (the first one still masked) and up to `lookahead`
        blocks after it. Before each forward a row opens one more block (at most one a forward, as d3LLM adds
        them) when the last block of its window has at least `lookahead_threshold` of its generated positions
        committed (d3LLM's `block_add_threshold`), holds no committed <eos> (d3LLM adds no block once it has
        seen one) and lies within the row's max_new_tokens. One forward feeds the whole window, block-causal
        as always, so a look-ahead block sees the blocks before it with their masks while the current block
        sees nothing after it; in it the current block commits as plain multistep does (at least the round's
        `k`, every position past `threshold`) and each open look-ahead block commits only the positions past
        `threshold` (no minimum). When the current block is full it is final: the window moves on by one block,
        the first look-ahead block becoming current with what it has committed. The forward counts once per
        row, however many blocks it commits in.

        Rows advance in lock-step by window as `_decode_blocks` does: a row whose current block is full sits
        out the window's remaining forwards (none counted, its look-ahead blocks untouched), so each row
        decodes exactly as it would alone. Stops are today's: the window's block is checked for <eos> and
        length when it is final, tokens committed ahead of an <eos> are cut by build_generation. With the KV
        cache, denoising forwards keep no KV (the fed window is cropped off) and a final block's KV is written
        by one more forward, as the vanilla cache does.

        Simplifications against d3LLM's code (exact for its released settings at block lengths below 20):
        a block becomes "fully activated" (committing its round's `k` at least) when the block before it is
        full, where d3LLM's `decoded_token_threshold` (0.95) lets it when the block before is 95% committed;
        the window is capped at `lookahead` blocks (d3LLM has no cap); its LLaDA code also commits the
        window's single lowest-entropy position each forward even where that is in a look-ahead block; and the
        positions after a committed <eos> are decoded as plain multistep decodes them where d3LLM fills them
        with <eos> for free. d3LLM's delayed KV caching (`cache_delay_iter`, `refresh_interval`) exists because
        its models attend bidirectionally; under block-causal attention a final block's KV never changes.
        """
        L, N = cfg.block_length, cfg.lookahead
        schedule = transfer_schedule(L, cfg.steps_per_block)
        mask_id = self.bb.mask_token_id
        ahead = torch.zeros(len(batch), dtype=torch.long, device=self.device)  # look-ahead blocks open per row
        for n in range(batch.n_blocks):
            if not len(batch):
                return
            b0, b1 = batch.C + n * L, batch.C + (n + 1) * L
            room = min(N, batch.n_blocks - 1 - n)  # look-ahead blocks the canvas still has
            ahead = (ahead - 1).clamp(0, room)  # block n+1, if open, is now the current block
            for step, k in enumerate(schedule):
                window = batch.tokens[:, b0:b0 + (1 + room) * L]
                masked = window == mask_id
                active = masked[:, :L].any(dim=1)
                if not bool(active.any()):
                    break
                ahead = ahead + (active & self._opens_block(batch, window, masked, ahead, room, b0, cfg)).long()
                width = (1 + int(ahead[active].max())) * L
                logits = self._step_logits(batch, b0, b0 + width, cfg, denoise=True, width=width)
                commit = torch.zeros_like(masked[:, :width])
                x0 = torch.empty_like(commit, dtype=torch.long)
                conf = torch.zeros(commit.shape, dtype=torch.float32, device=self.device)
                for j in range(width // L):  # block by block: one block's distributions in memory at a time
                    s = slice(j * L, (j + 1) * L)
                    x0[:, s], conf[:, s], probs = sample_tokens(logits[:, s], cfg.temperature, cfg.top_k, cfg.top_p,
                                                                gen, cfg.tie_ratio)
                    commit[:, s] = select_transfer(masked[:, s], conf[:, s], k if j == 0 else 0, cfg.remasking,
                                                   cfg.threshold, probs)
                    if j > 0:
                        commit[:, s] &= (ahead >= j)[:, None]
                commit &= active[:, None]
                batch.tokens[:, b0:b0 + width] = torch.where(commit, x0, window[:, :width])
                batch.conf[:, b0:b0 + width] = torch.where(commit, conf, batch.conf[:, b0:b0 + width])
                batch.forwards += active.long()
                if on_event is not None:
                    self._emit_lookahead_steps(batch, on_event, n, step, commit, active, ahead, b0, logits, cfg)
            rows = batch.index
            finish.after_step(b0, b1)
            if len(batch) < len(rows):
                ahead = ahead[torch.isin(rows, batch.index)]  # the rows finish kept, in order
            if cfg.use_cache and len(batch) and n + 1 < batch.n_blocks:
                self._forward(batch, b0, b1, keep=0)  # vanilla cache: write the final block

    def _opens_block(self, batch: _Batch, window: torch.Tensor, masked: torch.Tensor, ahead: torch.Tensor,
                     room: int, b0: int, cfg: DecodeConfig) -> torch.Tensor:
        """Rows whose window takes one more block before this forward (the rule of _decode_blocks_lookahead):
        the last open block's share of committed generated positions is at least `lookahead_threshold`, no
        committed <eos> in the window, room on the canvas and under the row's max_new_tokens."""
        L = cfg.block_length
        B, width = window.shape
        cols = b0 + torch.arange(width, device=self.device)
        generated = cols[None, :] >= batch.response_start[:, None]
        last = ahead[:, None]
        gen_n = generated.view(B, -1, L).sum(-1).gather(1, last)[:, 0]
        done_n = (generated & ~masked).view(B, -1, L).sum(-1).gather(1, last)[:, 0]
        share = done_n.double() / gen_n.clamp_min(1).double()
        in_window = torch.arange(width, device=self.device)[None, :] < (ahead[:, None] + 1) * L
        eos = (torch.isin(window, self.eos) & generated & ~masked & in_window).any(dim=1)
        next_start = b0 + (ahead + 1) * L
        return ((share >= cfg.lookahead_threshold) & ~eos & (ahead < room)
                & (next_start - batch.response_start < cfg.max_new_tokens))

    def _sample(self, logits: torch.Tensor, cfg: DecodeConfig, gen, prefer: torch.Tensor | None = None):
        """sample_tokens for a block's logits; with the image tie-break the batch is [samples | their blank-image
        twins] and each twin takes its sample's tokens, confidences and distributions (so it commits alike)."""
        if not cfg.image_ties:
            return sample_tokens(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen, cfg.tie_ratio, prefer=prefer)
        h = logits.shape[0] // 2
        x0, conf, probs = sample_tokens(logits[:h], cfg.temperature, cfg.top_k, cfg.top_p, gen, cfg.tie_ratio,
                                        prefer=image_tie_preference(logits[:h], logits[h:], cfg.tie_margin))
        return torch.cat([x0, x0]), torch.cat([conf, conf]), torch.cat([probs, probs])

    # ---- model calls ------------------------------------------------------------------------------
    def _step_logits(self, batch: _Batch, q0: int, q1: int, cfg: DecodeConfig, denoise: bool = False,
                     width: int | None = None) -> torch.Tensor:
        """Logits for the last `n` fed columns, n = `width` when given, else block length (denoise) or 1 (AR),
        with the tokens that are never emitted (mask, vision placeholders) ruled out."""
        n = width if width is not None else (cfg.block_length if denoise else 1)
        if not cfg.use_cache:
            logits = self._forward(batch, 0, q1, keep=n, vision=True, use_cache=False)
        else:
            logits = self._forward(batch, q0, q1, keep=n)
            if denoise:
                batch.cache.crop(-n)  # denoising passes never keep the current block's KV
        logits[..., self.suppress] = float("-inf")
        return logits

    def _forward(self, batch: _Batch, q0: int, q1: int, keep: int, vision: bool = False,
                 use_cache: bool = True) -> torch.Tensor | None:
        cols = torch.arange(q0, q1, device=self.device)
        mask = canvas_mask(batch.groups, cols, q1, batch.key_valid, self.bb.dtype)
        pos = batch.positions[:, :, q0:q1]
        kwargs = dict(
            input_ids=batch.tokens[:, q0:q1],
            attention_mask=mask,
            position_ids=pos if self.is_vision else pos[0],
            past_key_values=batch.cache if use_cache else None,
            use_cache=use_cache,
            logits_to_keep=max(keep, 1),
        )
        if (vision or q0 == 0) and self.is_vision:
            kwargs.update(batch.vision_inputs())
        out = self.model(**kwargs)
        return out.logits if keep else None

    def _rope_index(self, prompt: EncodedPrompt) -> torch.Tensor:
        if prompt.image_grid_thw is None:
            return torch.arange(prompt.length)[None].expand(3, -1)
        pos, _ = self.model.model.get_rope_index(
            prompt.input_ids[None].to(self.device), prompt.mm_token_type_ids[None].to(self.device),
            image_grid_thw=prompt.image_grid_thw.to(self.device))
        return pos[:, 0].cpu()

    def _emit_steps(self, batch, on_event, n, step, cur, cur_conf, commit, active, b0, logits, cfg) -> None:
        for r in range(len(batch)):
            if not bool(active[r]):
                continue
            on_event(DecodeEvent(
                "step", int(batch.index[r]), n, step, cur[r].tolist(), commit[r].tolist(),
                b0 - int(batch.response_start[r]),
                logits[r].float().cpu() if cfg.record_logits else None, confidences=cur_conf[r].tolist()))

    def _emit_lookahead_steps(self, batch, on_event, n, step, commit, active, ahead, b0, logits, cfg) -> None:
        """A step event per active row for its current block, as _emit_steps; its open look-ahead blocks ride in
        `extra["lookahead"]` (block, response_offset, tokens, committed, confidences, logits when recorded), so
        consumers that follow blocks in order (streaming, trajectories) see the current block only."""
        L = cfg.block_length
        for r in range(len(batch)):
            if not bool(active[r]):
                continue
            rs = int(batch.response_start[r])
            blocks = []
            for j in range(int(ahead[r]) + 1):
                c0 = b0 + j * L
                blocks.append({
                    "block": n + j, "response_offset": c0 - rs, "tokens": batch.tokens[r, c0:c0 + L].tolist(),
                    "committed": commit[r, j * L:(j + 1) * L].tolist(),
                    "confidences": batch.conf[r, c0:c0 + L].tolist(),
                    "logits": logits[r, j * L:(j + 1) * L].float().cpu() if cfg.record_logits else None})
            cur = blocks[0]
            on_event(DecodeEvent("step", int(batch.index[r]), n, step, cur["tokens"], cur["committed"],
                                 cur["response_offset"], cur["logits"], extra={"lookahead": blocks[1:]},
                                 confidences=cur["confidences"]))

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class _Finisher:
    """Per-sample stop logic: the first block (or token) containing <eos>, or max_new_tokens reached."""

    def __init__(self, engine: ReportEngine, batch: _Batch, cfg: DecodeConfig, results: list, prefill_s: float,
                 t_decode: float, on_event, is_cancelled=None):
        self.e, self.batch, self.cfg, self.results = engine, batch, cfg, results
        self.prefill_s, self.t_decode, self.on_event = prefill_s, t_decode, on_event
        self.is_cancelled = is_cancelled

    def after_step(self, c0: int, c1: int) -> None:
        b = self.batch
        cols = torch.arange(c0, c1, device=b.tokens.device)
        generated = cols[None, :] >= b.response_start[:, None]
        is_eos = torch.isin(b.tokens[:, c0:c1], self.e.eos) & generated
        produced = c1 - b.response_start
        done = is_eos.any(dim=1) | (produced >= self.cfg.max_new_tokens)
        cancelled = torch.zeros_like(done)
        if self.is_cancelled is not None:
            cancelled = torch.tensor([bool(self.is_cancelled(int(i))) for i in b.index], device=done.device)
            done |= cancelled
        if not bool(done.any()):
            return
        now = self.e._now()
        for r in torch.nonzero(done).flatten().tolist():
            self.results[int(b.index[r])] = self._result(r, now, c1, cancelled=bool(cancelled[r]))
        b.keep(torch.nonzero(~done).flatten())

    def _result(self, r: int, now: float, decoded_end: int, cancelled: bool = False) -> Generation:
        """The sample's response: columns decoded so far (up to `decoded_end`), cut at max_new_tokens/<eos>."""
        b = self.batch
        start = int(b.response_start[r])
        gen = build_generation(self.e, self.cfg, b.tokens[r, start:decoded_end].tolist(), int(b.forwards[r]),
                               self.prefill_s, now - self.t_decode, cancelled,
                               warnings=self.e.request_warnings(b.prompts[int(b.index[r])], self.cfg),  # before "done"
                               confidences=b.conf[r, start:decoded_end].tolist())
        if self.on_event is not None:
            self.on_event(DecodeEvent("done", int(b.index[r]), -1, -1, [], [], generation=gen))
        return gen


def _samples_only(on_event: EventHook, n: int) -> EventHook:
    """The caller's hook for the first `n` samples; the image tie-break's blank-image twins stay silent."""
    def hook(ev: DecodeEvent) -> None:
        if ev.sample < n:
            on_event(ev)
    return hook


def _twin_follows(is_cancelled: Callable[[int], bool], n: int) -> Callable[[int], bool]:
    return lambda i: is_cancelled(i % n)


def lookahead_fits(cfg: DecodeConfig) -> bool:
    """Whether look-ahead decoding goes with the rest of `cfg` (what DecodeConfig.validate asks of it)."""
    return (cfg.decoder == "multistep" and cfg.remasking in LOOKAHEAD_REMASKING
            and not (cfg.tie_ratio > 0 and cfg.tie_break in ("one_step", "image")))


def _batched(results: list[Generation]) -> list[Generation]:
    for r in results:
        r.batch_size = len(results)
    return results


def build_generation(engine: ReportEngine, cfg: DecodeConfig, row: list[int], forwards: int, prefill_s: float,
                     decode_s: float, cancelled: bool = False, warnings: list[str] | None = None,
                     confidences: list[float] | None = None) -> Generation:
    """One sample's Generation from its decoded response columns, cut at max_new_tokens or the first <eos>
    (shared by the reference engine and the fast path, so both stop and count alike); `confidences` are the
    columns' commit probabilities, cut alike."""
    eos_set = set(engine.bb.eos_token_ids)
    stop = "cancelled" if cancelled else "length"
    cut = min(len(row), cfg.max_new_tokens)
    for j, t in enumerate(row[:cut]):
        if t in eos_set:
            stop, cut = "eos", j
            break
    ids = row[:cut]
    return Generation(
        text=engine.bb.tokenizer.decode(ids, skip_special_tokens=True).strip(),
        token_ids=ids,
        tokens=cut + (1 if stop == "eos" else 0),
        forwards=forwards,
        prefill_s=prefill_s,
        decode_s=decode_s,
        stop=stop,
        decoder=cfg.decoder,
        block_length=1 if cfg.decoder == "ar" else cfg.block_length,
        warnings=list(warnings or []),
        token_confidences=list(confidences[:cut]) if confidences is not None else [],
    )
