"""Tests for captioner.py: LoRA at initialisation and its gradients, the soft prompt's labels
against a hand computation of the LM's cross-entropy, the trainable parameters, overfitting four
captions, greedy decoding and beam search on a language model whose distribution is written by
hand, loading an OPT folder, and the Tab. 4 protocol functions on hand-made cases."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

import caption_metrics
import captioner
import clip_tokenizer
import lamp
import metrics
import vqvae

CAPTIONS = ["a person walks forward", "a person jumps", "someone waves the right hand", "a man walks in a circle"]
FEAT = 12  # motion feature width of the test motions


def small_config(**changes) -> captioner.CaptionerConfig:
    cfg = captioner.CaptionerConfig(max_tokens=12, lm_width=32, lm_layers=2, lm_heads=2, lm_ff=64,
                                    lm_positions=64, lm_dropout=0.0)
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = clip_tokenizer.train_bpe(CAPTIONS * 3, 600, tmp_path_factory.mktemp("bpe"))
    return clip_tokenizer.Tokenizer.from_pretrained(folder)


def lamp_parts(tokenizer, seed=0):
    torch.manual_seed(seed)
    cfg = lamp.LaMPConfig(vq_codes=16, vq_code_dim=8, vq_width=16, vq_depth=2, hidden_size=32, n_layers=2,
                          n_heads=2, ff_dim=64, max_positions=77, n_queries=12, embed_dim=16, dropout=0.0,
                          init_std=0.1)
    return lamp.LaMP(cfg, len(tokenizer), tokenizer.eot_id), vqvae.MotionVQVAE(cfg, FEAT).eval()


def build(tokenizer, cfg=None, seed=0) -> captioner.Captioner:
    cfg = cfg or small_config()
    model, vq = lamp_parts(tokenizer, seed)
    lm, text = captioner.offline_lm(tokenizer, cfg)
    return captioner.Captioner(model, vq, lm, text, cfg)


def motions(B=4, T=44, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, FEAT, generator=g), torch.tensor([44, 40, 36, 44, 40, 36][:B])


# ----------------------------------------------------------------------------
# LoRA


def test_lora_starts_as_the_frozen_layer_and_only_a_b_learn():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    lora = captioner.LoRALinear(base, r=4, alpha=8.0, dropout=0.0)
    x = torch.randn(3, 6)
    assert torch.equal(lora(x), base(x))                                       # B = 0
    assert lora.scale == 2.0 and lora.A.weight.shape == (4, 6) and lora.B.weight.shape == (5, 4)
    lora(x).sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert lora.B.weight.grad is not None and lora.B.weight.grad.abs().sum() > 0
    assert lora.A.weight.grad is not None                                      # zero at init: B = 0
    with torch.no_grad():
        lora.B.weight.normal_()
    # y = W x + b + (alpha / r) B A x
    assert torch.allclose(lora(x), base(x) + 2.0 * x @ lora.A.weight.T @ lora.B.weight.T, atol=1e-6)


def test_add_lora_wraps_q_and_v_of_every_layer(tokenizer):
    cfg = small_config()
    lm, _ = captioner.offline_lm(tokenizer, cfg)
    x = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        before = lm.eval()(input_ids=x).logits
    names = captioner.add_lora(lm, r=4, alpha=8.0)
    assert len(names) == 2 * cfg.lm_layers and all(n.endswith(("q_proj", "v_proj")) for n in names)
    with torch.no_grad():
        assert torch.equal(lm(input_ids=x).logits, before)
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * len(names) and all(n.endswith((".A.weight", ".B.weight")) for n in trainable)
    with pytest.raises(ValueError, match="no nn.Linear"):
        captioner.add_lora(nn.Sequential(nn.Linear(2, 2)))


# ----------------------------------------------------------------------------
# The loss and the trainable parameters


def test_soft_prompt_and_padding_carry_no_target(tokenizer):
    """The loss is the mean over every caption token after the start token (end token included)
    of -log softmax(logits at the previous position), computed here from the LM's logits."""
    model = build(tokenizer).eval()
    x, lengths = motions(3)
    caps = CAPTIONS[:3]
    loss = model.loss(x, lengths, caps)
    with torch.no_grad():
        prompt = model.soft_prompt(x, lengths)                                 # (B, Q, W)
        ids, valid = model.text.frame(caps, model.cfg.max_tokens)              # (B, L)
        Q = prompt.shape[1]
        inputs = torch.cat([prompt, model.lm.get_input_embeddings()(ids)], 1)
        logits = model.lm(inputs_embeds=inputs, attention_mask=torch.cat([torch.ones(3, Q), valid], 1).long()).logits
    terms = []
    for b in range(3):
        for j in range(1, int(valid[b].sum())):                                # token j, read at position Q + j - 1
            terms.append(-F.log_softmax(logits[b, Q + j - 1], -1)[ids[b, j]])
    assert ids[0, 0] == tokenizer.sot_id and ids[0, int(valid[0].sum()) - 1] == tokenizer.eot_id
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def test_trainable_parameters_are_the_query_path_opt_proj_and_lora(tokenizer):
    model = build(tokenizer).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if n.startswith("lm.")}
    assert lora and all(n.endswith((".A.weight", ".B.weight")) for n in lora)
    assert {n for n in trainable if n.startswith("opt_proj.")} == {"opt_proj.weight", "opt_proj.bias"}
    assert not any(n.startswith("vq.") for n in trainable) and not model.vq.training
    # every LaMP parameter the soft prompt reaches is trainable, and only those
    model.lamp.requires_grad_(True)
    model.loss(*motions(2), CAPTIONS[:2]).backward()
    reached = {f"lamp.{n}" for n, p in model.lamp.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {n for n in trainable if n.startswith("lamp.")}
    assert "lamp.query_tokens" in reached and "lamp.bert.embeddings.word_embeddings.weight" not in reached


def test_captions_are_framed_and_cut_keeping_the_end_token(tokenizer):
    text = captioner.ClipCaptionText(tokenizer)
    ids, valid = text.frame(["a person jumps", "someone waves the right hand"], max_tokens=4)
    assert ids.shape == (2, 4) and valid.all()
    assert ids[:, 0].tolist() == [tokenizer.sot_id] * 2 and ids[:, -1].tolist() == [tokenizer.eot_id] * 2
    assert text.decode(text.frame(["a person jumps"], 32)[0][0]) == "a person jumps"


# ----------------------------------------------------------------------------
# Decoding


def test_overfits_four_captions(tokenizer):
    """The recipe in small: the LM learns the captions as text, then the captioner learns to pick
    each motion's caption; greedy and beam search both return them."""
    torch.manual_seed(0)
    cfg = small_config()
    model, vq = lamp_parts(tokenizer)
    lm, text = captioner.offline_lm(tokenizer, cfg)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    lm_loss = captioner.lm_loss_fn(lm, text, cfg.max_tokens, "cpu")
    for _ in range(60):
        opt.zero_grad()
        lm_loss({"caption": CAPTIONS})[0].backward()
        opt.step()
    cap = captioner.Captioner(model, vq, lm, text, cfg).train()
    x, lengths = motions(4)
    batch = {"motion": x, "lengths": lengths, "caption": CAPTIONS}
    step = captioner.loss_fn(cap, "cpu")
    opt = torch.optim.AdamW([p for p in cap.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(150):
        opt.zero_grad()
        step(batch)[0].backward()
        opt.step()
    assert captioner.caption(cap, x, lengths, beams=1) == CAPTIONS
    assert captioner.caption(cap, x, lengths) == CAPTIONS
    assert cap.training
    split = Split([x[i, :int(lengths[i])].numpy() for i in range(4)], [[c] for c in CAPTIONS])
    assert captioner.caption_dataset(cap, split, "cpu", batch_size=3) == CAPTIONS


def test_beams_1_is_greedy_decoding(tokenizer):
    model = build(tokenizer, seed=1).eval()
    x, lengths = motions(3, seed=1)
    with torch.no_grad():
        prompt = model.soft_prompt(x, lengths)
        expected = []
        for b in range(3):
            tokens = [tokenizer.sot_id]
            for _ in range(model.cfg.max_tokens - 1):
                ids = torch.tensor([tokens])
                inputs = torch.cat([prompt[b:b + 1], model.lm.get_input_embeddings()(ids)], 1)
                nxt = int(model.lm(inputs_embeds=inputs).logits[0, -1].argmax())
                if nxt == tokenizer.eot_id:
                    break
                tokens.append(nxt)
            expected.append(tokenizer.decode(tokens))
    got = captioner.caption(model, x, lengths, beams=1)
    assert got == expected
    for text in captioner.caption(model, x, lengths, beams=3):  # plain text, no special tokens
        assert isinstance(text, str) and "<|" not in text


def test_beam_search_finds_what_greedy_misses():
    """Tokens 0 start, 1 end, 2..5 words. From start: 2 (p 0.6) or 3 (0.4); after 2: 4 (0.55) or
    5 (0.45); after 3: 4 (1.0); after 4 or 5: end (1.0). Greedy: 2 4 end, p = 0.33; the best
    caption is 3 4 end, p = 0.4 (both 3 tokens long, so normalising by length changes nothing)."""
    table = torch.full((6, 6), 1e-9)
    table[0, 2], table[0, 3] = 0.6, 0.4
    table[2, 4], table[2, 5] = 0.55, 0.45
    table[3, 4] = table[4, 1] = table[5, 1] = 1.0
    table[1, 1] = 1.0
    logp = table.div(table.sum(1, keepdim=True)).log()

    def next_logprobs(tokens, parents):
        return logp[tokens[:, -1]]

    assert captioner.beam_search(next_logprobs, 2, 0, 1, beams=1, max_new=5) == [[2, 4], [2, 4]]
    assert captioner.beam_search(next_logprobs, 2, 0, 1, beams=2, max_new=5) == [[3, 4], [3, 4]]
    assert captioner.beam_search(next_logprobs, 1, 0, 1, beams=2, max_new=1) == [[2]]  # cut at max_new


def test_load_lm_from_a_folder(tmp_path, tokenizer):
    """A tiny random OPT and a byte-level BPE (OPT's kind) trained here, saved as an OPT folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CAPTIONS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(hf), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                       word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                       eos_token_id=1)
    OPTForCausalLM(config).save_pretrained(tmp_path)
    hf.save_pretrained(tmp_path)
    lm, text = captioner.load_lm(tmp_path)
    newline = hf("\n", add_special_tokens=False).input_ids
    assert text.start_id == 1 and [text.end_id] == newline
    ids, valid = text.frame(["a man jumps"], 32)
    assert ids[0].tolist() == [1, *hf("a man jumps", add_special_tokens=False).input_ids, newline[0]]
    assert text.decode(ids[0, 1:-1]) == "a man jumps"
    cfg = small_config()
    model, vq = lamp_parts(tokenizer)
    cap = captioner.Captioner(model, vq, lm, text, cfg)
    x, lengths = motions(2)
    assert torch.isfinite(cap.loss(x, lengths, CAPTIONS[:2]))
    assert all("</s>" not in c and "\n" not in c for c in captioner.caption(cap, x, lengths, beams=2))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        captioner.load_lm(tmp_path / "missing")


# ----------------------------------------------------------------------------
# The Tab. 4 protocol


class Split:
    """What the protocol reads of data.MotionTextDataset: items (name, motion, captions), items as
    dicts (first caption, no crop), fork()."""

    def __init__(self, motions_, captions):
        self.items = [(f"m{i}", m, c) for i, (m, c) in enumerate(zip(motions_, captions))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        name, motion, captions = self.items[i]
        return {"motion": torch.as_tensor(motion).float(), "length": len(motion), "caption": captions[0], "name": name}

    def fork(self):
        return self


class FirstFrame(nn.Module):
    """A stand-in evaluator: a motion's embedding is its first frame; a text's is a table row."""

    def __init__(self, table=None):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1) if table is None else table, requires_grad=False)

    def encode_motion(self, motion, lengths):
        return motion[:, 0]

    def encode_text(self, ids):
        return self.table[ids]


def test_retrieval_captions_take_the_nearest_by_cosine():
    """Train motions (1, 0) "right" and (3, 3) "diagonal"; the test motion (1, 1.2) is nearer
    "right" in Euclidean distance (1.2 against 2.7) but nearer "diagonal" in angle (cos 0.996
    against 0.64): the cosine picks "diagonal". (-2, 0.1) points right's way back: cos -0.999
    for "right", -0.68 for "diagonal"."""
    train = Split([np.tile([1.0, 0.0], (8, 1)), np.tile([3.0, 3.0], (8, 1))], [["right", "east"], ["diagonal"]])
    test = Split([np.tile([1.0, 1.2], (8, 1)), np.tile([0.9, 0.0], (8, 1)), np.tile([-2.0, 0.1], (8, 1))],
                 [["x"], ["y"], ["z"]])
    assert captioner.retrieval_captions(FirstFrame(), train, test, "cpu") == ["diagonal", "right", "diagonal"]


def test_human_captions_skip_single_caption_motions():
    test = Split([np.zeros((4, 2))] * 3, [["only"], ["a", "b"], ["c", "d", "e"]])
    assert captioner.human_captions(test) == (["a", "c"], [["b"], ["d", "e"]])


def test_caption_rows_are_caption_metrics_times_100(tokenizer):
    model, _ = lamp_parts(tokenizer)
    bert, adapter, layer = captioner.lamp_bert_scorer(model, tokenizer)
    assert layer == 2 and not bert.training
    assert adapter.encode("a person jumps") == tokenizer(["a person jumps"])[0, :5].tolist()
    refs = [[CAPTIONS[0], CAPTIONS[3]], [CAPTIONS[1]], [CAPTIONS[2], CAPTIONS[0]]]
    rows = {"generated": ["a person walks", "a person jumps high", "someone waves"], "human": CAPTIONS[1:]}
    table = captioner.caption_rows(rows, refs, bert, adapter, layer)
    assert list(table) == ["generated", "human"]
    for row, cands in rows.items():
        expected = {"BLEU@1": caption_metrics.bleu(cands, refs, n=1), "BLEU@4": caption_metrics.bleu(cands, refs),
                    "ROUGE-L": caption_metrics.rouge_l(cands, refs), "CIDEr-D": caption_metrics.cider_d(cands, refs),
                    "BERTScore": caption_metrics.bert_score(cands, refs, bert, adapter, layer)}
        assert table[row] == {k: (100 * v, 0.0) for k, v in expected.items()}
    assert 0 < table["generated"]["BERTScore"][0] <= 100


def test_caption_retrieval_scores_captions_against_their_motions():
    """Caption i names row i of the text table, motion i's first frame is that row: the right
    captions rank first with MMdist 0; shifted captions do not."""
    N, E = 40, 6
    table = torch.randn(N, E, generator=torch.Generator().manual_seed(0))
    test = Split([table[i].repeat(8, 1).numpy() for i in range(N)], [[f"c{i}"] for i in range(N)])
    evaluator = FirstFrame(table)

    def tokenize(captions):
        return torch.tensor([int(c[1:]) for c in captions])

    right = captioner.caption_retrieval([f"c{i}" for i in range(N)], test, evaluator, tokenize, seed=0)
    assert right == {"R-precision top-1": 1.0, "R-precision top-3": 1.0, "MMdist": 0.0}
    shifted = [f"c{(i + 1) % N}" for i in range(N)]
    wrong = captioner.caption_retrieval(shifted, test, evaluator, tokenize, seed=0)
    text, motion = table[(torch.arange(N) + 1) % N].double().numpy(), table.double().numpy()
    assert wrong["R-precision top-1"] == metrics.r_precision(text, motion, seed=0)[0] < 0.2
    assert math.isclose(wrong["MMdist"], metrics.matching_score(text, motion))
    with pytest.raises(ValueError, match="captions for"):
        captioner.caption_retrieval(shifted[:3], test, evaluator, tokenize, seed=0)


def test_offline_lm_parameters_count_opts_own():
    cfg = captioner.CaptionerConfig(lm_width=48, lm_layers=3, lm_heads=4, lm_ff=80, lm_positions=40)
    config = OPTConfig(vocab_size=500, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, ffn_dim=80,
                       word_embed_proj_dim=48, max_position_embeddings=40)
    assert captioner.offline_lm_parameters(cfg, 500) == sum(p.numel() for p in OPTForCausalLM(config).parameters())


def test_an_offline_lm_that_cannot_fit_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """The paper preset's offline LM has OPT-2.7B's sizes: ~42 GB to pretrain, refused on 24 GB
    with the two ways out; a small stand-in passes."""
    paper = captioner.CaptionerConfig()
    assert 2.6e9 < captioner.offline_lm_parameters(paper) < 2.7e9  # OPT-2.7B: 2.65 B
    with pytest.raises(ValueError, match=r"about 42\.\d GB, and this cpu has 24\.0 GB. Give --llm DIR"):
        captioner.check_offline_lm_fits(paper, torch.device("cpu"), available=24 * 10 ** 9)
    small = dataclasses.replace(paper, lm_width=256, lm_layers=2, lm_heads=4, lm_ff=1024)
    captioner.check_offline_lm_fits(small, torch.device("cpu"), available=24 * 10 ** 9)
    import train
    monkeypatch.setattr(captioner, "device_memory", lambda device: 24 * 10 ** 9)
    assert train.main(["--stage", "all", "--preset", "paper", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert "--set lamp_m2t.lm_width=256" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "refused before any work"
