"""Identity layers appended to a student: the grown model computes exactly what the teacher did."""

from __future__ import annotations

import pytest
import torch

from echocxr.backbones.depth import append_identity_layers, language_model


@pytest.fixture(scope="module")
def tok():
    from echocxr.backbones.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(["There is no pleural effusion.", "The heart size is normal."] * 4, vocab_size=300)


@pytest.mark.parametrize("kind", ["qwen2", "qwen2_5_vl"])
def test_appended_layers_leave_the_logits_unchanged(tok, kind):
    from echocxr.backbones.tiny import build_tiny_model

    vision = dict(vision_hidden=16, vision_depth=1) if kind == "qwen2_5_vl" else {}
    model = build_tiny_model(kind, tok, seed=0, init_std=0.5, hidden=32, layers=2, heads=2, **vision).eval()
    ids = torch.randint(20, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert append_identity_layers(model, 3) == 5
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    cfg = language_model(model).config
    assert cfg.num_hidden_layers == 5 and len(cfg.layer_types) == 5
    assert [layer.self_attn.layer_idx for layer in language_model(model).layers] == [0, 1, 2, 3, 4]
    # the new layers are trainable copies, not shared modules: a step on one moves only it
    new = language_model(model).layers[-1]
    assert new is not language_model(model).layers[-2]
    assert new.self_attn.q_proj.weight.data_ptr() != language_model(model).layers[1].self_attn.q_proj.weight.data_ptr()


def test_grown_model_round_trips_and_decodes_with_a_cache(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from echocxr.backbones.tiny import build_tiny_model

    model = build_tiny_model("qwen2", tok, seed=0, init_std=0.5, hidden=32, layers=2, heads=2).eval()
    ids = torch.randint(20, 200, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=8, do_sample=False)
        append_identity_layers(model, 2)
        torch.nn.init.normal_(language_model(model).layers[-1].mlp.down_proj.weight, std=0.5)  # now it matters
        grown = model.generate(ids, max_new_tokens=8, do_sample=False)
        no_cache = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(grown, no_cache)  # the cache has a slot for every appended layer
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.num_hidden_layers == 4
    with torch.no_grad():
        assert torch.equal(back(input_ids=ref).logits, model(input_ids=ref).logits)


def test_negative_count_is_refused(tok):
    from echocxr.backbones.tiny import build_tiny_model

    with pytest.raises(ValueError):
        append_identity_layers(build_tiny_model("qwen2", tok, hidden=32, layers=1, heads=2), -1)
