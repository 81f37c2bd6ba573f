"""Plots as PNG bytes that the Dagster UI shows inline and reports embed."""

from __future__ import annotations

import base64
import io


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend: runs have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return buffer.getvalue()


def loss_curve_png(steps: list[int], losses: list[float], title: str) -> bytes:
    fig, ax = pyplot().subplots(figsize=(6, 3), dpi=100)
    ax.plot(steps, losses, marker="." if len(steps) < 60 else None, linewidth=1.2)
    if len(losses) >= 8:
        window = max(2, len(losses) // 10)
        smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, linewidth=2, label=f"mean of {window}")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}]({data_uri(png)})"
