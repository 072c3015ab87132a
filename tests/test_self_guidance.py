"""Self-guidance: the module's start, its auxiliary task, guided sampling and the train-sg command."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from emigm.cli import main as cli
from emigm.core.guidance import GuidanceConfig
from emigm.core.masking import draw_mask
from emigm.core.presets import get_preset
from emigm.core.statedict import CheckpointError
from emigm.io.exports import save_export
from emigm.io.loading import load_pipeline
from emigm.nn.model import MaskedGenerator
from emigm.nn.smoother import (
    SMOOTHER_DIR,
    Smoother,
    SmootherConfig,
    base_record,
    check_base,
    config_for,
    load_smoother,
    save_smoother,
)
from emigm.sample.passes import Networks
from emigm.sample.sampler import SamplerConfig, sample, sample_steps
from emigm.train.smoother import auxiliary_loss, corrupt


def make(preset: str = "test-tiny-vq", seed: int = 0, **backbone) -> MaskedGenerator:
    cfg = get_preset(preset)
    if preset == "test-tiny-vq":
        backbone.setdefault("mae", False)  # MaskGIT: a plain bidirectional transformer
    cfg = replace(cfg, backbone=replace(cfg.backbone, **backbone))
    torch.manual_seed(seed)
    model = MaskedGenerator(cfg).eval()
    for m in model.modules():  # the diffusion head starts blind to z (zero-init outputs): wake it
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.02)
    return model


def smoother_for(model: MaskedGenerator, seed: int = 1, trained: bool = False) -> Smoother:
    torch.manual_seed(seed)
    sm = Smoother(config_for(model)).eval()
    if trained:  # move away from the identity start so guidance has something to act on
        with torch.no_grad():
            for p in sm.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return sm


def test_identity_start_gives_the_plain_all_mask_prediction():
    model = make()
    sm = smoother_for(model)
    assert torch.equal(sm.channel, torch.eye(model.cfg.backbone.width))
    for block in sm.feedback:
        assert torch.equal(block.down.weight, torch.eye(model.cfg.backbone.width))
        assert not block.out.weight.any()
    labels = torch.tensor([1, 4])
    tokens = torch.randint(0, 16, (2, 16))
    mask = torch.rand(2, 16) < 0.5
    with torch.no_grad():
        hidden = model.features(tokens, mask, model.condition(labels)).hidden
        smooth = sm.smooth_z(model, hidden, labels)
        null = model.condition(labels, torch.ones(2, dtype=torch.bool))
        all_mask = model(torch.zeros_like(tokens), torch.ones_like(mask), null)
    torch.testing.assert_close(smooth, all_mask)


def test_selection_gates_by_cosine_and_applies_the_channel_matrix():
    sm = Smoother(SmootherConfig(width=4, num_layers=1, num_classes=2))
    with torch.no_grad():
        sm.anchor_proj.weight.copy_(torch.eye(4))
        sm.anchor_proj.bias.zero_()
        sm.channel.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])))
    h = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 0]]])
    labels = torch.tensor([0])
    xi = sm.anchor_norm(sm.anchor(labels))  # anchor_proj is the identity here
    gate = torch.stack([F.cosine_similarity(h[0, i], xi[0], dim=0).clamp(0, 1) for i in range(3)])
    want = (h[0] * gate[:, None]) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(sm.select(h, labels)[0], want)


def test_top_down_runs_from_the_top_layer_down():
    sm = Smoother(SmootherConfig(width=2, num_layers=3, num_classes=1))
    with torch.no_grad():
        for i, block in enumerate(sm.feedback):  # down multiplies by (i + 2), out by 10
            block.down.weight.copy_(torch.eye(2) * (i + 2))
            block.out.weight.copy_(torch.eye(2) * 10)
    x = torch.ones(1, 1, 2)
    td = sm.top_down(x)
    # layer 2 (top) sees x * 4; layer 1 sees x * 4 * 3; layer 0 sees x * 4 * 3 * 2
    assert [float(t[0, 0, 0].detach()) for t in td] == [240.0, 120.0, 40.0]


def test_var_loss_pins_down_against_the_layer_input():
    model = make()
    sm = smoother_for(model, trained=True)
    io = model.features(torch.randint(0, 16, (2, 16)), torch.rand(2, 16) < 0.5,
                        model.condition(torch.tensor([0, 1])), record=True).layer_io
    assert len(io) == len(model.layers) == len(sm.feedback)
    want = sum(F.mse_loss(b.down(o), i) for b, (i, o) in zip(sm.feedback, io))
    torch.testing.assert_close(sm.var_loss(io), want)


def test_corrupt_replaces_only_visible_tokens_at_the_rate():
    model = make()
    cfg = replace(config_for(model), error_rate=0.3)
    tokens = torch.zeros(400, 16, dtype=torch.long)
    mask = torch.rand(400, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    out, replaced = corrupt(tokens, mask, model, cfg, torch.Generator().manual_seed(1))
    assert not (replaced & mask).any()
    assert torch.equal(out[~replaced], tokens[~replaced])
    rate = float(replaced.sum() / (~mask).sum())
    assert 0.27 < rate < 0.33, rate


@pytest.mark.parametrize("preset", ["test-tiny-vq", "test-tiny"])
def test_auxiliary_loss_trains_only_the_module(preset):
    model = make(preset).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sm = smoother_for(model)
    opt = torch.optim.Adam(sm.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (8, 16)) if model.discrete else torch.randn(8, 16, 4)
    labels = torch.arange(8) % 10
    losses = []
    for _ in range(15):
        mask = draw_mask(model.cfg.masking, 8, 16, generator=g).mask
        loss = auxiliary_loss(sm, model, tokens, mask, labels, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(sm.channel, torch.eye(model.cfg.backbone.width))
    assert losses[-1] < losses[0], losses


def test_scale_zero_equals_the_unguided_sampler_exactly():
    model = make()
    sm = smoother_for(model, trained=True)
    cfg = SamplerConfig(num_steps=6, order="confidence", count_rule="exact", schedule="cosine")
    plain = sample(model, [1, 7], [3, 4], cfg, GuidanceConfig(cfg_scale=2.0))
    zero = sample(Networks(model, sm), [1, 7], [3, 4], cfg, GuidanceConfig(cfg_scale=2.0, sg_scale=0.0))
    assert torch.equal(plain.tokens, zero.tokens) and plain.passes == zero.passes


def test_guided_logits_follow_the_paper_formula():
    """(1 + s) normal - s smooth on the logits, for the token and for its confidence."""
    model = make()
    sm = smoother_for(model, trained=True)
    s = 1.5
    labels = torch.tensor([2])
    states = list(sample_steps(Networks(model, sm), labels, [0], SamplerConfig(num_steps=2, order="confidence"),
                               GuidanceConfig(sg_scale=s)))
    with torch.no_grad():  # step 0 from the all-masked start, recomputed by hand
        tokens, mask = torch.zeros(1, 16, dtype=torch.long), torch.ones(1, 16, dtype=torch.bool)
        hidden = model.features(tokens, mask, model.condition(labels)).hidden
        normal = model.head.logits(model.to_z(hidden)[0])
        smooth = model.head.logits(sm.smooth_z(model, hidden, labels)[0])
        guided = (1 + s) * normal - s * smooth
    got = states[0].draft[0]  # the step-0 prediction for every token (drafts on)
    # temperature 1 sampling from `guided` with the sampler's own noise: recompute the argmax of
    # log_softmax(guided) + gumbel via the head to compare the chosen codes
    from emigm.core import rng
    rows = torch.zeros(16, dtype=torch.long)
    cols = torch.arange(16)
    u = rng.uniform(torch.tensor([0])[rows], rng.STREAM_WHAT, 0, cols, 0, tail=(16,))
    want = (F.log_softmax(guided, -1) - torch.log(-torch.log(u))).argmax(-1)
    assert torch.equal(got, want)


def test_self_guidance_costs_one_sequential_pass_per_step():
    model = make()
    sm = smoother_for(model)
    st = sample(Networks(model, sm), [1], [0], SamplerConfig(num_steps=8), GuidanceConfig(sg_scale=1.0, sg_interval=(0.0, 0.5)))
    # steps whose time after the step s is in (0, 0.5]: s = 0.375, 0.25, 0.125, ~0 -> 4 steps of 8
    assert st.passes == 8 + 4
    st = sample(Networks(model, sm), [1], [0], SamplerConfig(num_steps=8), GuidanceConfig(sg_scale=1.0, cfg_scale=2.0))
    assert st.passes == 8 * 3


def test_batch_invariance_with_self_guidance():
    model = make()
    sm = smoother_for(model, trained=True)
    cfg, g = SamplerConfig(num_steps=5, order="confidence"), GuidanceConfig(sg_scale=1.0, cfg_scale=2.0)
    batch = sample(Networks(model, sm), [0, 3, 9], [5, 6, 7], cfg, g)
    for i, (label, seed) in enumerate([(0, 5), (3, 6), (9, 7)]):
        one = sample(Networks(model, sm), [label], [seed], cfg, g)
        assert torch.equal(one.tokens[0], batch.tokens[i])


def test_branching_with_self_guidance_reproduces_the_run():
    model = make()
    sm = smoother_for(model, trained=True)
    cfg, g = SamplerConfig(num_steps=6, order="confidence"), GuidanceConfig(sg_scale=2.0)
    states = list(sample_steps(Networks(model, sm), [4], [1], cfg, g))
    branch = sample(Networks(model, sm), [4], [1], cfg, g, init=states[2])
    assert torch.equal(branch.tokens, states[-1].tokens)


def test_continuous_head_extension_runs_and_changes_the_sample():
    model = make("test-tiny")
    sm = smoother_for(model, trained=True)
    cfg = SamplerConfig(num_steps=4, head_steps=4)
    plain = sample(model, [1], [0], cfg)
    guided = sample(Networks(model, sm), [1], [0], cfg, GuidanceConfig(sg_scale=1.0))
    assert torch.equal(plain.mask_after, guided.mask_after)
    assert (plain.tokens - guided.tokens).abs().max() > 1e-4
    assert guided.head_evals == 2 * plain.head_evals


def test_module_must_fit_its_base(tmp_path):
    model = make()
    with pytest.raises(ValueError, match="width 64 \\(base: 32\\)"):
        check_base(model, replace(config_for(model), width=64))
    sm = smoother_for(model)
    folder = save_smoother(sm, tmp_path / "sg", base_record(model))
    assert load_smoother(folder, model) is not None
    other = make(width=64, decoder_width=64)
    with pytest.raises(ValueError, match="does not fit its base"):
        load_smoother(folder, other)
    wrong_codes = save_smoother(sm, tmp_path / "sg2", {"tokenizer": {"kind": "vq", "codebook_size": 512}})
    with pytest.raises(CheckpointError, match="codebook_size 512"):
        load_smoother(wrong_codes, model)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is damaged: its sha256"):
        load_smoother(folder, model)
    (folder / "checksums.json").unlink()  # a module written before checksums existed: read, then refused
    with pytest.raises(CheckpointError, match="cannot read"):
        load_smoother(folder, model)


@pytest.mark.needs_fashion_mnist
def test_train_sg_end_to_end_then_sample(tmp_path, capsys):
    """A tiny base export, train-sg for a few steps (resumed once), the module next to the base,
    then sampling with --sg through load_pipeline; the base weights never change."""
    cfg = get_preset("test-tiny-vq")
    from emigm.train.tokenizer import TokenizerTrainConfig, train_tokenizer
    vq_dir = tmp_path / "vq"
    train_tokenizer(TokenizerTrainConfig(kind="vq", steps=2, batch_size=8, codebook_size=16), vq_dir,
                    tmp_path / "vq-run", limit=64, progress=False)
    cfg = replace(cfg, tokenizer=replace(cfg.tokenizer, image_size=28, path=str(vq_dir)),
                  backbone=replace(cfg.backbone, mae=False), data=replace(cfg.data, name="synthetic", image_size=28))
    torch.manual_seed(0)
    base = MaskedGenerator(cfg)
    export = tmp_path / "base"
    save_export(base, cfg, export)
    weights = (export / "model.safetensors").read_bytes()
    run = tmp_path / "sg-run"
    args = ["train-sg", "--base", str(export), "--out-dir", str(run), "--no-progress", "--device", "cpu",
            "--train.steps", "4", "--train.warmup_steps", "1", "--train.batch_size", "8", "--train.ckpt_every", "2", "--train.log_every", "2"]
    assert cli.main(args + ["--max-steps", "2"]) == 0
    assert cli.main(args) == 0
    assert (export / "model.safetensors").read_bytes() == weights
    (run / "export").rename(export / SMOOTHER_DIR)
    gen = load_pipeline(export)
    assert gen.smoother is not None
    out = tmp_path / "grid.png"
    # --cfg 1: self-guidance alone (the model's suggested guidance would add CFG steps)
    assert cli.main(["sample", "--checkpoint", str(export), "--sg", "1.0", "--cfg", "1", "--order", "confidence",
                     "--steps", "4", "--count-rule", "exact", "--schedule", "cosine", "--num-images", "2", "--out", str(out),
                     "--device", "cpu"]) == 0
    assert out.is_file()
    assert "8 transformer passes" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--sg", "1.0"], "self-guidance smoother"),
    (["--sg", "-1"], r"--sg must be in \[0, 20\]"),  # named as typed
    (["--sg", "nan"], "--sg must be a finite number"),
    (["--sg", "1", "--sg-interval", "0.5", "0.2"], "--sg-interval needs t_lo < t_hi"),
])
def test_bad_self_guidance_input_is_one_line(tmp_path, capsys, args, match):
    code = cli.main(["sample", "--preset", "test-tiny", "--random-init", "--steps", "2", "--device", "cpu",
                     "--out", str(tmp_path / "x.png"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert pytest.importorskip("re").search(match, err), err
