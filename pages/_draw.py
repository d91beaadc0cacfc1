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

# Material icons (Streamlit ships their font), not emoji: without an emoji font (Debian's chromium) an
# emoji draws as an empty box. They render in markdown strings (captions, messages, progress texts),
# not in dataframe cells.
WAIT = ":material/hourglass_empty:"
STATE_ICON = {"queued": ":material/schedule:", "pending": WAIT, "running": WAIT, "succeeded": ":material/check_circle:",
              "failed": ":material/error:", "cancelled": ":material/stop_circle:"}

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
        elif flag == "ordered wrong":
            notes.append(f"**Source pair already ordered wrong**: the RM scores its chosen response {record['r_chosen']:.3f}, "
                         f"not above its rejected one ({record['r_rejected']:.3f}). A variant crosses here by staying near "
                         "its source: it repeats that mistake rather than finding a new one (REFORM's lowest-loss pairs are "
                         "all ordered right).")
        elif flag == "inappropriate":
            notes.append(f"**Inappropriate**: it seems to comply with a harmful request, so as a chosen response it would "
                         f"be a mislabeled pair ({md_escape(record.get('appropriateness') or 'no reason stored')}).")
    return notes


# Okabe-Ito colours: told apart with any colour vision. Streamlit's own theme would draw two traces in two
# blues; each trace also gets its own dash and marker, so they differ in print and for every viewer.
TRACE_STYLES = (("#0072B2", "solid", "circle"), ("#E69F00", "dash", "diamond"), ("#CC79A7", "dot", "square"),
                ("#000000", "dashdot", "x"))
REFERENCE_COLORS = ("#009E73", "#D55E00", "#56B4E9", "#F0E442")
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")
TICK_LABELS_UP_TO = 60   # tokens; past this, token text shows on hover only (the labels would overlap)


def token_label(piece: str, n: int = 12) -> str:
    """A token as a short axis label: escapes visible (a newline as \\n), no quotes."""
    text = repr(piece)[1:-1] or "∅"
    return text if len(text) <= n else text[: n - 1] + "…"


def trace_figure(traces: Sequence[tuple], references: dict[str, float] | None = None, title: str = "", height: int = 340,
                 mark: int | None = None, tick_labels: Sequence[str] | None = None):
    """Plotly figure of running partial rewards: one line per (label, token pieces, rewards[, x positions])
    (positions 1, 2, … unless given: e.g. the columns of a token alignment); hovering a point shows its
    token's text. Each reference value (e.g. the original chosen and rejected rewards) is a dashed
    horizontal line; ``mark`` draws a vertical line at that x; ``tick_labels`` (one per x from 1) name the
    x axis with token text when there are few enough."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for n, (label, pieces, rewards, *positions) in enumerate(traces):
        xs = list(positions[0]) if positions else list(range(1, len(rewards) + 1))
        color, dash, symbol = TRACE_STYLES[n % len(TRACE_STYLES)]
        fig.add_trace(go.Scatter(x=xs, y=list(rewards), mode="lines+markers", name=label,
                                 line=dict(color=color, dash=dash), marker=dict(color=color, symbol=symbol, size=7),
                                 customdata=[html.escape(repr(p)) for p in pieces],  # plotly draws tags in hover text
                                 hovertemplate=html.escape(label) + ": %{customdata} · reward %{y:.3f}<extra></extra>"))
    for i, (label, value) in enumerate((references or {}).items()):
        if value is not None and not math.isnan(value):
            fig.add_hline(y=value, line_dash="dash", line_color=REFERENCE_COLORS[i % len(REFERENCE_COLORS)],
                          annotation_text=f"{label} {value:+.3f}", annotation_position="top left")
    if mark is not None:
        fig.add_vline(x=mark, line_dash="dot", line_color="#616161")
    xaxis = dict(title="response token")
    if tick_labels is not None and 0 < len(tick_labels) <= TICK_LABELS_UP_TO:
        xaxis.update(tickmode="array", tickvals=list(range(1, len(tick_labels) + 1)),
                     ticktext=[html.escape(token_label(t)) for t in tick_labels], tickangle=-60, automargin=True)
    fig.update_layout(title=title or None, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      xaxis=xaxis, yaxis_title="partial reward r(x, y≤i)", hovermode="x unified",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def _error_y(frame, value: str, low: str, high: str) -> dict | None:
    """Plotly error bars from interval ends (NaN or None where a row has no interval: no bar); None when
    no row has one (reports written before intervals)."""
    import numpy as np

    lo, hi = frame[low].astype(float).to_numpy(), frame[high].astype(float).to_numpy()
    if np.isnan(lo).all():
        return None
    v = frame[value].astype(float).to_numpy()
    return dict(type="data", symmetric=False, array=np.nan_to_num(hi - v).tolist(), arrayminus=np.nan_to_num(v - lo).tolist())


def accuracy_figure(summary):
    """Bar chart of clean accuracy per model, from reports.results_frames' summary frame, each bar with its
    95% bootstrap interval over the held-out pairs (when the run wrote per-pair rewards)."""
    import plotly.graph_objects as go

    lows, highs = summary["clean_accuracy_low"].astype(float), summary["clean_accuracy_high"].astype(float)
    n = summary["n_pairs"].astype(float).fillna(0).astype(int)
    fig = go.Figure(go.Bar(x=summary["label"], y=summary["clean_accuracy"], marker_color=TRACE_STYLES[0][0],
                           text=[f"{a:.1%}" for a in summary["clean_accuracy"]], textposition="outside",
                           error_y=_error_y(summary, "clean_accuracy", "clean_accuracy_low", "clean_accuracy_high"),
                           customdata=[[c, lo, hi, k] for c, lo, hi, k in zip(summary["checkpoint"], lows, highs, n)],
                           hovertemplate="%{x}: %{y:.3f} [%{customdata[1]:.3f}, %{customdata[2]:.3f}], n = %{customdata[3]}"
                                         "<br>%{customdata[0]}<extra></extra>"))
    fig.update_layout(title="Clean accuracy (win rate on the held-out pairs, 95% CI)", yaxis=dict(range=[0, 1.1], title="win rate"),
                      height=340, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def drop_figure(drops):
    """Grouped bars of the win-rate drop per perturbation, one colour per model, from reports.results_frames'
    drops frame, each with its 95% bootstrap interval when the run has one. The legend stands right of
    the bars: above them it ran into the title."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for n, (label, rows) in enumerate(drops.groupby("label", sort=False)):
        fig.add_trace(go.Bar(name=label, x=rows["perturbation"], y=rows["drop"], marker_color=OKABE_ITO[n % len(OKABE_ITO)],
                             error_y=_error_y(rows, "drop", "low", "high"), hovertemplate="%{x}: %{y:+.3f}<extra>" + html.escape(str(label)) + "</extra>"))
    fig.add_hline(y=0, line_color="#616161")
    fig.update_layout(title="Win-rate drop per perturbation (lower is more robust; 95% CI)", barmode="group", height=380,
                      yaxis_title="clean − perturbed win rate", margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"))
    return fig


def loss_figure(curves: dict[str, Sequence[float]], window: int = 20):
    """The training loss per step of each reward model a run trained (reports.loss_curves): every step
    faint, and its running mean over ``window`` steps (the mean the progress message shows) bold, one
    colour per model."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for n, (name, losses) in enumerate(curves.items()):
        color, steps = OKABE_ITO[n % len(OKABE_ITO)], list(range(1, len(losses) + 1))
        mean = [sum(losses[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(losses))]
        fig.add_trace(go.Scatter(x=steps, y=list(losses), mode="lines", name=f"{name}: every step", opacity=0.35,
                                 line=dict(color=color, width=1), legendgroup=name, showlegend=False,
                                 hovertemplate="step %{x}: %{y:.4f}<extra>" + html.escape(name) + "</extra>"))
        fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", name=name, line=dict(color=color, width=2.5), legendgroup=name,
                                 hovertemplate=f"step %{{x}}: mean of the last {window} %{{y:.4f}}<extra>"
                                               + html.escape(name) + "</extra>"))
    fig.update_layout(title="Training loss −log σ(r+ − r−)", height=300, xaxis_title="step", yaxis_title="loss",
                      margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"))
    return fig


def proxy_figure(table):
    """Correlation of the partial reward at each decoding step with the final reward (proxy.proxy_by_step):
    Pearson and Spearman lines, and the variants that reached each step as bars on a second axis (grey
    where too few for a correlation, whose line then breaks)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    steps, n = table["step"].tolist(), table["n"].tolist()
    fig.add_trace(go.Bar(x=steps, y=n, name="n variants", yaxis="y2", opacity=0.3,
                         marker_color=["#90a4ae" if ok else "#b0bec5" for ok in table["enough"]],
                         marker_pattern_shape=["" if ok else "/" for ok in table["enough"]],
                         hovertemplate="step %{x}: n = %{y}<extra></extra>"))
    for i, column in enumerate(("pearson", "spearman")):
        fig.add_trace(go.Scatter(x=steps, y=[None if v != v else v for v in table[column]], mode="lines+markers",
                                 name=column.capitalize(), line=dict(color=OKABE_ITO[i % len(OKABE_ITO)]), customdata=n,
                                 hovertemplate=f"step %{{x}}: {column} %{{y:.3f}}, n = %{{customdata}}<extra></extra>"))
    fig.update_layout(title="Partial reward r(x, y≤i) vs the finished response's reward, by step", height=340,
                      xaxis_title="decoding step i", yaxis=dict(title="correlation", range=[-1.05, 1.05]),
                      yaxis2=dict(title="variants", overlaying="y", side="right", rangemode="tozero", showgrid=False),
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig
