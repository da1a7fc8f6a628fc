"""Line charts as inline SVG, drawn on the server: no script, no library.

A chart is a few polylines over a shared time axis, a y axis from zero to
a rounded maximum, and a legend. Values are numbers the server computed;
labels go through the HTML escaper like everything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.console.html import Html, escape, join, tag

WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 24
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: Sequence[float | None]  # None: no sample there


def nice_maximum(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    return f"{value:.3g}"


def line_chart(title: str, series: Sequence[Series], *, unit: str, span_label: str) -> Html:
    """``series`` share one x axis: index 0 is the oldest sample."""
    points = max((len(s.values) for s in series), default=0)
    peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = nice_maximum(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (points - 1) if points > 1 else plot_w)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    grid = []
    for fraction in (0, 0.5, 1):
        gy = y(top * fraction)
        grid.append(Html(f'<line x1="{LEFT}" y1="{gy:.1f}" x2="{WIDTH - RIGHT}" y2="{gy:.1f}" class="grid"/>'))
        grid.append(
            Html(f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">{escape(_number(top * fraction))}</text>')
        )
    grid.append(Html(f'<text x="{LEFT}" y="{HEIGHT - 6}">{escape(span_label)}</text>'))
    grid.append(Html(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">now</text>'))
    lines = []
    for index, one in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for i, value in enumerate(one.values):
            if value is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(i):.1f},{y(value):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                lines.append(Html(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>'))
            elif run:
                lines.append(
                    Html(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
                )
    svg = Html(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="{escape(title)}" class="chart">{join(grid)}{join(lines)}</svg>'
    )
    legend = tag(
        "ul",
        *(
            tag("li", tag("span", "", class_="swatch", data_colour=str(i % len(COLOURS))), f"{s.label}")
            for i, s in enumerate(series)
        ),
        class_="legend",
    )
    return tag("figure", tag("figcaption", f"{title} ({unit})"), svg, legend, class_="chart")
