"""Pictures for people (TensorBoard panels, query_vis/, annotation previews): the data panels of
query/visualize.py and datasets/classes.colorize, enlarged to a legible size, with column titles,
a colour bar and legends. The arrays that are data (label PNGs, scores) never go through here."""
from __future__ import annotations

import cv2
import numpy as np

from datasets.classes import colorize
from query.visualize import LABELED_TINT_COLOR, OUTLINE_COLOR

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT, BACKGROUND = (20, 20, 20), (255, 255, 255)
MIN_HEIGHT = 360  # a panel row is enlarged (integer factor, nearest) to at least this height


def enlarge(image: np.ndarray, min_height: int = MIN_HEIGHT) -> np.ndarray:
    """Nearest-neighbour enlargement by the smallest integer factor reaching `min_height`
    (pixels stay pixels: a region cell keeps its sharp edges)."""
    factor = max(1, -(-min_height // image.shape[0]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def _text_strip(width: int, texts_at: list[tuple[int, str]], height: int = 30, scale: float = 0.55) -> np.ndarray:
    strip = np.full((height, width, 3), BACKGROUND, np.uint8)
    for x, text in texts_at:
        cv2.putText(strip, text, (int(x), height - 10), FONT, scale, TEXT, 1, cv2.LINE_AA)
    return strip


def titled_columns(columns: list[np.ndarray], titles: list[str], gap: int = 6) -> np.ndarray:
    """Columns of one height side by side with a white gap, each titled above."""
    height = columns[0].shape[0]
    sep = np.full((height, gap, 3), BACKGROUND, np.uint8)
    parts, starts, x = [], [], 0
    for n, column in enumerate(columns):
        if n:
            parts.append(sep)
            x += gap
        starts.append(x)
        parts.append(column)
        x += column.shape[1]
    body = np.concatenate(parts, axis=1)
    return np.concatenate([_text_strip(body.shape[1], [(s + 4, t) for s, t in zip(starts, titles)]), body], axis=0)


def legend(entries: list[tuple[tuple[int, int, int], str]], width: int, swatch: int = 16) -> np.ndarray:
    """Rows of colour swatches with their names, wrapped to `width`."""
    rows, row, x = [], [], 8
    for colour, name in entries:
        size = swatch + 6 + cv2.getTextSize(name, FONT, 0.5, 1)[0][0] + 18
        if row and x + size > width:
            rows.append(row)
            row, x = [], 8
        row.append((x, colour, name))
        x += size
    rows.append(row)
    out = np.full((26 * len(rows) + 4, width, 3), BACKGROUND, np.uint8)
    for r, items in enumerate(rows):
        y = 4 + 26 * r
        for x, colour, name in items:
            cv2.rectangle(out, (x, y + 3), (x + swatch, y + 3 + swatch), tuple(int(c) for c in colour), -1)
            cv2.rectangle(out, (x, y + 3), (x + swatch, y + 3 + swatch), TEXT, 1)
            cv2.putText(out, name, (x + swatch + 6, y + 16), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    return out


def class_legend(classes, palette, width: int, void: bool = True) -> np.ndarray:
    entries = [(tuple(int(v) for v in palette[i % len(palette)]), name) for i, name in enumerate(classes)]
    return legend(entries + ([((0, 0, 0), "void / not confident")] if void else []), width)


def colour_bar(width: int, vmax: float, label: str, height: int = 14) -> np.ndarray:
    """A horizontal JET colour bar from 0 to `vmax` with five ticks, and its label."""
    ramp = np.linspace(0, 255, width).astype(np.uint8)[None].repeat(height, axis=0)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    ticks = np.full((22, width, 3), BACKGROUND, np.uint8)
    for k in range(5):
        x = int(round(k / 4 * (width - 1)))
        text = f"{k / 4 * vmax:.2f}"
        tw = cv2.getTextSize(text, FONT, 0.45, 1)[0][0]
        cv2.line(ticks, (x, 0), (x, 4), TEXT, 1)
        cv2.putText(ticks, text, (min(max(0, x - tw // 2), width - tw), 17), FONT, 0.45, TEXT, 1, cv2.LINE_AA)
    return np.concatenate([_text_strip(width, [(4, label)], height=24, scale=0.5), bar, ticks], axis=0)


def query_figure(panel: np.ndarray, score_max: float, map_title: str, bar_label: str) -> np.ndarray:
    """query/visualize.query_panel's (H, 2W) panel for people: enlarged, both halves titled (the map
    half with `map_title`, the strategy's), the legend of the marks under the image and the score
    colour bar (0 .. `score_max`, labelled `bar_label`) under the map."""
    big = enlarge(panel)
    half = big.shape[1] // 2
    body = titled_columns([big[:, :half], big[:, half:]], ["image and regions", map_title])
    left = legend([(LABELED_TINT_COLOR, "labelled before"), (OUTLINE_COLOR, "queried now")], half)
    right = colour_bar(half, score_max, bar_label)
    height = max(left.shape[0], right.shape[0])
    pad = lambda a: np.concatenate([a, np.full((height - a.shape[0], a.shape[1], 3), BACKGROUND, np.uint8)])  # noqa: E731
    foot = np.concatenate([pad(left), np.full((height, 6, 3), BACKGROUND, np.uint8), pad(right)], axis=1)
    return np.concatenate([body, foot], axis=0)


def overlay(image: np.ndarray, labels: np.ndarray, palette, alpha: float = 0.55) -> np.ndarray:
    """Class colours over the image (void pixels show the image alone)."""
    out = image.astype(np.float32)
    valid = labels != 255
    out[valid] = (1 - alpha) * out[valid] + alpha * colorize(labels, palette)[valid].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def prediction_figure(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], classes, palette) -> np.ndarray:
    """Rows of (image, prediction, ground truth): titled columns image | prediction over the image
    | prediction | ground truth, enlarged, with the class legend below."""
    columns = [[], [], [], []]
    for image, prediction, truth in rows:
        for column, picture in zip(columns, (image, overlay(image, prediction, palette),
                                             colorize(prediction, palette), colorize(truth, palette))):
            column.append(enlarge(picture, MIN_HEIGHT // 2))
    gap = lambda c: np.full((4,) + c[0].shape[1:], BACKGROUND, np.uint8)  # noqa: E731
    stacked = [np.concatenate([x for picture in c for x in (picture, gap(c))][:-1], axis=0) for c in columns]
    body = titled_columns(stacked, ["image", "prediction over the image", "prediction", "ground truth"])
    return np.concatenate([body, class_legend(classes, palette, body.shape[1])], axis=0)


def labelled_curve(series: dict[str, list[tuple[float, float]]], title: str) -> np.ndarray:
    """RGB picture of mIoU against labelled pixels (%) after every stage, one line per run (e.g.
    the run and its random-query twin): the practitioner's question, "what do more labels buy?"."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for (name, points), style in zip(series.items(), ("o-", "s--", "^:", "d-.")):
        xs, ys = zip(*points) if points else ((), ())
        ax.plot(xs, ys, style, label=name)
        for x, y in points[-1:]:
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("labelled pixels of the training pool (%)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.12)  # room for the last point's value
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return picture
