"""build_demo(engine): the explorer's Blocks. Layout and event wiring only; the handlers live in
unmask.py, compare.py, analysis.py and permalink.py. Every event has an api_name; every sampling
event shares one concurrency slot ("sampler", limit 1) behind a bounded queue."""
from __future__ import annotations

import gradio as gr

from . import analysis, controls, text
from .compare import PANELS, Compare
from .controls import CHOICES, CFG_MODE_LABELS, DEFAULTS, RANGES
from .engine import Engine
from .permalink import Permalinks
from .unmask import Unmasking

SAMPLER = dict(concurrency_id="sampler", concurrency_limit=1)
INSTANT = dict(concurrency_id="instant", concurrency_limit=8)
QUEUE_SIZE = 16
CSS = """
.banner {background: #fff4d6; border-left: 4px solid #E69F00; padding: 6px 12px !important; border-radius: 4px;}
.pixelated img {image-rendering: pixelated;}
#run-status {min-height: 1.6em;}
"""


def _slider(name: str, label: str, step: float = 1, **kw) -> gr.Slider:
    lo, hi = RANGES[name]
    return gr.Slider(lo, hi, value=DEFAULTS[name], step=step, label=label, **kw)


def _radio(name: str, label: str, **kw) -> gr.Radio:
    return gr.Radio(list(CHOICES[name]), value=DEFAULTS[name], label=label, **kw)


def _model_choices(engine: Engine) -> list[tuple[str, str]]:
    return [(n if engine.is_shipped(n) else f"{n} (random init)", n) for n in engine.names]


def _guidance_controls(with_mode: bool = True) -> dict[str, gr.components.Component]:
    c = {"cfg_scale": _slider("cfg_scale", "cfg_scale (1 = no guidance)", 0.1)}
    with gr.Row():
        c["cfg_interval_lo"] = _slider("cfg_interval_lo", "cfg_interval t_lo", 0.01)
        c["cfg_interval_hi"] = _slider("cfg_interval_hi", "cfg_interval t_hi", 0.01)
    if with_mode:
        c["cfg_mode"] = gr.Radio([(CFG_MODE_LABELS[m], m) for m in CHOICES["cfg_mode"]], value=DEFAULTS["cfg_mode"],
                                 label="cfg_mode (null class)")
    c["cfg_schedule"] = _radio("cfg_schedule", "cfg_schedule (scale over the run)")
    return c


def _run_controls(engine: Engine) -> dict[str, gr.components.Component]:
    """The Unmasking controls, keyed by controls.RUN_FIELDS."""
    first = engine.names[0]
    c: dict[str, gr.components.Component] = {}
    c["model"] = gr.Dropdown(_model_choices(engine), value=first, label="model")
    c["class_name"] = gr.Dropdown(engine.class_names(first), value=engine.class_names(first)[0], label="class")
    with gr.Row(equal_height=True):
        c["seed"] = gr.Number(DEFAULTS["seed"], precision=0, label="seed", minimum=0, maximum=RANGES["seed"][1],
                              scale=4)
        c["dice"] = gr.Button("randomise", scale=1, min_width=90, size="sm")
    c["num_steps"] = _slider("num_steps", "num_steps")
    c["schedule"] = _radio("schedule", "schedule (gamma)")
    c["count_rule"] = _radio("count_rule", "count_rule (how many per step)")
    c["order"] = gr.Radio([("random", "random"), ("confidence (categorical heads)", "confidence"),
                           ("fixed (raster scan)", "fixed")], value=DEFAULTS["order"], label="order (reveal order)")
    with gr.Accordion("Guidance", open=True):
        c.update(_guidance_controls())
    with gr.Accordion("Token sampling", open=False):
        c["temperature"] = _slider("temperature", "temperature", 0.05)
        c["head_solver"] = _radio("head_solver", "head_solver")
        c["head_steps"] = _slider("head_steps", "head_steps")
        c["order_temperature"] = _slider("order_temperature", "order_temperature (confidence order)", 0.1)
        c["order_anneal"] = _radio("order_anneal", "order_anneal (confidence order)")
    for name, comp in c.items():
        comp.elem_id = f"ctl-{name}"  # read when the page config is built, for tests and styling
    return c


def _unmasking_tab(engine: Engine, h: Unmasking, links: Permalinks, banner: gr.Markdown):
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            c = _run_controls(engine)
            with gr.Row():
                run_btn = gr.Button("▶ Run", variant="primary", elem_id="run-btn")
                stop_btn = gr.Button("■ Stop", variant="stop", elem_id="stop-btn")
            link = gr.Textbox(label="link to these settings", buttons=["copy"], interactive=False, elem_id="permalink")
            note = gr.Markdown(label="link note", show_label=False)
        with gr.Column(scale=3):
            status = gr.Markdown(label="status", show_label=False, elem_id="run-status")
            live = gr.Image(label="live: canvas | draft", format="png", interactive=False, height=270,
                            elem_id="live", elem_classes=["pixelated"], buttons=["download"])
            scrubber = gr.Plot(label="step scrubber", elem_id="scrubber")
            timing = gr.Markdown(label="timing", show_label=False, elem_id="timing")
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            gr.Markdown("**Token history.** Click a token on the image (or type its row and column).")
            pick = gr.Image(label="click a token", format="png", interactive=False, height=260, elem_id="pick",
                            elem_classes=["pixelated"])
            with gr.Row():
                row = gr.Number(0, precision=0, label="row", minimum=0)
                col = gr.Number(0, precision=0, label="col", minimum=0)
                show = gr.Button("show token", size="sm")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="its draft at each step until committed", format="png", columns=8,
                                 height=260, elem_id="token-history", elem_classes=["pixelated"])
            with gr.Accordion("token history (JSON)", open=False):
                token_json = gr.JSON(label="token history")
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown("**Branch.** Keep the first k steps of this run and re-run the rest with the settings on "
                        "the left (schedule, steps, guidance, temperature…); model, class and seed stay.")
            with gr.Row():
                branch_step = gr.Slider(1, controls.DEFAULTS["num_steps"] - 1, value=8, step=1,
                                        label="branch after step k", elem_id="branch-step")
                branch_btn = gr.Button("Branch from step k", elem_id="branch-btn")
        with gr.Column(scale=3):
            with gr.Row():
                gif = gr.File(label="GIF of the unmasking")
                strip = gr.File(label="PNG strip (mask over image)")
                trace = gr.File(label="JSON trace with settings")
    with gr.Accordion("run data (JSON)", open=False):
        run_json = gr.JSON(label="run", elem_id="run-json")
    with gr.Accordion("What am I looking at?", open=False):
        gr.Markdown(text.UNMASKING_HELP)

    state = gr.State(None)
    run_inputs = [c[f] for f in controls.RUN_FIELDS]
    step_inputs = [c[f] for f in controls.SAMPLER_FIELDS + controls.GUIDANCE_FIELDS]
    outputs = [live, status, scrubber, timing, pick, run_json, state, branch_step]
    files = [gif, strip, trace]

    c["model"].input(h.model_info, [c["model"]], [c["class_name"], banner], api_name="model_info", **INSTANT)
    c["dice"].click(h.randomise_seed, None, [c["seed"]], api_name="randomise_seed", **INSTANT)
    run_ev = run_btn.click(h.run, run_inputs, outputs, api_name="run", **SAMPLER)
    run_ev.then(h.export, [state], files, api_name="export", **INSTANT)
    run_btn.click(links.link, run_inputs, [link], api_name="permalink", **INSTANT)
    branch_ev = branch_btn.click(h.branch, [state, branch_step] + step_inputs, outputs, api_name="branch", **SAMPLER)
    branch_ev.then(h.export, [state], files, api_name="export_branch", **INSTANT)
    pick.select(h.pick_token, [state], [row, col], api_name="pick_token", **INSTANT) \
        .then(h.token_history, [state, row, col], [gallery, token_json, pick], api_name="picked_token_history",
              **INSTANT)
    show.click(h.token_history, [state, row, col], [gallery, token_json, pick], api_name="token_history", **INSTANT)
    return dict(controls=c, run_inputs=run_inputs, outputs=outputs, files=files, link=link, note=note,
                state=state, stop=stop_btn, sampling=[run_ev, branch_ev])


def _schedules_tab():
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            c = {"num_tokens": _slider("num_tokens", "num_tokens (L)"),
                 "num_steps": _slider("num_steps", "num_steps"),
                 "schedule": _radio("schedule", "schedule"),
                 "count_rule": _radio("count_rule", "count_rule")}
            c.update(_guidance_controls(with_mode=False))
            c.pop("cfg_schedule")
            summary = gr.Markdown(label="summary", show_label=False, elem_id="schedule-summary")
        with gr.Column(scale=3):
            gamma = gr.Plot(label="schedules", elem_id="gamma-plot")
            steps = gr.Plot(label="expected reveals per step", elem_id="steps-plot")
    table = gr.Dataframe(headers=analysis.TABLE_HEADERS, interactive=False, label="passes per step")
    with gr.Accordion("step table (JSON)", open=False):
        doc = gr.JSON(label="step tables")
    with gr.Accordion("What am I looking at?", open=False):
        gr.Markdown(text.SCHEDULES_HELP)
    inputs = [c[k] for k in ("num_tokens", "num_steps", "schedule", "count_rule", "cfg_scale",
                             "cfg_interval_lo", "cfg_interval_hi")]
    outputs = [gamma, steps, table, doc, summary]
    gr.on([x.change for x in inputs], analysis.schedules, inputs, outputs, trigger_mode="always_last",
          api_name="schedules", show_progress="hidden", **INSTANT)
    return inputs, outputs


def _compare_tab(engine: Engine, h: Compare):
    first = engine.names[0]
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            c = {"model": gr.Dropdown(_model_choices(engine), value=first, label="model"),
                 "class_name": gr.Dropdown(engine.class_names(first), value=engine.class_names(first)[0],
                                           label="class"),
                 "seed": gr.Number(DEFAULTS["seed"], precision=0, label="seed", minimum=0),
                 "num_seeds": gr.Slider(1, 4, value=1, step=1, label="num_seeds (grid mode: seed, seed+1, …)"),
                 "num_steps": _slider("num_steps", "num_steps"),
                 "schedule": _radio("schedule", "schedule"),
                 "count_rule": _radio("count_rule", "count_rule")}
            c.update(_guidance_controls(with_mode=False))
            with gr.Accordion("Token sampling", open=False):
                c["temperature"] = _slider("temperature", "temperature", 0.05)
                c["head_solver"] = _radio("head_solver", "head_solver")
                c["head_steps"] = _slider("head_steps", "head_steps")
            with gr.Row():
                c["panel_a"] = gr.Dropdown([(t, k) for k, t in PANELS], value="none", label="difference: panel A")
                c["panel_b"] = gr.Dropdown([(t, k) for k, t in PANELS], value="interval", label="panel B")
            go_btn = gr.Button("▶ Compare", variant="primary", elem_id="compare-btn")
        with gr.Column(scale=3):
            status = gr.Markdown(label="status", show_label=False, elem_id="compare-status")
            fig = gr.Plot(label="panels (one step slider for all)", elem_id="compare-plot")
            diff = gr.Plot(label="difference", elem_id="diff-plot")
    with gr.Accordion("comparison data (JSON)", open=False):
        with gr.Row():
            doc = gr.JSON(label="panels (JSON)")
            diff_doc = gr.JSON(label="difference (JSON)")
    with gr.Accordion("What am I looking at?", open=False):
        gr.Markdown(text.COMPARE_HELP)
    state = gr.State(None)
    names = ("model", "class_name", "seed", "num_seeds", "num_steps", "schedule", "count_rule", "temperature",
             "head_solver", "head_steps", "cfg_scale", "cfg_interval_lo", "cfg_interval_hi", "cfg_schedule",
             "panel_a", "panel_b")
    c["model"].input(h.class_choices, [c["model"]], [c["class_name"]], api_name="compare_class_choices", **INSTANT)
    go_btn.click(h.compare, [c[k] for k in names], [status, fig, doc, state, diff, diff_doc], api_name="compare",
                 **SAMPLER)
    gr.on([c["panel_a"].change, c["panel_b"].change], h.diff, [state, c["panel_a"], c["panel_b"]], [diff, diff_doc],
          api_name="diff", trigger_mode="always_last", **INSTANT)


def _results_tab():
    msg = gr.Markdown(label="message", show_label=False, elem_id="results-msg")
    fig = gr.Plot(label="FD vs NFE", elem_id="results-plot")
    table = gr.Dataframe(headers=["claim", "verdict", "evidence"], interactive=False, label="claims")
    with gr.Accordion("results (JSON)", open=False):
        doc = gr.JSON(label="results")
    reload = gr.Button("reload results", size="sm")
    with gr.Accordion("What am I looking at?", open=False):
        gr.Markdown(text.RESULTS_HELP)
    outputs = [msg, fig, table, doc]
    reload.click(analysis.results, None, outputs, api_name="results", **INSTANT)
    return outputs


def build_demo(engine: Engine) -> gr.Blocks:
    """The explorer for `engine`'s models, queued (bounded); launch() is the caller's."""
    unmasking, compare, links = Unmasking(engine), Compare(engine), Permalinks(engine)
    with gr.Blocks(title=text.TITLE) as demo:
        gr.Markdown(f"# {text.TITLE}\n{text.SUBTITLE}")
        banner = gr.Markdown(engine.banner(engine.names[0]),
                             elem_classes=["banner"], elem_id="banner", label="banner", show_label=False)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Unmasking", id="unmasking", elem_id="tab-unmasking"):
                u = _unmasking_tab(engine, unmasking, links, banner)
            with gr.Tab("Schedules", id="schedules", elem_id="tab-schedules"):
                sched_inputs, sched_outputs = _schedules_tab()
            with gr.Tab("Compare guidance", id="compare", elem_id="tab-compare"):
                _compare_tab(engine, compare)
            with gr.Tab("Results", id="results", elem_id="tab-results"):
                results_outputs = _results_tab()
        c = u["controls"]
        preset = demo.load(links.restore, None, [c[f] for f in controls.RUN_FIELDS] + [u["link"], banner, u["note"]],
                           api_name="restore", **INSTANT) \
            .then(unmasking.run, u["run_inputs"], u["outputs"], api_name="preset_run", **SAMPLER)
        preset.then(unmasking.export, [u["state"]], u["files"], api_name="preset_export", **INSTANT)
        # Stop cancels whichever run is going; the views then show the steps sampled so far
        u["stop"].click(None, None, None, cancels=u["sampling"] + [preset]) \
            .then(unmasking.stopped, [u["state"]], u["outputs"], api_name="stopped", **INSTANT) \
            .then(unmasking.export, [u["state"]], u["files"], api_name="export_stopped", **INSTANT)
        demo.load(analysis.schedules, sched_inputs, sched_outputs, api_name="schedules_on_load", **INSTANT)
        demo.load(analysis.results, None, results_outputs, api_name="results_on_load", **INSTANT)
    demo.queue(max_size=QUEUE_SIZE)
    return demo


def launch_kwargs() -> dict:
    """Arguments for demo.launch() that belong to the page (Gradio 6 takes css at launch)."""
    return dict(css=CSS)
