"""The explorer under hostile use (issue 31): two clients exporting at once get only their own files
(class 2); a token field reads ASCII digits only, as the CLI (class 7)."""
from __future__ import annotations

import re
import threading

import pytest

from app import controls
from app.engine import Engine
from app.lab import parse_tokens
from app.unmask import ExportDir, Unmasking
from emigm.core.fields import FieldError


def run_values(**over):
    values = {"model": "test-tiny", "class_name": "Sneaker", **controls.DEFAULTS, "num_steps": 4, "head_steps": 2}
    values.update(over)
    return values


@pytest.fixture(scope="module")
def two_sessions():
    """Two sessions' runs whose downloads have the same names (model, class, seed, steps) and different
    contents (another CFG scale), sharing the server's one ExportDir."""
    engine = Engine(["test-tiny"], num_threads=1)
    exports = ExportDir(keep=60)
    tabs = [Unmasking(engine, exports), Unmasking(engine, exports)]
    trajs = [list(tab.run(**run_values(cfg_scale=scale)))[-1][4] for tab, scale in zip(tabs, (1.0, 3.0))]
    return tabs, trajs


def test_two_clients_exporting_at_once_50_times_get_only_their_own_files(two_sessions) -> None:
    tabs, trajs = two_sessions
    first = [tab.export(t) for tab, t in zip(tabs, trajs)]
    assert [[p.rsplit("/", 1)[-1] for p in f] for f in first] == [[p.rsplit("/", 1)[-1] for p in first[0]]] * 2
    own = [[open(p, "rb").read() for p in f] for f in first]
    assert own[0][2] != own[1][2]  # same names, different traces: what two sessions shared before
    foreign, torn, seen = [0, 0], [0, 0], [0, 0]
    start = threading.Barrier(2)

    def client(i: int) -> None:
        start.wait()
        for _ in range(50):
            for k, path in enumerate(tabs[i].export(trajs[i])):
                got = open(path, "rb").read()  # read at once, while the other client keeps exporting
                seen[i] += 1
                if got != own[i][k]:
                    foreign[i] += got == own[1 - i][k]
                    torn[i] += got != own[1 - i][k]

    threads = [threading.Thread(target=client, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [150, 150] and foreign == [0, 0] and torn == [0, 0], (seen, foreign, torn)


@pytest.mark.parametrize("text", ["８", "1_0", "٣:2", "2:３", "1e-400x"])
def test_a_token_field_reads_ascii_digits_only(text) -> None:
    with pytest.raises(FieldError, match="is not a token"):
        parse_tokens(text, 7)
    assert parse_tokens("8, 1:2", 7) == [8, 9]


ATTACKS = ["![x](http://HOST/t.png) [log in here](http://e.vil)", "<img src=x onerror=alert(1)>", "**b** `c` _i_",
           "<script>alert(1)</script>", "# heading\n- item", "&lt;b&gt; \\*", "[a]: http://e.vil\n[a]"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_user_string_shows_as_its_text_in_markdown_and_html(attack) -> None:
    """as_text: rendered as CommonMark (what gr.Markdown renders), a user string is one paragraph of its
    own characters: no image, no link, no tag, no emphasis."""
    import html
    import re

    from markdown_it import MarkdownIt

    from app.text import as_text

    rendered = MarkdownIt("commonmark").render(as_text(attack)).strip()
    assert re.fullmatch(r"<p>[^<]*</p>", rendered), rendered
    assert html.unescape(rendered[3:-4]) == attack.replace("\n", " ")


def test_a_permalink_with_markdown_in_it_shows_it_as_text() -> None:
    """The permalink door of the probe: a class value in Markdown, refused, is quoted in the page's note
    (built from decode's problems with text.as_text, app/ui.py restore) as text."""
    from markdown_it import MarkdownIt

    from app import text
    from app.permalink import decode

    _, problems = decode({"class_name": ATTACKS[0]}, ["test-tiny"], lambda m: ["T-shirt/top", "Trouser"])
    assert problems and any("log in here" in p for p in problems)
    rendered = MarkdownIt("commonmark").render("; ".join(text.as_text(p) for p in problems))
    assert "<img" not in rendered and "<a" not in rendered and "log in here" in rendered, rendered


@pytest.mark.parametrize("argv,needle", [(["--threads", "-1"], "--threads must be in [0, 1024], got -1"),
                                         (["--threads", "８"], "--threads must be a whole number"),
                                         (["--port", "70000"], "--port must be in [1, 65535], got 70000"),
                                         (["--port", "80_80"], "--port must be a whole number")])
def test_the_app_flags_are_checked_before_anything_loads(argv, needle, capsys) -> None:
    from app import launch

    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def test_a_busy_port_is_one_line(capsys) -> None:
    import socket

    from app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert launch.main(["--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--port {port} on 127.0.0.1 cannot be used" in err, err


def test_compare_names_the_seed_as_typed(two_sessions) -> None:
    """A top seed with 4 seeds: the refusal names the seed typed and the count, before any panel runs."""
    from app.compare import Compare
    from emigm.core.seeds import MAX_SEED

    tabs, _ = two_sessions
    cmp = Compare(tabs[0].engine)
    values = {**controls.DEFAULTS, "model": "test-tiny", "class_name": "Bag", "seed": MAX_SEED - 1, "num_seeds": 4,
              "axis": "guidance", "num_steps": 4, "head_steps": 2, "panel_a": "none", "panel_b": "interval"}
    from app.compare import CONTROLS
    notes = cmp._check({k: values[k] for k in CONTROLS})
    assert notes.get("seed", "").startswith(f"seed {MAX_SEED - 1} with 4 images needs seeds up to {MAX_SEED + 2}"), notes
    with pytest.raises(ValueError, match=f"seed {MAX_SEED - 1} with 4 images"):
        cmp._plan({k: values[k] for k in CONTROLS})


def test_diff_after_an_axis_comparison_takes_that_comparisons_panels(two_sessions) -> None:
    """After an axis comparison the panels are its axis values: /diff takes their keys and refuses other
    names listing them (before, it refused them as unknown guidance panels, then the guidance panels as
    not in the comparison, so no pair could be satisfied)."""
    from app.compare import Compare, Comparison, Panel

    tabs, trajs = two_sessions
    cmp = Compare(tabs[0].engine)
    axis = Comparison((Panel("steps-4", "4 steps", "test-tiny", None, "", trajs[0]),
                       Panel("steps-8", "8 steps", "test-tiny", None, "", trajs[1])), 4)
    fig, doc = Compare._diff(cmp, axis, "steps-4", "steps-8")
    assert (doc["a"], doc["b"]) == ("steps-4", "steps-8")
    for bad, needle in (("none", "unknown panel 'none'; valid: steps-4, steps-8"),
                        (["steps-4"], "a panel is named by its key or title (text), got list")):
        with pytest.raises(Exception, match=re.escape(needle)):
            Compare.diff.__wrapped__(cmp, axis, bad, "steps-8")
