"""Drawing helpers of the pages: untrusted text as text, errors as messages, numbers and labels, and
the reward-trace figure. No engine logic here.

Text from data files, models, uploads and people (prompts, responses, variants, notes, file names,
model ids, error messages quoting them) is untrusted: drawn through markdown it could show a remote
image (a beacon), a link or a heading. It goes out as text (st.code, st.text, dataframes), or through
md_escape / md_code where a markdown string must hold it.
"""
from __future__ import annotations

import html
import math
import re
from typing import Any, Sequence

import streamlit as st

from pages._settings import settings
from reform_engine.data import DataError, PreferencePair

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>#!|~$&])")       # images, links, HTML, headings, code, emphasis, tables, math
_MD_LINE_START = re.compile(r"(?m)^(\s*)(?:([-+=])|(\d+)([.)]))")  # list items, setext heading underlines, ordered lists
_MD_AUTOLINK = re.compile(r"(?i)(://|www\.)")                      # GFM turns bare URLs into links


def flash(key: str, message: str) -> None:
    """Leave ``message`` for the page's next run (from a button callback, or just before ``st.rerun``)."""
    st.session_state[key] = message


def show_flash(key: str) -> None:
    """The message :func:`flash` left under ``key``, once, as a success box."""
    message = st.session_state.pop(key, None)
    if message:
        st.success(message)


def md_escape(text: Any) -> str:
    """``text`` as literal characters inside a markdown string (st.markdown, st.caption, messages,
    widget labels): no image, link, autolink, heading, list, HTML or math can come out of it.
    Underscores stay as they are (identifiers such as max_length read as written; at worst italics)."""
    text = _MD_SPECIAL.sub(r"\\\1", str(text))
    text = _MD_AUTOLINK.sub(lambda m: m.group(1).replace("/", "\\/").replace(".", "\\."), text)
    return _MD_LINE_START.sub(lambda m: m.group(1) + (f"\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"), text)


def md_code(text: Any) -> str:
    """``text`` as an inline code span (drawn as typed, nothing inside renders) that no backtick or line
    break in it can end."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def show_error(exc: BaseException | None, what: str = "") -> None:
    """A readable message for any error: the engine's message and fix, never a traceback."""
    if exc is None:
        return
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, DataError) or getattr(exc, "fix", ""):  # the engine's own errors: message and fix
        message = str(exc)
    elif not isinstance(exc, (ValueError, OSError)):
        message = f"{type(exc).__name__}: {message}"
    st.error(md_escape(f"{what + ': ' if what else ''}{message}"))


def show_trust_warning() -> None:
    """The standing warning while models may run code they ship."""
    if settings().trust_remote_code:
        st.warning("Remote code is allowed: a model or checkpoint loaded now may run Python code shipped with it. "
                   "Turn it off under Home > Models unless you trust every model in use.", icon=":material/warning:")


def short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def pair_label(pair: PreferencePair) -> str:
    return f"{pair.pair_id} · {short(pair.prompt[-1]['content'], 70)}"


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def verdict_notes(record: dict) -> list[str]:
    """One sentence per flag of a variant (inversions.verdict_flags) for the reader: why "not fluent"
    (its perplexity against the plain policy's on the same prompt), "truncated", or unknown."""
    from reform_engine.inversions import verdict_flags

    notes = []
    for flag in verdict_flags(record):
        if flag == "not fluent":
            ppl, plain = record.get("perplexity"), record.get("plain_perplexity")
            measured = f"perplexity {ppl:.2f}, {ppl / plain:.1f}× the plain policy's {plain:.2f} on the same prompt" \
                if ppl and plain and math.isfinite(ppl) and math.isfinite(plain) else "its perplexity is far above the plain policy's"
            notes.append(f"**Not fluent**: {measured}; the policy finds it far less natural than its own text, "
                         "so it is no true inversion.")
        elif flag == "truncated":
            notes.append("**Truncated**: cut mid-sentence at the token limit (no end of text, no final punctuation); "
                         "read it to the end before approving.")
        elif flag == "fluency unknown":
            notes.append("Fluency unknown: no plain-policy perplexity to compare with (stored before it was checked, "
                         "or the check was off).")
        elif flag == "truncation unknown":
            notes.append("Truncation unknown: stored before it was checked.")
    return notes


def trace_figure(traces: Sequence[tuple[str, Sequence[str], Sequence[float]]], references: dict[str, float] | None = None,
                 title: str = "", height: int = 340, mark: int | None = None):
    """Plotly figure of running partial rewards: one line per (label, token pieces, rewards); each
    reference value (e.g. the original chosen and rejected rewards) is a dashed horizontal line;
    ``mark`` draws a vertical line at that token (1-based)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, pieces, rewards in traces:
        xs = list(range(1, len(rewards) + 1))
        fig.add_trace(go.Scatter(x=xs, y=list(rewards), mode="lines+markers", name=label,
                                 customdata=[html.escape(repr(p)) for p in pieces],  # plotly draws tags in hover text
                                 hovertemplate="token %{x}: %{customdata}<br>reward %{y:.3f}<extra>" + label + "</extra>"))
    palette = ("#2e7d32", "#c62828", "#6a1b9a", "#ef6c00")
    for i, (label, value) in enumerate((references or {}).items()):
        if value is not None and not math.isnan(value):
            fig.add_hline(y=value, line_dash="dash", line_color=palette[i % len(palette)],
                          annotation_text=f"{label} {value:+.3f}", annotation_position="top left")
    if mark is not None:
        fig.add_vline(x=mark, line_dash="dot", line_color="#616161")
    fig.update_layout(title=title or None, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      xaxis_title="response token", yaxis_title="partial reward r(x, y≤i)",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig
