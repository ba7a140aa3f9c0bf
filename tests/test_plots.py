"""Plots that cannot mislead: the ablation summary plot (read back from its matplotlib Axes)
and the colour bars and titles of the kept-token pictures."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.experiments.bench import Generation, score, wilson_interval
from prunekit.experiments.datasets import Sample
from prunekit.experiments.summary import summary_figure, tokens_kept, write_summary
from prunekit.viz import (
    COLORBAR_WIDTH,
    PANEL_GAP,
    STRIP_RAMP,
    TITLE_HEIGHT,
    kept_overlay,
    relevance_heatmap,
    side_by_side,
)

GREY = Image.new("RGB", (64, 64), (200, 200, 200))


def record(overrides, budget, *, correct, kept=None, tokens_in=64.0, n=6, loyal=None, **extra):
    """A ``result.json`` as :func:`prunekit.experiments.runner.run_dataset` writes it."""
    metrics = {
        "n": n,
        "accuracy": correct / n,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "ms_per_sample": 1.0,
        **extra,
    }
    if loyal is not None:
        metrics["loyalty"] = loyal / n
        metrics["loyalty_ci95"] = list(wilson_interval(loyal, n))
    if kept is not None:
        metrics["tokens_kept"] = kept
    if tokens_in is not None:
        metrics["tokens_in"] = tokens_in
    return {
        "name": ",".join(overrides),
        "overrides": [*overrides, f"budget={budget}"],
        "config": {"budget": budget, "model": {"name": "tiny"}},
        "data": {"name": "shapes", "n_samples": n},
        "metrics": metrics,
    }


def curves(ax):
    """The plotted curves of an Axes (error-bar caps and reference lines left out)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith(("_", "all tokens"))]


# --------------------------------------------------------------------------- summary plot


def test_x_axis_is_tokens_kept_not_the_budget_value():
    # budget=4,16,0.5 on 64 tokens: 0.5 keeps 32 tokens, so it goes right of 16, not left of 4
    results = [
        record(["relevance=text"], 4, correct=1, kept=4.0),
        record(["relevance=text"], 16, correct=3, kept=16.0),
        record(["relevance=text"], 0.5, correct=5, kept=32.0),
    ]
    fig = summary_figure(results)
    (ax,) = fig.axes
    (line,) = curves(ax)
    assert list(line.get_xdata()) == [4.0, 16.0, 32.0]
    assert list(line.get_ydata()) == [1 / 6, 3 / 6, 5 / 6]
    assert "tokens kept" in ax.get_xlabel() and "64" in ax.get_xlabel()
    assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= 64  # from no token to all of them


def test_tokens_kept_resolves_the_budget_when_nothing_was_measured():
    def without_measure(budget, tokens_in):
        return tokens_kept(record([], budget, correct=0, tokens_in=tokens_in))

    assert tokens_kept(record([], 0.5, correct=0, kept=31.5)) == 31.5  # the measured mean wins
    assert without_measure(0.5, 64.0) == 32.0  # a fraction of the input tokens
    assert without_measure(0.2222, 576.0) == 128.0
    assert without_measure(100, 64.0) == 64.0  # a count never exceeds the tokens there are
    assert without_measure(16, None) == 16.0
    assert without_measure(0.5, None) is None  # a fraction with no token count: no place


def test_a_run_without_a_place_on_the_axis_is_named_in_the_title():
    results = [
        record([], 16, correct=3, kept=16.0),
        record([], 0.5, correct=3, tokens_in=None),
    ]
    fig = summary_figure(results)
    (line,) = curves(fig.axes[0])
    assert list(line.get_xdata()) == [16.0]
    assert "not plotted" in fig.get_suptitle() and "budget=0.5" in fig.get_suptitle()


def test_identical_curves_stay_visible():
    results = [
        record([f"relevance={r}"], b, correct=c, kept=float(b), loyal=c)
        for r in ("none", "text", "other")
        for b, c in ((8, 2), (16, 4))
    ]
    results[-1]["metrics"]["accuracy"] = 0.9  # "other" differs from the two others
    fig = summary_figure(results)
    accuracy, loyalty = fig.axes
    for ax in (accuracy, loyalty):
        none, text, other = curves(ax)
        assert list(none.get_xdata()) == list(text.get_xdata()) == [8.0, 16.0]
        assert list(none.get_ydata()) == list(text.get_ydata())  # they coincide ...
        assert none.get_marker() != text.get_marker()  # ... and both stay visible
        assert none.get_linestyle() != text.get_linestyle()
        assert none.get_markerfacecolor() == "none"  # hollow: a marker under another shows
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "relevance=none" in legend
        assert "relevance=text  (= relevance=none)" in legend  # and the legend says so
    assert "relevance=other" in [t.get_text() for t in accuracy.get_legend().get_texts()]
    # in the loyalty panel "other" coincides with the first curve too
    assert "relevance=other  (= relevance=none)" in [
        t.get_text() for t in loyalty.get_legend().get_texts()
    ]


def test_all_tokens_reference_line():
    results = [
        record([], b, correct=c, kept=float(b), loyal=c, unpruned_accuracy=4 / 6)
        for b, c in ((8, 2), (16, 3))
    ]
    accuracy, loyalty = summary_figure(results).axes
    (line,) = [x for x in accuracy.get_lines() if x.get_label().startswith("all tokens")]
    assert list(line.get_ydata()) == [4 / 6, 4 / 6] and list(line.get_xdata()) == [0, 1]
    assert "0.667" in line.get_label()
    (line,) = [x for x in loyalty.get_lines() if x.get_label().startswith("all tokens")]
    assert list(line.get_ydata()) == [1.0, 1.0]  # the unpruned model agrees with itself
    # records without the unpruned accuracy get no made-up line
    for r in results:
        del r["metrics"]["unpruned_accuracy"]
    accuracy, _ = summary_figure(results).axes
    assert not [x for x in accuracy.get_lines() if x.get_label().startswith("all tokens")]


def test_title_names_model_data_and_question_count():
    results = [record([], b, correct=1, kept=float(b), n=25) for b in (8, 16)]
    title = summary_figure(results).get_suptitle()
    assert title == "model tiny, data shapes, 25 questions per run"
    results[1]["config"]["model"]["name"] = "minillava"
    results[1]["metrics"]["n"] = 30
    title = summary_figure(results).get_suptitle()
    assert title == "model tiny, minillava, data shapes, 25-30 questions per run"


def test_summary_figure_leaves_the_pyplot_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    results = [record([], b, correct=1, kept=float(b)) for b in (8, 16)]
    summary = write_summary(results, tmp_path)
    assert summary.paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == before


def test_score_records_the_unpruned_accuracy():
    samples = [Sample(str(i), GREY, "q", a) for i, a in enumerate(["red", "blue", "Green", "red"])]
    generation = Generation(answers=["red", "red", "green", "blue"])
    reference = ["Red.", "blue", "green", "red"]  # the unpruned model: right on all four
    metrics, _ = score(samples, generation, reference)
    assert metrics["accuracy"] == 2 / 4 and metrics["loyalty"] == 2 / 4
    assert metrics["unpruned_accuracy"] == 4 / 4
    metrics, _ = score(samples, generation, ["blue", "red", "green", "blue"])
    assert metrics["unpruned_accuracy"] == 1 / 4
    assert "unpruned_accuracy" not in score(samples, generation)[0]


# --------------------------------------------------------------------------- pictures


def viridis(values):
    rgba = matplotlib.colormaps["viridis"](np.asarray(values, dtype=np.float64))
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def test_relevance_heatmap_has_a_colour_bar_by_default():
    out = relevance_heatmap(GREY, torch.arange(16.0), (4, 4), size=96)
    assert out.size == (96 + COLORBAR_WIDTH, 96)
    pixels = np.asarray(out)
    top, bottom = 6, 96 - 6
    bar = pixels[top:bottom, 96 + 6 + 6]  # the middle of the 12 px ramp
    np.testing.assert_array_equal(bar, viridis(np.linspace(1.0, 0.0, bottom - top)))
    assert relevance_heatmap(GREY, torch.arange(16.0), (4, 4), size=96, colorbar=False).size == (
        96,
        96,
    )


def test_side_by_side_heatmaps_have_colour_bars():
    s = 64
    results = {
        "ramp": (torch.ones(16, dtype=torch.bool), torch.arange(16.0)),
        "flat": (torch.ones(16, dtype=torch.bool), torch.full((16,), 3.0)),
    }
    pixels = np.asarray(side_by_side(GREY, results, (4, 4), size=s, heatmap=True))
    y_ramp = TITLE_HEIGHT + s + PANEL_GAP + s - STRIP_RAMP  # the heatmap row's bottom strip
    np.testing.assert_array_equal(pixels[y_ramp, :s], viridis(np.linspace(0.0, 1.0, s)))
    np.testing.assert_array_equal(pixels[-1, :s], viridis(np.linspace(0.0, 1.0, s)))
    x = s + PANEL_GAP  # uniform scores: the one colour they all get
    np.testing.assert_array_equal(pixels[y_ramp, x : x + s], viridis(np.full(s, 0.5)))
    # the label row above the ramp carries text (white on black)
    labels = pixels[y_ramp - 14 : y_ramp, :s]
    assert (labels == 0).all(axis=-1).any() and (labels > 128).all(axis=-1).any()


def test_kept_overlay_title():
    kept = torch.tensor([True] + [False] * 15)
    plain = np.asarray(kept_overlay(GREY, kept, (4, 4), size=96))
    titled = np.asarray(kept_overlay(GREY, kept, (4, 4), size=96, title="resprune, budget 1"))
    assert plain.shape == (96, 96, 3) and titled.shape == (TITLE_HEIGHT + 96, 96, 3)
    np.testing.assert_array_equal(titled[TITLE_HEIGHT:], plain)  # the picture itself unchanged
    bar = titled[:TITLE_HEIGHT]
    assert (bar == 255).all(axis=-1).any() and (bar < 128).all(axis=-1).any()  # dark text
    other = np.asarray(kept_overlay(GREY, kept, (4, 4), size=96, title="divprune, budget 8"))
    assert not np.array_equal(other[:TITLE_HEIGHT], bar)
    assert np.array_equal(other[TITLE_HEIGHT:], plain)


@pytest.mark.parametrize("title_height", [0, 30])
def test_kept_overlay_title_height(title_height):
    out = kept_overlay(GREY, torch.ones(16), (4, 4), title="x", title_height=title_height)
    assert out.size == (64, 64 + title_height)
