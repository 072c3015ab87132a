"""Inpainting: the mask specs and the ring, the pictures it starts from (and the ones it refuses), the run
(the unpainted tokens of every result are exactly the encoded image's, for every head and order), and
the CLI's refusals (one line, exit 2, nothing written)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emigm.cli import main as cli
from emigm.core.guidance import GuidanceConfig
from emigm.io.loading import load_pipeline
from emigm.io.pictures import PictureError, class_test_index, encode_picture, fmnist_picture, read_picture
from emigm.sample.inpaint import MaskError, add_ring, check_mask, inpaint_state, parse_mask
from emigm.sample.orders import orders_of
from emigm.sample.plan import plan_counts
from emigm.sample.sampler import SamplerConfig, sample, sample_steps

L = 49


def grid(mask: torch.Tensor) -> list[str]:
    return ["".join("#" if v else "." for v in row) for row in mask.reshape(7, 7).tolist()]


# ----------------------------------------------------------------------------- mask specs


def test_halves_and_centre_on_the_7x7_grid() -> None:
    assert grid(parse_mask("left", L)) == ["####..."] * 7
    assert grid(parse_mask("right", L)) == ["...####"] * 7
    assert grid(parse_mask("top", L)) == ["#######"] * 4 + ["......."] * 3
    assert grid(parse_mask("bottom", L)) == ["......."] * 3 + ["#######"] * 4
    assert grid(parse_mask("centre", L)) == ["......."] * 2 + ["..###.."] * 3 + ["......."] * 2
    assert torch.equal(parse_mask("center", L), parse_mask("centre", L))
    assert grid(parse_mask("LEFT + top", L)) == ["#######"] * 4 + ["####..."] * 3


def test_random_and_explicit_tokens() -> None:
    a = parse_mask("random:0.3:7", L)
    assert int(a.sum()) == round(0.3 * L)
    assert torch.equal(a, parse_mask("random:0.3:7", L))
    assert not torch.equal(a, parse_mask("random:0.3:8", L))
    assert torch.equal(parse_mask("random:0.3", L), parse_mask("random:0.3:0", L))
    assert int(parse_mask("random:1", L).sum()) == L
    t = parse_mask("tokens:0, 8,48", L)
    assert t.nonzero().flatten().tolist() == [0, 8, 48]


@pytest.mark.parametrize("spec, needle", [
    ("", "give a mask"), ("diagonal", "'diagonal' is not a mask"), ("left+", "'' is not a mask"),
    ("random:0", "must be in (0, 1]"), ("random:1.5", "must be in (0, 1]"), ("random:nan", "must be in (0, 1]"),
    ("random:x", "not a number"), ("random:0.5:-1", "seed must be in [0, 2^63 - 1]"),
    ("random:0.5:x", "not an integer"), ("random:0.5:1:2", "random:P:SEED"),
    ("tokens:49", "outside the 49 tokens"), ("tokens:", "comma-separated"), ("tokens:1,,2", "comma-separated"),
    ("tokens:\uff13", "ASCII digits"), ("left:1", "is not a mask"),
])
def test_a_spec_that_does_not_parse_is_one_line(spec: str, needle: str) -> None:
    with pytest.raises(MaskError) as e:
        parse_mask(spec, L)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_ring_grows_the_region_by_k_tokens_with_diagonals() -> None:
    c = parse_mask("centre", L)
    assert grid(add_ring(c, 1)) == ["......."] + [".#####."] * 5 + ["......."]
    assert int(add_ring(c, 2).sum()) == L
    assert torch.equal(add_ring(c, 0), c)
    one = parse_mask("tokens:0", L)
    assert grid(add_ring(one, 1))[:3] == ["##.....", "##.....", "......."]
    with pytest.raises(MaskError, match="ring needs a painted region"):
        add_ring(torch.zeros(L, dtype=torch.bool), 1)
    with pytest.raises(MaskError, match=r"\[0, 6\]"):
        add_ring(c, 7)


def test_empty_and_full_masks_are_refused_with_the_reason() -> None:
    with pytest.raises(MaskError, match="paints no token: nothing to inpaint"):
        check_mask(torch.zeros(L, dtype=torch.bool))
    with pytest.raises(MaskError, match="that is plain sampling"):
        check_mask(torch.ones(L, dtype=torch.bool))


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def pipes():
    return {name: load_pipeline(name) for name in ("fmnist-emigm", "fmnist-maskgit", "fmnist-emigm-mini")}


def _settings(name: str, head_discrete: bool):
    orders = ["random", "halton", "raster", "fixed"] + (list(orders_of("score")) if head_discrete else [])
    out = []
    for order in orders:
        out.append(dict(order=order, count_rule="binomial", remask="off"))
    out.append(dict(order="random", count_rule="exact", remask="cap", remask_eta=0.3))
    out.append(dict(order="halton", count_rule="binomial", remask="rescale", remask_eta=0.5))
    if head_discrete:
        out.append(dict(order="confidence", count_rule="exact", remask="cap", remask_eta=0.3))
    return out


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("name", ["fmnist-emigm", "fmnist-maskgit", "fmnist-emigm-mini"])
def test_unpainted_tokens_stay_the_encoded_ones_for_every_head_and_order(pipes, name: str) -> None:
    """Every step of the generator and the fast path's result keep the unpainted tokens bit for bit, reveal
    only painted ones, never re-mask a kept one, and end with every painted token revealed."""
    pipe = pipes[name]
    discrete = pipe.model.head.discrete
    picture = fmnist_picture(3)
    encoded = encode_picture(pipe, picture).expand(2, -1, *([] if discrete else [-1])).clone()
    mask = add_ring(parse_mask("left", L), 0) | parse_mask("tokens:48", L)
    keep = ~mask.expand(2, L)
    labels, seeds = [picture.label] * 2, [5, 6]
    guidance = GuidanceConfig(cfg_scale=2.0, cfg_interval=(0.0, 1.0))
    if name == "fmnist-maskgit":
        guidance = GuidanceConfig(cfg_scale=2.0, sg_scale=0.5)
    for extra in _settings(name, discrete):
        sampler = SamplerConfig(num_steps=6, schedule="cosine", head_steps=4, draft_steps=1, **extra)
        init = inpaint_state(encoded, mask, labels, seeds, sampler, guidance)
        states = list(sample_steps(pipe, labels, seeds, sampler, guidance, init=init))
        assert len(states) == 6 and states[0].step == 0, extra
        for st in states:
            assert torch.equal(st.tokens[keep], encoded[keep]), (extra, st.step)
            assert not bool((st.revealed & keep).any()) and not bool((st.remasked & keep).any()), extra
            assert torch.equal(st.frozen, keep)
        assert not bool(states[-1].mask_after.any()), extra
        fast = sample(pipe, labels, seeds, sampler, guidance, init=init)
        assert torch.equal(fast.tokens[keep], encoded[keep]), extra
        if extra["remask"] == "off":  # the same positions and (up to float rounding) the same values
            assert [bool(s.revealed[0, 48]) for s in states].count(True) == 1


def test_exact_counts_are_planned_over_the_painted_tokens() -> None:
    cfg = SamplerConfig(num_steps=4, schedule="cosine", count_rule="exact")
    seeds = torch.tensor([0, 1])
    painted = torch.tensor([9, 30])
    counts = plan_counts(seeds, L, cfg, masked=painted, frozen=torch.tensor([L - 9, L - 30]))
    assert counts.sum(0).tolist() == [9, 30]
    # floor(P gamma(u)) stay masked: the same per-step fractions as a fresh run of P tokens
    for b, p in enumerate([9, 30]):
        fresh = plan_counts(seeds[b:b + 1], p, cfg)[:, 0]
        assert counts[:, b].tolist() == fresh.tolist()
    # no frozen tokens: the plan of a fresh run, unchanged
    assert torch.equal(plan_counts(seeds, L, cfg, masked=torch.tensor([L, L]), frozen=torch.tensor([0, 0])),
                       plan_counts(seeds, L, cfg))


@pytest.mark.needs_fashion_mnist
def test_too_many_steps_for_the_painted_tokens_is_refused(pipes) -> None:
    pipe = pipes["fmnist-maskgit"]
    tokens = encode_picture(pipe, fmnist_picture(0))
    with pytest.raises(MaskError, match="16 steps exceed the 9 painted tokens"):
        inpaint_state(tokens, parse_mask("centre", L), [0], [0], SamplerConfig(num_steps=16))


@pytest.mark.needs_fashion_mnist
def test_a_branch_of_an_inpainting_run_keeps_its_frozen_tokens(pipes) -> None:
    """Intervene-and-resume on an inpainting run: branching from a step keeps the image's tokens frozen
    (remasking never touches them) and, with nothing changed, reproduces the run."""
    pipe = pipes["fmnist-maskgit"]
    tokens = encode_picture(pipe, fmnist_picture(1))
    mask = parse_mask("bottom", L)
    sampler = SamplerConfig(num_steps=8, schedule="cosine", count_rule="exact", order="confidence", remask="cap",
                            remask_eta=0.5)
    g = GuidanceConfig()
    run = list(sample_steps(pipe, [2], [3], sampler, g, init=inpaint_state(tokens, mask, [2], [3], sampler, g)))
    branch = list(sample_steps(pipe, [2], [3], sampler, g, init=run[2]))
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(run[3:], branch))
    assert all(torch.equal(b.frozen, ~mask[None]) for b in branch)


# ----------------------------------------------------------------------------- pictures


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h pixels, with one tiny IDAT: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.needs_fashion_mnist
def test_test_pictures_by_index_and_by_class() -> None:
    p = fmnist_picture(0)
    assert p.pixels.shape == (28, 28) and p.label == 9 and p.what == "test image 0"
    i = class_test_index(3, 2)
    assert fmnist_picture(i).label == 3
    with pytest.raises(PictureError, match=r"\[0, 9999\]"):
        fmnist_picture(10000)
    with pytest.raises(PictureError, match="index within it"):
        class_test_index(3, 1000)


def test_a_file_is_converted_and_says_how() -> None:
    rgba = Image.new("RGBA", (60, 30), (255, 255, 255, 255))
    rgba.paste((10, 10, 10, 255), (20, 5, 40, 25))
    p = read_picture(_png(rgba), "shirt.png")
    assert p.pixels.shape == (28, 28) and p.label is None
    joined = " | ".join(p.notes)
    for needle in ("grayscale", "light background inverted", "60 x 30 padded", "resized from 60 x 60"):
        assert needle in joined, joined
    assert p.pixels[14, 14] > 200 and p.pixels[0, 0] == 0  # inverted: the dark square became light
    deep = Image.fromarray((np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 80), "I;16")
    q = read_picture(_png(deep), "deep.png")
    assert any("16-bit: converted to 8 bits" in n for n in q.notes)
    frames = [Image.new("L", (28, 28), v) for v in (0, 128, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    a = read_picture(buf.getvalue(), "anim.png")
    assert any("animated (3 frames): converted, the first frame used" in n for n in a.notes)
    assert int(a.pixels.max()) == 0


@pytest.mark.parametrize("make, needle", [
    (lambda: b"hello, not an image", "is not a PNG or JPEG image"),
    (lambda: b"", "is empty"),
    (lambda: _png(Image.new("L", (64, 64), 7))[:60], "truncated or corrupt"),
    (lambda: _png_header_only(5000, 20), "5000 x 20 pixels; the limit is 4096 x 4096"),
    (lambda: _png_header_only(100000, 100000), "refused before decoding"),
    (lambda: b"GIF89a" + b"\0" * 20, "is not a PNG or JPEG image"),
])
def test_bad_pictures_are_one_line(make, needle: str) -> None:
    with pytest.raises(PictureError) as e:
        read_picture(make(), "x.png")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.needs_fashion_mnist
def test_cli_writes_the_strip_and_the_trace(tmp_path, capsys) -> None:
    out, trace = tmp_path / "r.png", tmp_path / "r.json"
    code = cli.main(["inpaint", "--checkpoint", "fmnist-maskgit", "--test-index", "7", "--mask", "centre", "--ring",
                     "1", "--num-images", "2", "--out", str(out), "--trace", str(trace)])
    said = capsys.readouterr().out
    assert code == 0, said
    assert "25 of 49 tokens painted" in said and "16 steps" in said
    with Image.open(out) as im:
        assert im.size == (4 * (5 * 30 + 2), 4 * 32)  # original | reconstruction | masked | 2 results, 4x
    import json
    doc = json.loads(trace.read_text())
    assert doc["inpaint"]["painted"] == add_ring(parse_mask("centre", L), 1).nonzero().flatten().tolist()
    assert sum(len(s["revealed"][0]) for s in doc["steps"]) == 25


@pytest.fixture()
def files(tmp_path):
    f = {"out": str(tmp_path / "out.png"), "text": str(tmp_path / "notes.png"), "trunc": str(tmp_path / "t.png"),
         "big": str(tmp_path / "big.png"), "dir": str(tmp_path)}
    Path(f["text"]).write_text("not an image")
    Path(f["trunc"]).write_bytes(_png(Image.new("L", (64, 64), 7))[:60])
    Path(f["big"]).write_bytes(_png_header_only(8000, 8000))
    return f


IP = ["inpaint", "--checkpoint", "fmnist-emigm-mini", "--out", "{out}"]
CLI_CASES = [
    (IP + ["--image", "{text}", "--class", "0", "--mask", "left"], "is not a PNG or JPEG image"),
    (IP + ["--image", "{trunc}", "--class", "0", "--mask", "left"], "truncated or corrupt"),
    (IP + ["--image", "{big}", "--class", "0", "--mask", "left"], "8000 x 8000 pixels; the limit is 4096 x 4096"),
    (IP + ["--image", "{dir}", "--class", "0", "--mask", "left"], "is a folder"),
    (IP + ["--image", "{text}", "--mask", "left"], "--image needs --class"),
    (IP + ["--test-index", "10000", "--mask", "left"], "the test index must be in [0, 9999]"),
    (IP + ["--test-index", "-1", "--mask", "left"], "the test index must be in [0, 9999]"),
    (IP + ["--mask", "left"], "give one image"),
    (IP + ["--test-index", "1", "--image", "{text}", "--mask", "left"], "give one image"),
    (IP + ["--test-index", "1", "--mask", "leftish"], "'leftish' is not a mask"),
    (IP + ["--test-index", "1", "--mask", "random:2"], "must be in (0, 1]"),
    (IP + ["--test-index", "1", "--mask", "tokens:"], "comma-separated"),
    (IP + ["--test-index", "1", "--mask", "random:1"], "that is plain sampling"),
    (IP + ["--test-index", "1", "--mask", "centre", "--ring", "2"], "that is plain sampling"),
    (IP + ["--test-index", "1", "--mask", "centre", "--ring", "9"], "--ring must be in [0, 6]"),
    (IP + ["--test-index", "1", "--mask", "centre", "--steps", "10"], "10 steps exceed the 9 painted tokens"),
    (IP + ["--test-index", "1", "--mask", "centre", "--class", "Robe"], "Robe"),
]


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("argv, needle", CLI_CASES, ids=[f"{i}" for i in range(len(CLI_CASES))])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(argv, needle, files, capsys) -> None:
    code = cli.main([a.format(**files) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert not Path(files["out"]).exists()


def test_empty_mask_and_ring_on_empty_mask() -> None:
    """No spec paints nothing on its own, so the library's empty-mask refusals are reached through it."""
    with pytest.raises(MaskError, match="ring needs a painted region"):
        add_ring(parse_mask("tokens:3", L) & False, 1)
    with pytest.raises(MaskError, match="nothing to inpaint"):
        inpaint_state(torch.zeros(1, L, dtype=torch.long), torch.zeros(L, dtype=torch.bool), [0], [0],
                      SamplerConfig(num_steps=1))


# ----------------------------------------------------------------------------- a painted reveal order


def test_a_painted_reveal_order_is_the_fixed_orders_priority() -> None:
    from emigm.sample.orders import painted_priority, parse_reveal_order

    p = painted_priority([24, 3, 40], L)
    assert p.argsort()[:5].tolist() == [24, 3, 40, 0, 1]
    assert sorted(p.tolist()) == list(range(L))
    assert parse_reveal_order(" 24, 3,40", L) == [24, 3, 40]
    for bad, needle in (("24,24", "given twice"), ("49", "outside the 49 tokens"), ("1,,2", "comma-separated"),
                        ("x", "ASCII digits"), ("", "comma-separated")):
        with pytest.raises(ValueError, match=needle):
            parse_reveal_order(bad, L)


def test_sample_and_inpaint_follow_a_painted_reveal_order(tmp_path, capsys) -> None:
    import json

    trace = tmp_path / "t.json"
    code = cli.main(["sample", "--checkpoint", "fmnist-maskgit", "--order", "fixed", "--reveal-order", "24,23,25,17",
                     "--count-rule", "exact", "--steps", "49", "--num-images", "1", "--out", str(tmp_path / "s.png"),
                     "--trace", str(trace)])
    assert code == 0, capsys.readouterr().err
    revealed = [s["revealed"][0] for s in json.loads(trace.read_text())["steps"]]
    assert revealed[:6] == [[24], [23], [25], [17], [0], [1]]
    assert cli.main(["sample", "--checkpoint", "fmnist-maskgit", "--reveal-order", "3", "--out",
                     str(tmp_path / "x.png")]) == 2
    assert "--reveal-order goes with --order fixed" in capsys.readouterr().err
