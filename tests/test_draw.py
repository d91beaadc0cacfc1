import pytest
"""The pages' figure builders (pages/_draw.py): pure functions, checked without a browser."""
import pandas as pd

from pages._draw import accuracy_figure, drop_figure, loss_figure, trace_figure


def test_two_traces_get_distinct_colour_blind_safe_colours_dashes_and_markers():
    fig = trace_figure([("controlled", [" Sure", "!"], [0.5, 1.0]), ("plain policy", [" No", "."], [0.1, -0.2])],
                       {"chosen r+": 1.0, "rejected r−": 0.0})
    controlled, plain = fig.data
    assert (controlled.line.color, plain.line.color) == ("#0072B2", "#E69F00")  # Okabe-Ito blue and orange
    assert (controlled.line.dash, plain.line.dash) == ("solid", "dash")
    assert (controlled.marker.symbol, plain.marker.symbol) == ("circle", "diamond")
    assert [shape.line.color for shape in fig.layout.shapes] == ["#009E73", "#D55E00"]


def test_hovering_a_point_shows_its_token_text_as_text():
    fig = trace_figure([("plain policy", [" No", "<b>"], [0.1, -0.2])])
    (plain,) = fig.data
    assert list(plain.customdata) == ["&#x27; No&#x27;", "&#x27;&lt;b&gt;&#x27;"]  # tags escaped: plotly renders them
    assert plain.hovertemplate == "plain policy: %{customdata} · reward %{y:.3f}<extra></extra>"
    assert fig.layout.hovermode == "x unified"  # both traces' tokens at one position in one box


def test_the_x_axis_names_tokens_when_few_and_traces_can_sit_at_aligned_positions():
    fig = trace_figure([("original", ["Hi", "\n"], [0.1, 0.2], [1, 3]), ("perturbed", ["HI", "!", "\n"], [0.3, 0.4, 0.5])],
                       tick_labels=["Hi", "+!", "\n"])
    assert (list(fig.data[0].x), list(fig.data[1].x)) == ([1, 3], [1, 2, 3])
    assert (list(fig.layout.xaxis.tickvals), list(fig.layout.xaxis.ticktext)) == ([1, 2, 3], ["Hi", "+!", "\\n"])
    crowded = trace_figure([("a", ["x"] * 61, [0.0] * 61)], tick_labels=["x"] * 61)
    assert crowded.layout.xaxis.ticktext is None and crowded.layout.xaxis.tickmode is None


def test_the_drop_charts_legend_stands_right_of_the_bars_clear_of_the_title():
    drops = pd.DataFrame([{"label": label, "perturbation": p, "drop": d, "low": None, "high": None} for label, p, d in
                          [("#1 base", "verbosity", 0.25), ("#1 base", "capitalization", 0.0),
                           ("#1 retrained", "verbosity", 0.125), ("#1 retrained", "capitalization", -0.125)]])
    fig = drop_figure(drops)
    legend = fig.layout.legend
    assert (legend.orientation, legend.x, legend.xanchor, legend.y, legend.yanchor) == ("v", 1.02, "left", 1, "top")
    assert fig.layout.title.text.startswith("Win-rate drop") and fig.layout.margin.t == 40  # the title alone above the bars
    assert [(b.name, b.marker.color, list(b.y)) for b in fig.data] == [("#1 base", "#0072B2", [0.25, 0.0]),
                                                                      ("#1 retrained", "#E69F00", [0.125, -0.125])]


def test_the_loss_figure_draws_every_step_faint_and_its_running_mean_per_model():
    fig = loss_figure({"base": [1.0, 0.5, 0.25, 0.25], "retrain": [0.5, 0.25]}, window=2)
    assert [(t.name, t.line.color, t.showlegend) for t in fig.data] == [
        ("base: every step", "#0072B2", False), ("base", "#0072B2", None),
        ("retrain: every step", "#E69F00", False), ("retrain", "#E69F00", None)]
    assert list(fig.data[0].y) == [1.0, 0.5, 0.25, 0.25] and list(fig.data[1].y) == [1.0, 0.75, 0.375, 0.25]
    assert list(fig.data[3].x) == [1, 2] and list(fig.data[3].y) == [0.5, 0.375]


def test_accuracy_and_drop_bars_carry_their_intervals_and_a_report_without_them_draws_plain_bars():
    summary = pd.DataFrame([
        {"label": "#1 base", "checkpoint": "b", "n_pairs": 300, "clean_accuracy": 0.7, "clean_accuracy_low": 0.65,
         "clean_accuracy_high": 0.75},
        {"label": "#1 reform", "checkpoint": "r", "n_pairs": 300, "clean_accuracy": 0.72, "clean_accuracy_low": 0.66,
         "clean_accuracy_high": 0.77}])
    bar = accuracy_figure(summary).data[0]
    assert list(bar.error_y.array) == pytest.approx([0.05, 0.05]) and list(bar.error_y.arrayminus) == pytest.approx([0.05, 0.06])
    assert [list(c) for c in bar.customdata] == [["b", 0.65, 0.75, 300], ["r", 0.66, 0.77, 300]]
    old = summary.assign(clean_accuracy_low=None, clean_accuracy_high=None, n_pairs=None)
    assert accuracy_figure(old).data[0].error_y.array is None
    drops = pd.DataFrame([{"label": "#1 base", "perturbation": "verbosity", "drop": 0.2, "low": 0.1, "high": 0.35},
                          {"label": "#1 base", "perturbation": "capitalization", "drop": 0.0, "low": None, "high": None}])
    error = drop_figure(drops).data[0].error_y
    assert list(error.array) == pytest.approx([0.15, 0.0]) and list(error.arrayminus) == pytest.approx([0.1, 0.0])
