"""The fast decoding path: one-step fused block decoding (and AR) on a static cache with fixed-shape steps.

Why beside the reference engine (engine.py, the oracle it is tested against): on a GPU the reference loop is
bound by the host, not the weights: ~1,000 kernel launches a forward, a DynamicCache re-concatenated every
step, two host syncs a step, a row gather whenever a sample ends. Here:
  - the KV cache is a preallocated canvas-wide buffer (static_cache.py); the fused step writes
    `[block n-1 | masks of block n]` at the cache length, then rolls the length back by L;
  - a step reads its columns, mask and positions from device buffers indexed by the cache length, so every
    step of a decode has the same shapes and one captured step (torch.compile; CUDA graphs on CUDA) serves
    them all, per batch-size bucket;
  - stop flags (<eos>, length) accumulate on the device; the host looks at them only every `check_every`
    steps (every step when an event hook wants to see each step), and cancellation is read on the host;
  - finished rows stay in the batch (their extra steps are discarded) until the live count falls to a
    smaller power-of-two bucket, then the batch is compacted once;
  - attention is the GQA function that reads each KV head once (backbones/gqa_attention.py).
Supported: `onestep` with the fused cache, and `ar`, both with `use_cache`; anything else goes to the
reference engine. Greedy decodes give the reference's tokens; sampled ones are seeded but draw per bucket
row, so they match the reference only while no finished row lingers (always at batch size 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from echocxr.backbones.gqa_attention import GQA_ATTENTION, text_attention
from echocxr.backbones.prompt import EncodedPrompt
from echocxr.decoding.engine import DecodeConfig, EventHook, ReportEngine, build_generation
from echocxr.decoding.layout import Canvas, build_canvas
from echocxr.decoding.results import DecodeEvent, Generation
from echocxr.decoding.sampling import sample_tokens
from echocxr.decoding.static_cache import CanvasKVCache
from echocxr.diffusion.masks import canvas_mask

log = logging.getLogger(__name__)


def default_compile(device: torch.device | str) -> bool:
    """Compile by default on CUDA only: on CPU the compile time (tens of seconds) would make a one-off
    report slower than the whole eager decode; `bench decode` measures both."""
    return torch.device(device).type == "cuda"


def bucket(n: int) -> int:
    """The batch-size bucket of n live rows: the next power of two."""
    return 1 << max(n - 1, 0).bit_length()


def _widen(canvas: Canvas, multiple: int) -> Canvas:
    """Round the canvas width up to a multiple (so decodes of other lengths reuse the same compiled shapes):
    the extra columns are never fed and, invalid keys, never seen."""
    W = canvas.tokens.shape[1]
    extra = -W % max(multiple, 1)
    if not extra:
        return canvas
    B = canvas.tokens.shape[0]
    last = canvas.tokens.new_full((B, extra), 0)
    return replace(
        canvas,
        tokens=torch.cat([canvas.tokens, last], dim=1),
        key_valid=torch.cat([canvas.key_valid, torch.zeros(B, extra, dtype=torch.bool)], dim=1),
        positions=torch.cat([canvas.positions, canvas.positions.new_zeros(canvas.positions.shape[0], B, extra)], 2),
        groups=torch.cat([canvas.groups, torch.full((extra,), torch.iinfo(torch.long).max, dtype=torch.long)]),
    )


@dataclass(frozen=True)
class _Plan:
    """What one step feeds and keeps, per decoder."""

    first_q: int  # queries of the first step
    q: int  # queries of every later step
    n_out: int  # logits kept (the block, or 1 for AR)
    shift: int  # a logit at column c writes column c + shift (AR predicts the next token)
    rollback: int  # slots dropped after the forward (the denoised block)
    prefill_end: int  # columns [0, prefill_end) are prefilled


class _Rows:
    """Device state of the rows in the current bucket; every tensor keeps its shape between compactions."""

    def __init__(self, tokens, positions, key_valid, response_start, cache: CanvasKVCache):
        self.tokens = tokens  # (B, W)
        self.positions = positions  # (A, B, W)
        self.key_valid = key_valid  # (B, W)
        self.response_start = response_start  # (B,)
        self.finished_at = torch.full_like(response_start, -1)  # step at which <eos>/length ended the row
        self.step = torch.zeros((), dtype=torch.long, device=tokens.device)
        self.cache = cache

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, rows: torch.Tensor) -> None:
        for name in ("tokens", "key_valid", "response_start", "finished_at"):
            setattr(self, name, getattr(self, name).index_select(0, rows))
        self.positions = self.positions.index_select(1, rows)
        self.cache.select_rows(rows)

    def static_addresses(self) -> None:
        """Tell dynamo these buffers keep their address (CUDA graphs may then mutate them in place)."""
        for t in (self.tokens, self.positions, self.key_valid, self.response_start, self.finished_at, self.step,
                  self.cache.length, *self.cache.keys, *self.cache.values):
            torch._dynamo.mark_static_address(t)


class FastPath:
    """Decodes the configs it `supports` for a ReportEngine (set as `engine.fast_path`, or call directly)."""

    def __init__(self, engine: ReportEngine, compile: bool | None = None, check_every: int = 4,
                 attention: str | None = GQA_ATTENTION, width_multiple: int = 128):
        self.e = engine
        self.width_multiple = width_multiple  # canvas widths are rounded up: one graph serves many lengths
        self.model = engine.model
        self.device = engine.device
        self.compile = default_compile(self.device) if compile is None else compile
        self.check_every = max(1, check_every)
        self.attention = attention
        inner = self.model.model
        self._lm = inner.language_model if hasattr(inner, "language_model") else inner
        self._head = self.model.lm_head
        self._offsets = torch.arange(128, device=self.device)  # a step feeds at most 2L <= 128 columns
        self._compiled: Callable | None = None
        self.compile_s = 0.0  # wall time of the steps that compiled a graph (first call per shape)
        self._seen_shapes: set[tuple] = set()

    # ---- routing -------------------------------------------------------------------------------------
    def supports(self, cfg: DecodeConfig, prompts: list[EncodedPrompt] | None = None) -> bool:
        if not cfg.use_cache:
            return False
        if not (cfg.decoder == "ar" or (cfg.decoder == "onestep" and cfg.fused)):
            return False
        if prompts:  # every decode starts from a prefill (the vision inputs go there)
            L = cfg.block_length
            if cfg.decoder == "ar":
                return max(p.length for p in prompts) > 1
            if cfg.prefill == "block_grid":
                return max((p.length // L) * L for p in prompts) > 0
        return True

    # ---- decode --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[EncodedPrompt], cfg: DecodeConfig, on_event: EventHook | None = None,
                 is_cancelled: Callable[[int], bool] | None = None) -> list[Generation]:
        """Same contract as ReportEngine.generate (results in prompt order, same events and stops)."""
        cfg.validate()
        if not prompts:
            return []
        if not self.supports(cfg, prompts):
            raise ValueError(f"the fast path does not decode {cfg.decoder} (fused={cfg.fused}, "
                             f"use_cache={cfg.use_cache}); use the reference engine")
        with text_attention(self.model, self.attention):
            return self._generate(prompts, cfg, on_event, is_cancelled)

    def _generate(self, prompts, cfg: DecodeConfig, on_event, is_cancelled) -> list[Generation]:
        e = self.e
        ar = cfg.decoder == "ar"
        canvas = build_canvas(prompts, "ar" if ar else cfg.prefill, cfg.block_length, cfg.max_new_tokens,
                              fill_id=e.pad_id if ar else e.bb.mask_token_id, pad_id=e.pad_id,
                              rope_index=e._rope_index if e.is_vision else None)
        C, L = canvas.prefill_end, cfg.block_length
        canvas = _widen(canvas, self.width_multiple)
        W = canvas.tokens.shape[1]
        if ar:
            plan = _Plan(first_q=1, q=1, n_out=1, shift=1, rollback=0, prefill_end=C - 1)
        else:
            plan = _Plan(first_q=L, q=2 * L, n_out=L, shift=0, rollback=L, prefill_end=C)
        dev = self.device
        cache = CanvasKVCache.for_model(self.model, len(prompts), W)
        rows = _Rows(canvas.tokens.to(dev), canvas.positions.to(dev), canvas.key_valid.to(dev),
                     canvas.response_start.to(dev), cache)
        groups = canvas.groups.to(dev)
        index: list[int] = list(range(len(prompts)))  # sample of each row; -1: a filler row kept for the bucket
        starts = canvas.response_start.tolist()
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        results: list[Generation | None] = [None] * len(prompts)

        t0 = e._now()
        if plan.prefill_end > 0:
            self._prefill(rows, groups, prompts, plan.prefill_end)
        prefill_s = e._now() - t0
        t_decode = e._now()
        cancel_at: dict[int, int] = {}  # row -> step at which the host saw it cancelled
        check = 1 if on_event is not None else self.check_every
        step_fn = self._step_function(cfg)
        for step in range(canvas.n_blocks):
            q = plan.first_q if step == 0 else plan.q
            logits, new, committed = step_fn(rows, groups, q, plan, cfg, gen)
            if on_event is not None:
                self._emit(on_event, rows, index, step, new, committed, logits, cfg, C, L, ar)
            if is_cancelled is not None:
                for r, i in enumerate(index):
                    if i >= 0 and r not in cancel_at and bool(is_cancelled(i)):
                        cancel_at[r] = step
            last = step == canvas.n_blocks - 1
            if last or cancel_at or (step + 1) % check == 0:
                index, cancel_at = self._collect(rows, index, cancel_at, results, cfg, starts, prefill_s, t_decode,
                                                 plan, C, L, on_event, final=last)
                if all(i < 0 for i in index):
                    break
        return [r for r in results if r is not None]

    # ---- model calls ---------------------------------------------------------------------------------
    def _prefill(self, rows: _Rows, groups: torch.Tensor, prompts, end: int) -> None:
        """Columns [0, end) with the vision inputs, through the full model (eager): the cache length becomes end."""
        cols = torch.arange(end, device=self.device)
        mask = canvas_mask(groups, cols, rows.tokens.shape[1], rows.key_valid, self.e.bb.dtype)
        pos = rows.positions[:, :, :end]
        kwargs = {}
        if self.e.is_vision:
            pv = [p.pixel_values for p in prompts if p.pixel_values is not None]
            if pv:
                kwargs = {"pixel_values": torch.cat(pv).to(self.device),
                          "image_grid_thw": torch.cat([p.image_grid_thw for p in prompts
                                                       if p.image_grid_thw is not None]).to(self.device)}
        self.model(input_ids=rows.tokens[:, :end], attention_mask=mask,
                   position_ids=pos if self.e.is_vision else pos[0], past_key_values=rows.cache, use_cache=True,
                   logits_to_keep=1, **kwargs)
        rows.cache.advance(end)

    def _step(self, rows: _Rows, groups: torch.Tensor, q: int, plan: _Plan, cfg: DecodeConfig, gen=None):
        """One fixed-shape step: forward the q columns at the cache length, pick tokens, write them, keep stop
        flags on the device. Returns (logits of the kept columns, written tokens, which of them were open)."""
        cols = rows.cache.length + self._offsets[:q]  # canvas columns fed: the cache slot is the column
        ids = rows.tokens.index_select(1, cols)
        pos = rows.positions.index_select(2, cols)
        allowed = (groups[None, :] <= groups.index_select(0, cols)[:, None])[None] & rows.key_valid[:, None, :]
        dtype = self.e.bb.dtype
        mask = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]  # (B, 1, q, W): W wide
        hidden = self._lm(input_ids=ids, attention_mask=mask, position_ids=pos if self.e.is_vision else pos[0],
                          past_key_values=rows.cache, use_cache=True).last_hidden_state
        logits = self._head(hidden[:, -plan.n_out:])
        logits = logits.index_fill(-1, self.e.suppress, float("-inf"))
        rows.cache.advance(q)
        rows.cache.rollback(plan.rollback)  # a denoising pass never keeps its block's KV
        if cfg.temperature > 0:
            x0 = sample_tokens(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen)[0]
        else:
            x0 = logits.argmax(dim=-1)
        out_cols = cols[-plan.n_out:] + plan.shift
        cur = rows.tokens.index_select(1, out_cols)
        if plan.shift:  # AR: the next column is always open
            committed = torch.ones_like(cur, dtype=torch.bool)
        else:
            committed = cur == self.e.bb.mask_token_id  # one step commits every masked position
        new = torch.where(committed, x0, cur)
        rows.tokens.index_copy_(1, out_cols, new)
        generated = out_cols[None, :] >= rows.response_start[:, None]
        is_eos = (torch.isin(new, self.e.eos) & generated).any(dim=1)
        done = is_eos | (out_cols[-1] + 1 - rows.response_start >= cfg.max_new_tokens)
        rows.finished_at.copy_(torch.where(done & (rows.finished_at < 0), rows.step, rows.finished_at))
        rows.step.add_(1)
        return logits, new, committed

    def _step_function(self, cfg: DecodeConfig) -> Callable:
        """The eager step, or its compiled form (greedy only: sampling draws from a host generator)."""
        if not self.compile or cfg.temperature > 0:
            return self._step
        if self._compiled is None:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._compiled = torch.compile(self._step, mode=mode, dynamic=False)

        def run(rows: _Rows, groups, q, plan, cfg, gen):
            shape = (len(rows), q, rows.tokens.shape[1])
            fresh = shape not in self._seen_shapes
            if fresh:
                self._seen_shapes.add(shape)
                if self.device.type == "cuda":
                    rows.static_addresses()
                t = self.e._now()
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            out = self._compiled(rows, groups, q, plan, cfg)
            if fresh:
                self.compile_s += self.e._now() - t
            return out

        return run

    # ---- host side: events, stops, compaction --------------------------------------------------------
    def _emit(self, on_event, rows: _Rows, index, step, new, committed, logits, cfg, C, L, ar) -> None:
        new_l, com_l = new.tolist(), committed.tolist()
        starts = rows.response_start.tolist()
        for r, i in enumerate(index):
            if i < 0 or int(rows.finished_at[r]) not in (-1, step):
                continue
            lg = logits[r].float().cpu() if cfg.record_logits else None
            if ar:
                on_event(DecodeEvent("step", i, step, 0, new_l[r], com_l[r], step, lg))
            else:
                on_event(DecodeEvent("step", i, step, 0, new_l[r], com_l[r], C + step * L - starts[r], lg))

    def _collect(self, rows: _Rows, index, cancel_at, results, cfg, starts, prefill_s, t_decode, plan, C, L,
                 on_event, final: bool):
        """Sync once: turn finished or cancelled rows into results, compact to a smaller bucket if it pays."""
        fin = rows.finished_at.tolist()
        ended = []
        for r, i in enumerate(index):
            if i < 0:
                continue
            f = fin[r] if fin[r] >= 0 else None
            c = cancel_at.get(r)
            if f is None and c is None:
                continue
            end = min(s for s in (f, c) if s is not None)
            ended.append((r, i, end, c is not None and (f is None or c <= f)))
        if ended:
            now = self.e._now()
            tokens = rows.tokens.cpu()
            for r, i, end, cancelled in ended:
                decoded_end = C + (end + 1) * (1 if plan.shift else L)
                row = tokens[r, starts[i]:decoded_end].tolist()
                g = build_generation(self.e, cfg, row, end + 1, prefill_s, now - t_decode, cancelled)
                results[i] = g
                index[r] = -1
                if on_event is not None:
                    on_event(DecodeEvent("done", i, -1, -1, [], [], generation=g))
        live = [r for r, i in enumerate(index) if i >= 0]
        cancel_at = {r: s for r, s in cancel_at.items() if index[r] >= 0}
        if live and not final and bucket(len(live)) < len(rows):
            target = bucket(len(live))
            fillers = [r for r, i in enumerate(index) if i < 0][: target - len(live)]
            keep = live + fillers
            rows.select(torch.tensor(keep, device=self.device))
            cancel_at = {keep.index(r): s for r, s in cancel_at.items()}
            index = [index[r] for r in keep]
        return index, cancel_at
