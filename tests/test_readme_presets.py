"""README's preset table says what emigm/core/presets.py holds, preset by preset and field by field."""
from pathlib import Path

import pytest

from emigm.core.presets import PRESETS, get_preset

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| preset | tokens | tokenizer |"


def readme_rows() -> dict[str, list[str]]:
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def expected(name: str) -> list[str]:
    """The row the preset's config gives, cell by cell."""
    c = get_preset(name)
    t, h, b = c.tokenizer, c.head, c.backbone
    side = t.image_size // (t.patch_size if t.kind == "patch" else t.stride)
    return [str(side * side),
            t.kind + (f" `{t.path}`" if t.path else f" {t.patch_size}x{t.patch_size}"),
            c.masking.schedule, f"{c.masking.t_min:g}", b.null_mode,
            f"diffusion {h.depth} x {h.width}, {h.batch_mul}" if h.kind == "diffusion" else h.kind,
            h.prediction if h.kind == "diffusion" else "-",
            f"{b.width}, {b.encoder_depth} + {b.decoder_depth}" + (", MAE" if b.mae else ""),
            str(c.train.batch_size), str(c.train.steps), f"{c.train.blr:g}", c.train.lr_schedule, c.train.precision]


def test_readme_lists_every_preset_once():
    assert list(readme_rows()) == list(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
def test_readme_preset_row_matches_the_preset(name):
    assert readme_rows()[name] == expected(name)


def test_readme_no_longer_says_the_shipped_recipe_uses_t_min_0_2():
    text = README.read_text()
    assert "MAE encoder-decoder, t_min 0.2" not in text
    assert get_preset("fmnist-emigm").masking.t_min == 0.0 and get_preset("fmnist-emigm").head.prediction == "v"
