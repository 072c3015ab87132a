"""The page's own components: gr.HTML blocks whose value is a payload (app/payload.py) that
static/explorer.js draws: the step player, the status line, an opened step and the notes next to
refused values."""
from __future__ import annotations

from typing import Any

import gradio as gr


class Player(gr.HTML):
    """The step player: value = a stepper payload (app/stepper.py), drawn by static/explorer.js."""

    def __init__(self, value: Any = None, **kw) -> None:
        super().__init__(value, html_template="<div class='emigm-root'></div>", apply_default_css=False,
                         js_on_load="window.emigmPlayer(element, props, trigger, watch);", **kw)

    def api_info(self) -> dict[str, Any]:
        return {"type": "object", "description": "step player payload (JSON)"}


class Status(gr.HTML):
    """The status line: value = stepper.status(...): running | done (shown as rendering, then ready once
    the player has drawn that run) | stopped | error (its notes go next to the controls of `prefix`)."""

    def __init__(self, value: Any = None, prefix: str = "ctl-", clear_notes: bool = False, **kw) -> None:
        # clear_notes: a success clears the notes of `prefix` (controls no check event watches)
        extra = " data-clear='1'" if clear_notes else ""
        super().__init__(value, html_template=f"<div class='emigm-status' data-prefix='{prefix}'{extra}></div>",
                         apply_default_css=False, js_on_load="window.emigmStatus(element, props, watch);", **kw)

    def api_info(self) -> dict[str, Any]:
        return {"type": "object", "description": "{phase, text, run, notes}"}


class AnatomyView(gr.HTML):
    """An opened step: value = lab.anatomy_payload(...), drawn by static/explorer.js (emigmAnatomy)."""

    def __init__(self, value: Any = None, **kw) -> None:
        super().__init__(value, html_template="<div class='emigm-anatomy'></div>", apply_default_css=False,
                         js_on_load="window.emigmAnatomy(element, props, trigger, watch);", **kw)

    def api_info(self) -> dict[str, Any]:
        return {"type": "object", "description": "opened step payload (JSON)"}


class Notes(gr.HTML):
    """The messages of refused values, shown by the page next to their controls: value = {control:
    message} for the controls whose elem_id is `prefix` + name."""

    def __init__(self, value: Any = None, prefix: str = "ctl-", **kw) -> None:
        super().__init__(value or {}, html_template=f"<div class='emigm-notes' data-prefix='{prefix}'></div>",
                         apply_default_css=False, js_on_load="window.emigmNotes(element, props, watch);",
                         elem_classes=["emigm-notes-holder"], **kw)

    def api_info(self) -> dict[str, Any]:
        return {"type": "object", "description": "{control: message}"}


class PaintGrid(gr.HTML):
    """The token grid a learner paints on: value = app.inpaint.paint_payload(...), drawn by
    static/paint.js, which writes the painted mask and reveal order into their text controls."""

    def __init__(self, value: Any = None, **kw) -> None:
        super().__init__(value, html_template="<div class='emigm-paint'></div>", apply_default_css=False,
                         js_on_load="window.emigmPaint(element, props, watch);", **kw)

    def api_info(self) -> dict[str, Any]:
        return {"type": "object", "description": "paint grid payload (JSON)"}


class Tiles(gr.HTML):
    """Images side by side with captions: value = {"tiles": [{"title", "src"}], ...}."""

    def __init__(self, value: Any = None, **kw) -> None:
        template = ("<div class='emigm-tiles'>{{#each value.tiles}}<figure>"
                    "<img src='{{this.src}}' alt='{{this.title}}'>"
                    "<figcaption>{{this.title}}</figcaption></figure>{{/each}}</div>")
        super().__init__(value or {"tiles": []}, html_template=template, apply_default_css=False, **kw)

    def api_info(self) -> dict[str, Any]:
        return {"type": "object", "description": "{tiles: [{title, src}]}"}
