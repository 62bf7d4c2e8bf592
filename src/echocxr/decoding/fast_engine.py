"""The fast decoding path: one-step fused (and AR, multi-step, vanilla) decoding on a static cache, fixed-shape steps.

Why beside the reference engine (engine.py, the oracle it is tested against): on a GPU the reference loop is
bound by the host, not the weights: ~1,000 kernel launches a forward, a DynamicCache re-concatenated every
step, two host syncs a step, a row gather whenever a sample ends. Here:
  - the KV cache is a preallocated canvas-wide buffer (static_cache.py); the fused step writes
    `[block n-1 | masks of block n]` at the cache length, then rolls the length back by L;
  - a vanilla-cache decoder (multi-step, one-step vanilla) runs its fixed number of rounds per block with
    no host check for "all committed" (a round with nothing masked commits nothing and is not counted),
    then one KV-write pass;
  - a step reads its columns, mask and positions from device buffers indexed by the cache length, so every
    step of a decode has the same shapes and one captured step (torch.compile; CUDA graphs on CUDA) serves
    them all, per batch-size bucket;
  - stop flags (<eos>, length) accumulate on the device; the host looks at them only every `check_every`
    steps (every step when an event hook wants to see each step), and cancellation is read on the host;
  - finished rows stay in the batch (their extra steps are discarded) until the live count falls to a
    smaller power-of-two bucket, then the batch is compacted once;
  - attention is the GQA function that reads each KV head once (backbones/gqa_attention.py).
Supported: every decoder with `use_cache` (one-step fused, one-step vanilla and multi-step with a KV-write
pass per block, AR); `use_cache=False` (the recompute oracle) stays on the reference engine. Greedy decodes
give the reference's tokens; sampled ones are seeded but draw per bucket row, so they match the reference
only while no finished row lingers (always at batch size 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from echocxr.backbones.depth import language_model
from echocxr.backbones.gqa_attention import GQA_ATTENTION, text_attention
from echocxr.backbones.prompt import EncodedPrompt
from echocxr.backbones.settings import DEFAULT_TIE_BREAK
from echocxr.decoding.engine import DecodeConfig, EventHook, ReportEngine, build_generation
from echocxr.decoding.layout import Canvas, build_canvas
from echocxr.decoding.results import DecodeEvent, Generation
from echocxr.decoding.sampling import sample_tokens, select_transfer, transfer_schedule
from echocxr.decoding.static_cache import CanvasKVCache
from echocxr.decoding.step_capture import StepCapture
from echocxr.diffusion.masks import canvas_mask


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
    schedule: tuple[int, ...] | None = None  # vanilla cache: tokens each denoising round may commit, then a
    # KV-write pass per block; None: one forward per block (fused) or token (AR) commits every open position


class _Rows:
    """Device state of one (batch bucket, width): allocated once and reused by every decode of that shape, so a
    captured step (CUDA graph) keeps reading and writing the same addresses."""

    def __init__(self, engine: ReportEngine, batch: int, width: int, axes: int):
        dev = engine.device
        self.tokens = torch.zeros(batch, width, dtype=torch.long, device=dev)
        self.conf = torch.zeros(batch, width, dtype=torch.float32, device=dev)  # probability at commit, per column
        self.positions = torch.zeros(axes, batch, width, dtype=torch.long, device=dev)
        self.key_valid = torch.zeros(batch, width, dtype=torch.bool, device=dev)
        self.groups = torch.zeros(width, dtype=torch.long, device=dev)  # visibility group of each column
        self.response_start = torch.zeros(batch, dtype=torch.long, device=dev)
        self.stop_col = torch.zeros(batch, dtype=torch.long, device=dev)  # column after the last allowed token
        self.finished_at = torch.zeros(batch, dtype=torch.long, device=dev)  # block that ended the row, or -1
        self.forwards = torch.zeros(batch, dtype=torch.long, device=dev)  # denoising forwards taken part in
        self.forwards_at = torch.zeros(batch, dtype=torch.long, device=dev)  # ... when the row ended
        self.step = torch.zeros((), dtype=torch.long, device=dev)
        self.cache = CanvasKVCache.for_model(engine.model, batch, width)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def load(self, canvas: Canvas, max_new_tokens: int) -> None:
        """Start a decode: the canvas in, the cache empty, no row finished."""
        self.tokens.copy_(canvas.tokens)
        self.conf.zero_()
        self.positions.copy_(canvas.positions)
        self.key_valid.copy_(canvas.key_valid)
        self.groups.copy_(canvas.groups)
        self.response_start.copy_(canvas.response_start)
        self.stop_col.copy_(canvas.response_start + max_new_tokens)
        self.finished_at.fill_(-1)
        self.forwards.zero_()
        self.forwards_at.zero_()
        self.step.zero_()
        self.cache.length.zero_()
        for t in (*self.cache.keys, *self.cache.values):
            t.zero_()  # stale slots are masked, but must stay finite

    def take(self, other: _Rows, rows: torch.Tensor) -> None:
        """Compaction: these buffers (a smaller bucket) get `rows` of `other`, mid-decode."""
        for name in ("tokens", "conf", "key_valid", "response_start", "stop_col", "finished_at", "forwards",
                     "forwards_at"):
            getattr(self, name).copy_(getattr(other, name).index_select(0, rows))
        self.positions.copy_(other.positions.index_select(1, rows))
        self.groups.copy_(other.groups)
        self.step.copy_(other.step)
        self.cache.length.copy_(other.cache.length)
        for mine, theirs in zip((*self.cache.keys, *self.cache.values), (*other.cache.keys, *other.cache.values),
                                strict=True):
            mine.copy_(theirs.index_select(0, rows))


class FastPath:
    """Decodes the configs it `supports` for a ReportEngine (set as `engine.fast_path`, or call directly).

    compile: capture the fixed-shape step (None: on CUDA only); backend: how (step_capture.py: "auto" = CUDA
    graphs on CUDA, torch.compile/inductor on CPU). A capture that fails falls back to the eager step with a
    warning (`capture_error`).
    """

    def __init__(self, engine: ReportEngine, compile: bool | None = None, check_every: int = 4,
                 attention: str | None = GQA_ATTENTION, width_multiple: int = 128, backend: str = "auto",
                 max_shapes: int = 8):
        self.e = engine
        self.model = engine.model
        self.device = engine.device
        self.compile = default_compile(self.device) if compile is None else compile
        self._capture = StepCapture(self._step, self.device, backend)
        self.check_every = max(1, check_every)
        self.attention = attention
        self.width_multiple = width_multiple  # canvas widths are rounded up: one graph serves many lengths
        self.max_shapes = max_shapes  # (batch, width) buffer sets kept, with their graphs
        self._lm = language_model(self.model)
        self._head = self.model.lm_head
        self._offsets = torch.arange(128, device=self.device)  # a step feeds at most 2L <= 128 columns
        self._buffers: dict[tuple[int, int], _Rows] = {}

    @property
    def backend(self) -> str:
        return self._capture.backend

    @property
    def compile_s(self) -> float:
        """Wall time of the steps that compiled or captured a shape."""
        return self._capture.compile_s

    @property
    def capture_error(self) -> str | None:
        return self._capture.error

    # ---- routing -------------------------------------------------------------------------------------
    def supports(self, cfg: DecodeConfig, prompts: list[EncodedPrompt] | None = None) -> bool:
        if not cfg.use_cache or cfg.refine > 0:  # refinement: the reference engine's data-dependent second pass
            return False
        if cfg.lookahead > 0:  # look-ahead windows change width forward by forward: the reference engine
            return False
        if cfg.decoder == "multistep" and cfg.tie_ratio > 0 and cfg.tie_break != DEFAULT_TIE_BREAK:
            return False  # one_step ties in later rounds read the block's first forward (reference engine)
        if cfg.image_ties:  # each sample beside its blank-image twin (the reference engine)
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
        self._prompts = prompts  # the requests' own warnings go into their results
        e = self.e
        ar = cfg.decoder == "ar"
        canvas = build_canvas(prompts, "ar" if ar else cfg.prefill, cfg.block_length, cfg.max_new_tokens,
                              fill_id=e.pad_id if ar else e.bb.mask_token_id, pad_id=e.pad_id,
                              rope_index=e._rope_index if e.is_vision else None)
        C, L = canvas.prefill_end, cfg.block_length
        canvas = _widen(canvas, self.width_multiple)
        if ar:
            plan = _Plan(first_q=1, q=1, n_out=1, shift=1, rollback=0, prefill_end=C - 1)
        elif cfg.decoder == "onestep" and cfg.fused:
            plan = _Plan(first_q=L, q=2 * L, n_out=L, shift=0, rollback=L, prefill_end=C)
        else:  # multistep, or one-step with the vanilla cache
            plan = _Plan(first_q=L, q=L, n_out=L, shift=0, rollback=L, prefill_end=C,
                         schedule=tuple(transfer_schedule(L, cfg.steps_per_block)))
        rows = self._rows(len(prompts), canvas.tokens.shape[1], canvas.positions.shape[0])
        rows.load(_to(canvas, self.device), cfg.max_new_tokens)
        index: list[int] = list(range(len(prompts)))  # sample of each row; -1: a filler row kept for the bucket
        starts = canvas.response_start.tolist()
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        results: list[Generation | None] = [None] * len(prompts)

        t0 = e._now()
        self._prefill(rows, prompts, plan.prefill_end)
        prefill_s = e._now() - t0
        t_decode = e._now()
        cancel_at: dict[int, tuple[int, torch.Tensor]] = {}  # row -> (block, forwards) when the host saw a cancel
        check = 1 if on_event is not None else self.check_every
        rounds = plan.schedule or (None,)
        for step in range(canvas.n_blocks):  # a block (a token for AR)
            q = plan.first_q if step == 0 else plan.q
            for s, k in enumerate(rounds):
                logits, new, committed, active = self._run_step(rows, q, plan, cfg, gen, k=k,
                                                                finish=s == len(rounds) - 1)
                if on_event is not None:
                    self._emit(on_event, rows, index, step, s, new, committed, active, logits, cfg, C, L, ar)
            if is_cancelled is not None:
                for r, i in enumerate(index):
                    if i >= 0 and r not in cancel_at and bool(is_cancelled(i)):
                        cancel_at[r] = (step, rows.forwards[r].clone())
            last = step == canvas.n_blocks - 1
            if last or cancel_at or (step + 1) % check == 0:
                rows, index, cancel_at = self._collect(rows, index, cancel_at, results, cfg, starts, prefill_s,
                                                       t_decode, plan, C, L, on_event, final=last)
                if all(i < 0 for i in index):
                    break
            if plan.schedule is not None and not last:
                self._run_step(rows, L, plan, cfg, gen, write=True)  # vanilla cache: write the finished block
        return [r for r in results if r is not None]

    def _rows(self, batch: int, width: int, axes: int) -> _Rows:
        key = (batch, width)
        rows = self._buffers.pop(key, None)
        if rows is None or rows.positions.shape[0] != axes:
            self._capture.forget(lambda k: k[:2] == key)
            while len(self._buffers) >= self.max_shapes:  # forget the oldest shape and its graphs
                old = next(iter(self._buffers))
                del self._buffers[old]
                self._capture.forget(lambda k, old=old: k[:2] == old)
            rows = _Rows(self.e, batch, width, axes)
        self._buffers[key] = rows  # most recent last
        return rows

    # ---- model calls ---------------------------------------------------------------------------------
    def _prefill(self, rows: _Rows, prompts, end: int) -> None:
        """Columns [0, end) with the vision inputs, through the full model (eager): the cache length becomes end."""
        cols = torch.arange(end, device=self.device)
        mask = canvas_mask(rows.groups, cols, rows.tokens.shape[1], rows.key_valid, self.e.bb.dtype)
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

    def _step(self, rows: _Rows, q: int, plan: _Plan, cfg: DecodeConfig, gen=None, k: int | None = None,
              finish: bool = True, write: bool = False):
        """One fixed-shape step: forward the q columns at the cache length, pick tokens, write them, keep stop
        flags on the device (`finish`: the block's last round). k: tokens this round may commit (None: every
        open one). write: a vanilla-cache KV-write pass only.
        Returns (logits of the kept columns, written tokens, which were committed, which rows were open)."""
        cols = rows.cache.length + self._offsets[:q]  # canvas columns fed: the cache slot is the column
        ids = rows.tokens.index_select(1, cols)
        pos = rows.positions.index_select(2, cols)
        groups = rows.groups
        allowed = (groups[None, :] <= groups.index_select(0, cols)[:, None])[None] & rows.key_valid[:, None, :]
        dtype = self.e.bb.dtype
        mask = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]  # (B, 1, q, W): W wide
        hidden = self._lm(input_ids=ids, attention_mask=mask, position_ids=pos if self.e.is_vision else pos[0],
                          past_key_values=rows.cache, use_cache=True).last_hidden_state
        if write:
            rows.cache.advance(q)
            return None, None, None, None
        logits = self._head(hidden[:, -plan.n_out:])
        logits = logits.index_fill(-1, self.e.suppress, float("-inf"))
        rows.cache.advance(q)
        rows.cache.rollback(plan.rollback)  # a denoising pass never keeps its block's KV
        if cfg.temperature > 0 or k is not None or cfg.tie_ratio > 0:
            x0, conf, probs = sample_tokens(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen, cfg.tie_ratio)
        else:  # greedy: the chosen token's softmax probability without materialising the softmax
            probs = None  # one forward per block: no remasking rule reads it
            x0 = logits.argmax(dim=-1)
            lf = logits.float()
            conf = torch.exp(lf.amax(dim=-1) - torch.logsumexp(lf, dim=-1))
        out_cols = cols[-plan.n_out:] + plan.shift
        cur = rows.tokens.index_select(1, out_cols)
        if plan.shift:  # AR: the next column is always open
            committed = torch.ones_like(cur, dtype=torch.bool)
            active = committed[:, 0]
        else:
            masked = cur == self.e.bb.mask_token_id
            active = masked.any(dim=1)
            # one forward per block commits every masked position; a multi-step round follows the remasking rule
            committed = masked if k is None else select_transfer(masked, conf, k, cfg.remasking, cfg.threshold,
                                                                 probs)
        new = torch.where(committed, x0, cur)
        rows.tokens.index_copy_(1, out_cols, new)
        rows.conf.index_copy_(1, out_cols, torch.where(committed, conf, rows.conf.index_select(1, out_cols)))
        rows.forwards.add_(active.long())
        if not finish:
            return logits, new, committed, active
        generated = out_cols[None, :] >= rows.response_start[:, None]
        is_eos = ((new[..., None] == self.e.eos).any(dim=-1) & generated).any(dim=1)
        done = is_eos | (out_cols[-1] + 1 >= rows.stop_col)
        ends = done & (rows.finished_at < 0)
        rows.forwards_at.copy_(torch.where(ends, rows.forwards, rows.forwards_at))
        rows.finished_at.copy_(torch.where(ends, rows.step, rows.finished_at))
        rows.step.add_(1)
        return logits, new, committed, active

    def _run_step(self, rows: _Rows, q: int, plan: _Plan, cfg: DecodeConfig, gen, k: int | None = None,
                  finish: bool = True, write: bool = False):
        """The eager step, or its captured form (greedy only: sampling draws from a host generator)."""
        step = (k, finish, write)
        if not self.compile or cfg.temperature > 0:
            return self._step(rows, q, plan, cfg, gen, *step)
        key = (len(rows), rows.tokens.shape[1], q, plan, cfg.decoder, cfg.remasking, cfg.threshold, cfg.tie_ratio,
               *step)
        return self._capture(key, rows, q, plan, cfg, None, *step)

    # ---- host side: events, stops, compaction --------------------------------------------------------
    def _emit(self, on_event, rows: _Rows, index, block, rnd, new, committed, active, logits, cfg, C, L, ar) -> None:
        new_l, com_l, act = new.tolist(), committed.tolist(), active.tolist()
        starts, fin = rows.response_start.tolist(), rows.finished_at.tolist()
        cols = C + block if ar else C + block * L + self._offsets[:L]  # the canvas columns of `new`
        conf_l = rows.conf[:, cols].reshape(len(rows), -1).tolist()
        for r, i in enumerate(index):
            if i < 0 or not act[r] or fin[r] not in (-1, block):
                continue
            lg = logits[r].float().cpu() if cfg.record_logits else None
            offset = block if ar else C + block * L - starts[r]
            on_event(DecodeEvent("step", i, block, rnd, new_l[r], com_l[r], offset, lg, confidences=conf_l[r]))

    def _collect(self, rows: _Rows, index, cancel_at, results, cfg, starts, prefill_s, t_decode, plan, C, L,
                 on_event, final: bool):
        """Sync once: turn finished or cancelled rows into results, compact to a smaller bucket if it pays."""
        fin, fwd = rows.finished_at.tolist(), rows.forwards_at.tolist()
        ended = []
        for r, i in enumerate(index):
            if i < 0:
                continue
            f = fin[r] if fin[r] >= 0 else None
            c = cancel_at[r][0] if r in cancel_at else None
            if f is None and c is None:
                continue
            cancelled = c is not None and (f is None or c <= f)
            ended.append((r, i, c if cancelled else f, int(cancel_at[r][1]) if cancelled else fwd[r], cancelled))
        if ended:
            now = self.e._now()
            tokens, confs = rows.tokens.cpu(), rows.conf.cpu()
            for r, i, end, forwards, cancelled in ended:
                decoded_end = C + (end + 1) * (1 if plan.shift else L)
                row = tokens[r, starts[i]:decoded_end].tolist()
                g = build_generation(self.e, cfg, row, forwards, prefill_s, now - t_decode, cancelled,
                                     warnings=self.e.request_warnings(self._prompts[i], cfg),  # before "done"
                                     confidences=confs[r, starts[i]:decoded_end].tolist())
                results[i] = g
                index[r] = -1
                if on_event is not None:
                    on_event(DecodeEvent("done", i, -1, -1, [], [], generation=g))
        live = [r for r, i in enumerate(index) if i >= 0]
        cancel_at = {r: s for r, s in cancel_at.items() if index[r] >= 0}
        if live and not final and bucket(len(live)) < len(rows):
            target = bucket(len(live))
            keep = live + [r for r, i in enumerate(index) if i < 0][: target - len(live)]  # fillers
            smaller = self._rows(target, rows.tokens.shape[1], rows.positions.shape[0])
            smaller.take(rows, torch.tensor(keep, device=self.device))
            rows = smaller
            cancel_at = {keep.index(r): s for r, s in cancel_at.items()}
            index = [index[r] for r in keep]
        return rows, index, cancel_at


def _to(canvas: Canvas, device: torch.device) -> Canvas:
    return replace(canvas, tokens=canvas.tokens.to(device), key_valid=canvas.key_valid.to(device),
                   positions=canvas.positions.to(device), groups=canvas.groups.to(device),
                   response_start=canvas.response_start.to(device))
