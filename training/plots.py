"""Training curves and the test confusion matrix as PNGs (needs the `plot` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from lenet_export.fsutil import atomic_write  # noqa: E402


def plot_run(history: list[dict], confusion: list[list[int]], classes: list[str], out: Path) -> None:
    """``curves.png`` (loss and accuracy per epoch, with markers so a 1-epoch run shows its points, and the
    best-validation epoch marked) and ``confusion.png`` into ``out``."""
    epochs = [int(h["epoch"]) for h in history]
    best = max(history, key=lambda h: float(h["val_acc"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax1, "loss", "loss"), (ax2, "acc", "accuracy")):
        ax.plot(epochs, [float(h[f"train_{key}"]) for h in history], "o-", label="train")
        ax.plot(epochs, [float(h[f"val_{key}"]) for h in history], "s-", label="validation")
        ax.axvline(int(best["epoch"]), color="grey", linestyle="--", linewidth=1,
                   label=f"best epoch {int(best['epoch'])} (val acc {float(best['val_acc']):.4f})")
        ax.set(xlabel="epoch", ylabel=title, title=title, xticks=epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out / "curves.png", lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > max(map(max, confusion)) / 2 else "black")
    fig.colorbar(im)
    fig.tight_layout()
    atomic_write(out / "confusion.png", lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
