"""Training sequences as model inputs: causal (AR), RAD and full-duplication (SDAR) layouts.

RAD (ECHO-SPEC §3): [prompt P][noisy response R][clean response R]; only the response is duplicated.
Full duplication (prior work, SDAR): [noisy P+R][clean P+R] on one block grid from position 0: every
token, the prompt's included, appears twice, which is what makes it cost 2(P+R).
Samples are right-padded to a common length; padding is invisible (key-masked) and unscored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echocxr.backbones.prompt import EncodedPrompt
from echocxr.diffusion.masks import additive_mask, rad_layout_allowed

LAYOUTS = ("rad", "full")


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # (B, S)
    position_ids: torch.Tensor  # (3 or 1, B, S)
    allowed: torch.Tensor  # (B, S, S) bool
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    # where the scored positions are: (B, R) column of each response slot in the noisy copy (or AR inputs)
    target_cols: torch.Tensor
    targets: torch.Tensor  # (B, R) token ids the slots should predict (-100 = unscored)
    noised: torch.Tensor  # (B, R) bool: slot is masked in the noisy copy (RAD/full) / scored (AR)
    clean_cols: torch.Tensor | None = None  # (B, R) column of each response slot in the clean copy

    def model_inputs(self, dtype: torch.dtype, is_vision: bool) -> dict:
        kw = dict(input_ids=self.input_ids, attention_mask=additive_mask(self.allowed[:, None], dtype),
                  position_ids=self.position_ids if is_vision else self.position_ids[0])
        if self.pixel_values is not None:
            kw.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw)
        return kw

    def to(self, device) -> SequenceBatch:
        for name, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, name, v.to(device))
        return self


def pad_to_blocks(ids: list[int], block_length: int, fill: int) -> list[int]:
    return ids + [fill] * (-len(ids) % block_length)


def _vision(prompts: list[EncodedPrompt]):
    pv = [p.pixel_values for p in prompts if p.pixel_values is not None]
    if not pv:
        return None, None
    return torch.cat(pv), torch.cat([p.image_grid_thw for p in prompts if p.image_grid_thw is not None])


def build_ar_batch(prompts: list[EncodedPrompt], responses: list[list[int]], rope_index, pad_id: int) -> SequenceBatch:
    """Causal sequence [prompt][response]; slot j of the response is predicted at the column before it."""
    B = len(prompts)
    S = max(p.length + len(r) for p, r in zip(prompts, responses, strict=True))
    R = max(len(r) for r in responses)
    n_axes = 3 if rope_index is not None else 1
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    pos = torch.zeros(n_axes, B, S, dtype=torch.long)
    valid = torch.zeros(B, S, dtype=torch.bool)
    tcols = torch.zeros(B, R, dtype=torch.long)
    targets = torch.full((B, R), -100, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        P = p.length
        ids[i, :P] = p.input_ids
        ids[i, P:P + len(r)] = torch.tensor(r)
        ppos = rope_index(p) if rope_index is not None else torch.arange(P)[None]
        pos[:, i, :P] = ppos
        nxt = int(ppos.max()) + 1
        pos[:, i, P:P + len(r)] = torch.arange(nxt, nxt + len(r))[None]
        valid[i, :P + len(r)] = True
        tcols[i, :len(r)] = torch.arange(P - 1, P - 1 + len(r))
        targets[i, :len(r)] = torch.tensor(r)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    allowed = causal[None] & valid[:, None, :]
    allowed |= torch.eye(S, dtype=torch.bool)[None]  # padding rows see themselves: no empty softmax rows
    pv, grid = _vision(prompts)
    return SequenceBatch(ids, pos, allowed, pv, grid, tcols, targets, targets != -100)


def build_diffusion_batch(prompts: list[EncodedPrompt], responses: list[list[int]], noisy: list[list[int]],
                          block_length: int, rope_index, pad_id: int, mask_id: int, layout: str = "rad") -> SequenceBatch:
    """RAD or full-duplication sequences. `responses` (clean) and `noisy` are whole blocks, same lengths."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (use one of {LAYOUTS})")
    L = block_length
    B = len(prompts)
    R = max(len(r) for r in responses)
    n_axes = 3 if rope_index is not None else 1
    rows = []
    for p, clean, nz in zip(prompts, responses, noisy, strict=True):
        assert len(clean) == len(nz) and len(clean) % L == 0, "responses must be whole blocks"
        P, Ri = p.length, len(clean)
        ppos = rope_index(p) if rope_index is not None else torch.arange(P)[None]
        nxt = int(ppos.max()) + 1
        rpos = torch.arange(nxt, nxt + Ri)[None].expand(n_axes, -1)
        clean_t, noisy_t = torch.tensor(clean), torch.tensor(nz)
        if layout == "rad":
            ids = torch.cat([p.input_ids, noisy_t, clean_t])
            pos = torch.cat([ppos, rpos, rpos], dim=1)
            allowed = rad_layout_allowed(P, Ri, L)
            ncols = torch.arange(P, P + Ri)
            ccols = torch.arange(P + Ri, P + 2 * Ri)
        else:
            # invisible fillers before the prompt put the response on a block boundary of the shared grid
            lead = -P % L
            N = lead + P + Ri
            seq_clean = torch.cat([torch.full((lead,), pad_id), p.input_ids, clean_t])
            seq_noisy = torch.cat([torch.full((lead,), pad_id), p.input_ids, noisy_t])
            ids = torch.cat([seq_noisy, seq_clean])
            full_pos = torch.cat([torch.zeros(n_axes, lead, dtype=torch.long), ppos, rpos], dim=1)
            pos = torch.cat([full_pos, full_pos], dim=1)
            allowed = rad_layout_allowed(0, N, L)
            real = torch.ones(2 * N, dtype=torch.bool)
            real[:lead] = False
            real[N:N + lead] = False
            allowed = allowed & real[None, :]
            allowed |= torch.eye(2 * N, dtype=torch.bool)
            ncols = torch.arange(lead + P, N)
            ccols = torch.arange(N + lead + P, 2 * N)
        rows.append((ids, pos, allowed, ncols, ccols, clean_t, noisy_t))
    S = max(r[0].shape[0] for r in rows)
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    pos = torch.zeros(n_axes, B, S, dtype=torch.long)
    allowed = torch.eye(S, dtype=torch.bool).repeat(B, 1, 1)
    tcols = torch.zeros(B, R, dtype=torch.long)
    ccols = torch.zeros(B, R, dtype=torch.long)
    targets = torch.full((B, R), -100, dtype=torch.long)
    noised = torch.zeros(B, R, dtype=torch.bool)
    for i, (rid, rpos, ral, nc, cc, clean_t, noisy_t) in enumerate(rows):
        n = rid.shape[0]
        ids[i, :n] = rid
        pos[:, i, :n] = rpos
        allowed[i, :n, :n] = ral
        Ri = clean_t.shape[0]
        tcols[i, :Ri] = nc
        ccols[i, :Ri] = cc
        targets[i, :Ri] = clean_t
        noised[i, :Ri] = noisy_t == mask_id
    # the full layout holds every prompt (its image tokens included) twice: one set of image features per copy
    pv, grid = _vision(prompts if layout == "rad" else [p for p in prompts for _ in range(2)])
    return SequenceBatch(ids, pos, allowed, pv, grid, tcols, targets, noised, clean_cols=ccols)


def gather_slots(logits: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """logits (B, S, V), cols (B, R) -> (B, R, V)."""
    return logits.gather(1, cols[..., None].expand(-1, -1, logits.shape[-1]))
