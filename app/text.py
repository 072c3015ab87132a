"""The explorer's words: banners and the short guided explanations shown in each tab."""
from __future__ import annotations

import re

# every ASCII punctuation character (CommonMark lets each be backslash-escaped) but & ; < >, which
# become the HTML entities &amp; &lt; &gt; instead
_MD_PUNCT = re.compile(r"([!-%'-/:=?@\[-`{-~])")


def as_text(value: object) -> str:
    """A user-supplied string (a permalink value, a typed class name) for a Markdown or HTML view, shown
    as the text it is: HTML special characters as entities and every Markdown punctuation character
    backslash-escaped, so `![x](http://host/t.png)` shows those characters, fetches nothing and links
    nowhere."""
    escaped = _MD_PUNCT.sub(r"\\\1", str(value).replace("\n", " "))
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

TITLE = "eMIGM Explorer"
SUBTITLE = ("Watch a masked image generator reveal an image token by token: pick a class and a seed, "
            "press **Run**, then scrub through the steps. Everything below the run is computed once and "
            "replayed in your browser.")


def model_banner(name: str, gen, device: str = "cpu") -> str:
    """The banner above the tabs for a loaded emigm.io.loading.Pipeline: where it comes from, its export's
    own note, what it can do; random weights and official checkpoints on a CPU get a warning."""
    cfg = gen.cfg
    tk = cfg.tokenizer
    what = (f"{tk.grid}x{tk.grid} {tk.kind} tokens, {cfg.head.kind} head, null class '{cfg.backbone.null_mode}', "
            f"self-guidance {'module included' if gen.smoother is not None else 'not available (no module)'}")
    if gen.source == "random":
        return (f"⚠ **Random weights.** No trained **{name}** is shipped (assets/{name}/ is missing), so the "
                "images are noise. The mechanics are real: reveal order, mask schedules, the CFG interval and the "
                f"pass counts are exactly what a trained model would do. ({what})")
    if gen.source == "oracle":
        return oracle_banner(name, gen)
    note = str(gen.meta.get("note", "")) if gen.meta else ""
    where = {"export": "export", "checkpoint": "training checkpoint", "official": "official checkpoint"}[gen.source]
    text = f"Model **{name}** ({where}): {what}." + (f" {note}" if note else "")
    if gen.source == "official" and device == "cpu":
        text = ("⚠ **An official ImageNet checkpoint on a CPU**: every step runs the full network, so a run takes "
                "minutes; a GPU (`--device cuda`) is needed for useful speed. ") + text
    return text


def oracle_banner(name: str, gen) -> str:
    """The banner of an oracle model (emigm.nn.oracle.OracleGenerator): what an oracle is, what its
    samples show, and that the error of a few-step run is the sampler's own."""
    m, tk = gen.model, gen.cfg.tokenizer
    kernel = (f"categorical kernel over {tk.kind} codes, eps {m.kernel:g}" if m.discrete
              else f"Gaussian kernel over {tk.kind} latents, sigma {m.kernel:g}")
    return (f"🔬 **Oracle model {name}: exact conditionals, no network.** Its distribution is a kernel "
            f"mixture over {m.num_refs} encoded Fashion-MNIST training images ({kernel}; {tk.grid}x{tk.grid} "
            "tokens): p(x | class) averages, over that class's reference images, a small kernel around each "
            "image's tokens. Every conditional the sampler asks for (a token given the visible ones, with or "
            "without the class) is computed exactly. An exact sample is one training image of the class with a "
            "few tokens changed by the kernel; a run that reveals many tokens at once may instead join parts of "
            "different training images. One token per step in a fixed order "
"gives an exact sample, so **any error you see in a few-step run is the sampler's own**: the "
            "bars under the reveal counts show, per step, what revealing those tokens together cost (nats).")


MASK_SCHEDULE = """
**What a mask schedule is.** A masked generator starts from an image whose tokens are all hidden
("masked") and reveals some of them at every step. Time runs from t = 1 (all masked) to t = 0 (all
revealed); the schedule gamma(t) is the fraction of tokens still masked at time t. With S steps on the
grid t_k = 1 - k/S, each masked token is revealed at step k with probability 1 - gamma(t_{k+1})/gamma(t_k)
(the *binomial* count rule; MaskGIT's *exact* rule reveals a fixed number instead).
`linear` reveals evenly, `cosine` and `exp` keep most tokens masked early and reveal many late — the
model commits to a few tokens first and fills in details once the layout is fixed.
"""

INTERVAL_CFG = """
**Why classifier-free guidance in an interval saves passes.** CFG runs the network twice per step — once
with the class, once with a *null* class — and moves the prediction away from the unconditional one:
guide(cond, uncond, w) = uncond + w (cond − uncond). That doubles the cost of a step. eMIGM applies it only
at steps whose time after the step, s, lies in an interval (t_lo, t_hi]: early steps (large t) decide
little detail, and the last steps have almost nothing left to guide. With 16 steps and (0.1, 0.3] only 3
steps pay double: 16 + 3 = 19 passes, the paper's "16 × 1.2 NFE". The null class is either the mask
token itself (*CFG with mask*) or a learned *fake class* vector.
"""

SELF_GUIDANCE = """
**What self-guidance does.** Instead of a second pass with a null class, self-guidance compares the
model's prediction with a *smoothed* version of it made by a small extra module, and extrapolates:
(1 + s) · normal − s · smooth. It sharpens samples without class labels, at one extra (sequential) pass
per step where it runs. It needs that module (an export's `self-guidance/` folder): for a model without
one its panels say so.
"""

UNMASKING_HELP = f"""
**Reading this tab.** *Canvas*: the image after step k — grey squares are still masked, orange outlines
are the tokens revealed at this step. *Draft*: what the model currently predicts for every masked token
(blue outlines); only the revealed ones are kept. *When*: every token coloured by the step it was revealed
at. *Counts*: tokens revealed per step, the cumulative fraction, and the CFG steps shaded (2 passes each;
self-guidance steps marked, +1 pass). Labels say "step k of N": a frame at step 8 of 16 is not an 8-step
result. The player runs in your browser: the slider, |◀ ◀ play ▶ ▶| (play resumes where it paused), and
the arrow keys, Home and End. Click a token on the canvas or the draft to see its draft at every step
until it was committed. **clean** hides the outlines on every frame; the last step of a finished run is
always drawn clean (the finished image). **Branch** re-runs from the state after step k with new
settings — the first k steps stay identical. **Stop** ends the run after the step in progress and keeps
the steps so far.

**Which image the canvas shows.** The canvas is the decoded *draft* with the still-masked tokens greyed.
For pixel-patch tokens (`fmnist-emigm-mini`) a token is its own 4x4 pixels, so this is exactly the committed
tokens. For latent tokens (the KL and VQ tokenizers) the decoder mixes neighbouring tokens: decoding the
committed tokens next to empty ones smears zeros into them, so each committed token is shown decoded in
the context of the current draft instead, which is what the model commits it next to.

Choices this model cannot run are greyed out (⊘) with the reason under the control; steps are capped at
the model's token count, since a step reveals at least one token while any is masked (with the binomial
rule a step can draw more than one, so at many steps the last ones may find nothing left: the label then
says "revealed 0", and such a step still costs its passes); a choice marked ⚠ runs but was measured to
fail on this model (see Results). A value that would be refused is named in one line next to its control.
{MASK_SCHEDULE}
{INTERVAL_CFG}
"""

SCHEDULES_HELP = f"""
No model runs here: everything is the schedule arithmetic that the sampler uses.
{MASK_SCHEDULE}
The **MDM weight** gamma'(t)/gamma(t) is the training-loss weight of masked diffusion models; it is large
where the schedule changes fast relative to how much is masked.
{INTERVAL_CFG}
"""

COMPARE_HELP = f"""
Every panel uses the **same seed and the same reveal rule**; with the random order the positions are the
same too (the sampler draws *where* and *what* from separate random streams), so differences come from
guidance alone. With the confidence order (categorical models) each panel reveals its most confident
tokens, so the positions may differ. A categorical (MaskGIT) model shows no guidance, CFG, CFG in an
interval, self-guidance and both; an eMIGM model shows no guidance, CFG with the fake class (its
`-fakecfg` twin), CFG with the mask, CFG in an interval and self-guidance. Each title gives the NFE.
The panels run together, one step at a time, so they fill in side by side while the comparison runs.
The difference view compares two panels over the tokens committed in both: the mean |A − B| of the
shown images and the share of committed tokens whose values differ, per step; its headline is read off
the same two curves. With interval CFG the committed tokens are identical until the first CFG step;
for latent tokens the shown images may differ earlier, because the decoder mixes each committed token
with the drafts of its still-masked neighbours. num_seeds shows several seeds per panel (seed, seed + 1, ...).
{INTERVAL_CFG}
{SELF_GUIDANCE}
"""

RESULTS_HELP = """
Measured results come from `assets/results/claims.json`, written by the evaluation runs: Fréchet distance
(FD, computed with a Fashion-MNIST classifier; lower is better) against transformer passes (NFE) for each
sampler setting, and whether each claim of the paper holds on our models.
"""

RESULTS_MISSING = ("**No measured results here.** `assets/results/claims.json` is missing (it is written by "
                   "`benchmarks/paper_claims.py`); once it exists this tab plots FD against NFE for each setting and "
                   "lists which claims hold.")


INTERVENE_HELP = """
**Change one thing and see what moves.** Open a step above, click tokens on its last view (the canvas after
that step) to choose them, then **erase** them (they are masked again) or **fix** them to a code (categorical
heads), and resume: the run continues from the edited state with the same random streams, so everything
that differs afterwards comes from your edit. The original and the intervened run play side by side with
one slider; the status says at which step they part. With nothing chosen, erasing changes nothing and the
resumed run is the original, step for step.
"""

RESCORE_HELP = """
Change the temperature, a guidance scale, the order or its Gumbel temperature and see this step again **at
once**: the head re-reads what the network already answered for each guidance branch (no transformer pass).
The re-scored draft, the tokens it would reveal (outlined in the player's colours are the run's), how much
each token's draft changed and, for a categorical head, the probability of each drafted code. A guide that
did not run at this step cannot be turned on here, and whenever the step would commit other tokens, every
later step needs a new run (Branch from a step).
"""
