"""Write the payload fixtures that tests/js/*.test.mjs read: real payloads of the explorer's builders
(app/stepper.py, app/lab.py) on the random-init test-tiny preset, sprites left out. Run it after a
payload changes: `python3 tests/js/make_fixtures.py`; tests/test_app_payload.py checks that the
fixtures still have the fields app/payload.py describes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import controls, stepper  # noqa: E402
from app.engine import LAB_MAPS, Engine  # noqa: E402
from app.lab import Lab  # noqa: E402

OUT = Path(__file__).resolve().parent / "fixtures"


def _strip(doc):
    """The payload without its images (the tests read numbers and names)."""
    if isinstance(doc, dict):
        return {k: ("" if k == "sprite" else _strip(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def main() -> None:
    engine = Engine(["test-tiny"], num_threads=1)
    values = {**controls.DEFAULTS, "model": "test-tiny", "num_steps": 8, "head_steps": 2, "seed": 3}
    sampler, guidance = controls.configs(values)
    plain = engine.run("test-tiny", [0], [3], sampler, guidance, anatomy=LAB_MAPS)
    remask_sampler, _ = controls.configs({**values, "remask": "cap", "remask_eta": 1.0})
    remask = engine.run("test-tiny", [0], [3], remask_sampler, guidance, anatomy=LAB_MAPS)
    short_sampler, _ = controls.configs({**values, "num_steps": 4})
    short = engine.run("test-tiny", [0, 0], [3, 4], short_sampler, guidance)
    long = engine.run("test-tiny", [0, 0], [3, 4], sampler, guidance)
    fixtures = {
        "unmask": stepper.unmask_payload(plain, "r1"),
        "unmask-remask": stepper.unmask_payload(remask, "r2"),
        "compare-steps": stepper.compare_payload([("4 steps", short, ""), ("8 steps", long, ""),
                                                  ("off", None, "unavailable: a reason")], "r3"),
        "anatomy": Lab(engine)._open(plain, 3).__next__()[1],
    }
    OUT.mkdir(exist_ok=True)
    for name, doc in fixtures.items():
        (OUT / f"{name}.json").write_text(json.dumps(_strip(doc), separators=(",", ":")) + "\n")
        print(f"wrote {OUT.relative_to(ROOT) / (name + '.json')}")


if __name__ == "__main__":
    main()
