"""The models shipped in assets/: each loads, samples on the CPU, and its samples are classified as
the requested class far above chance (a real check of the shipped weights, kept fast)."""
import pytest
import torch

from emigm.core.fileio import ASSETS_DIR
from emigm.core.statedict import CheckpointError
from emigm.io.exports import read_export_config, shipped_models
from emigm.io.loading import load_pipeline
from emigm.sample.sampler import GuidanceConfig, SamplerConfig, sample


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
    from emigm.eval.evaluation import classifier_outputs, load_classifier

    gen = load_pipeline(name)
    labels = torch.arange(gen.cfg.backbone.num_classes).repeat(3)
    # MaskGIT's rule for a categorical model (cosine, exact counts, most confident first), eMIGM's otherwise
    sampler = (SamplerConfig(num_steps=8, schedule="cosine", count_rule="exact", order="confidence", draft=False)
               if gen.model.discrete else SamplerConfig(num_steps=8, draft=False))
    state = sample(gen, labels, 100, sampler, GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.0, 0.5)))
    assert state.done
    images = gen.decode(state.tokens)
    assert images.shape == (len(labels), 1, 28, 28) and torch.isfinite(images).all()
    _, logits = classifier_outputs(load_classifier(ASSETS_DIR / "classifier"), images)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    assert accuracy > 0.5, f"{name}: class accuracy {accuracy:.2f} (chance 0.10)"


def test_shipped_files_are_small():
    for path in ASSETS_DIR.rglob("*"):
        if path.is_file():
            assert path.stat().st_size <= 15 * 2**20, path
