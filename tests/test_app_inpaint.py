"""The explorer's inpainting and re-scoring helpers (app/inpaint.py, app/rescoring.py): every refusal is a
FieldError naming the control it goes next to; the run's start keeps the image's tokens; a re-scored step
at the run's settings says it commits the run's tokens."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from app import inpaint as ip
from app import rescoring as rs
from emigm.core.fields import FieldError
from emigm.core.guidance import GuidanceConfig
from emigm.io.loading import load_pipeline
from emigm.sample.options import AnatomyOptions
from emigm.sample.sampler import SamplerConfig, sample_steps

pytestmark = pytest.mark.needs_fashion_mnist


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("fmnist-maskgit")


def _refused(fn, *args) -> FieldError:
    with pytest.raises(FieldError) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return e.value


def test_pictures_and_their_refusals(pipe, tmp_path) -> None:
    p = ip.picture(pipe, "test image", 3, 5, None)
    assert p.label == 3 and p.pixels.shape == (28, 28)
    assert _refused(ip.picture, pipe, "test image", 3, 5000, None).field == "ip_index"
    assert _refused(ip.picture, pipe, "test image", 3, 2.5, None).field == "ip_index"
    assert _refused(ip.picture, pipe, "upload", 0, 0, None).field == "ip_upload"
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    e = _refused(ip.picture, pipe, "upload", 0, 0, str(bad))
    assert e.field == "ip_upload" and "not a PNG or JPEG" in str(e)
    good = tmp_path / "g.png"
    Image.new("L", (40, 40), 200).save(good)
    up = ip.picture(pipe, "upload", 0, 0, str(good))
    assert up.label is None and any("inverted" in n for n in up.notes)
    assert _refused(ip.picture, pipe, "camera", 0, 0, None).field == "ip_source"


def test_masks_presets_ring_and_reveal_order() -> None:
    assert int(ip.mask_of("left half", 0, 49).sum()) == 28
    assert int(ip.mask_of("tokens:24", 1, 49).sum()) == 9
    for spec, ring, needle in (("", 0, "nothing to inpaint"), ("left", 9, "ring"), ("nope", 0, "not a mask"),
                               ("random:1", 0, "plain sampling"), ("centre", 2, "plain sampling")):
        e = _refused(ip.mask_of, spec, ring, 49)
        assert e.field == ("ip_ring" if ring == 9 else "ip_mask") and needle in str(e), str(e)
    assert ip.reveal_priority("fixed", "", 49) is None
    assert ip.reveal_priority("fixed", "5,3", 49).argsort()[:3].tolist() == [5, 3, 0]
    assert _refused(ip.reveal_priority, "random", "5,3", 49).field == "reveal_order"
    assert "twice" in str(_refused(ip.reveal_priority, "fixed", "5,5", 49))


def test_the_start_keeps_the_image_and_lowers_the_steps(pipe) -> None:
    p = ip.picture(pipe, "test image", 7, 0, None)
    mask = ip.mask_of("centre", 0, 49)
    st = ip.start(pipe, p, mask, 7, [0, 1, 2], SamplerConfig(num_steps=16), GuidanceConfig())
    assert st.num_steps == 9 and st.state.sampler.num_steps == 9
    keep = ~mask
    assert torch.equal(st.state.tokens[:, keep], st.tokens.expand(3, -1)[:, keep])
    assert torch.equal(st.state.mask_before, mask.expand(3, -1))
    views = ip.views_payload(st, None, [0, 1, 2], 7)
    assert [t["title"] for t in views["tiles"]][:3] == ["original", "tokenizer reconstruction",
                                                         "masked (9 of 49 tokens)"]
    assert len(views["tiles"]) == 6
    pay = ip.paint_payload(p, 7, [1, 2], [3])
    assert pay["grid"] == 7 and pay["painted"] == [1, 2] and pay["image"].startswith("data:image/png;base64,")
    Image.open(io.BytesIO(__import__("base64").b64decode(pay["image"].split(",", 1)[1]))).verify()


def test_rescoring_payload_and_what_needs_a_new_run(pipe) -> None:
    sampler, guidance = SamplerConfig(num_steps=8, **pipe.sampling_rule), GuidanceConfig(cfg_scale=2.0)
    it = sample_steps(pipe, [4], [9], sampler, guidance, anatomy=AnatomyOptions(rescore=True))
    state = [next(it) for _ in range(3)][-1].to("cpu")
    it.close()
    same = rs.payload(pipe, state, rs.controls_of(state))
    assert not same["later_changed"] and "the same positions as the run" in same["text"]
    assert same["revealed"] == state.revealed[0].nonzero().flatten().tolist()
    other = rs.payload(pipe, state, {"rs_temperature": 0.0, "rs_order": "margin", "rs_order_temperature": 0.0})
    assert other["later_changed"] and "needs a new run" in other["text"]
    assert _refused(rs.payload, pipe, state, {"rs_temperature": 99}).field == "rs_temperature"
    late = dict(rs.controls_of(state), rs_sg_scale=1.0)
    e = _refused(rs.payload, pipe, state, late)
    assert "did not run" in str(e) or "smoothed" in str(e)
