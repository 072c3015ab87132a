"""The models shipped in assets/: each loads, samples on the CPU, and its samples are classified as
the requested class far above chance (a real check of the shipped weights, kept fast)."""
import pytest
import torch

from emigm.checkpoint import ASSETS_DIR, CheckpointError, load_export, read_export_config, shipped_models
from emigm.sampler import GuidanceConfig, SamplerConfig, sample
from emigm.tokenizers import build_tokenizer


def _generators() -> list[str]:
    names = []
    for name in shipped_models():
        try:
            read_export_config(ASSETS_DIR / name)
        except CheckpointError:
            continue
        names.append(name)
    return names


GENERATORS = _generators()


@pytest.mark.skipif(not GENERATORS, reason="no generator shipped in assets/")
@pytest.mark.parametrize("name", GENERATORS)
def test_shipped_model_samples_the_requested_class(name):
    from emigm.evaluation import classifier_outputs, load_classifier

    model, cfg, meta = load_export(name)
    tok = build_tokenizer(cfg.tokenizer, root=meta["export_dir"])
    labels = torch.arange(cfg.backbone.num_classes).repeat(3)
    order = "confidence" if cfg.tokenizer.discrete else "random"
    state = sample(model, labels, 100, SamplerConfig(num_steps=8, order=order, draft=False),
                   GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.0, 0.5)))
    assert state.done
    images = tok.decode(state.tokens)
    assert images.shape == (len(labels), 1, 28, 28) and torch.isfinite(images).all()
    _, logits = classifier_outputs(load_classifier(ASSETS_DIR / "classifier"), images)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    assert accuracy > 0.5, f"{name}: class accuracy {accuracy:.2f} (chance 0.10)"


def test_shipped_files_are_small():
    for path in ASSETS_DIR.rglob("*"):
        if path.is_file():
            assert path.stat().st_size <= 15 * 2**20, path
