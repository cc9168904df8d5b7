"""Histograms of each quantized layer's weights with its mixture components.

One PNG per layer: the weight histogram (density) before DGMS training (with
the k-means-initialized mixture) and after (with the trained mixture), each
component drawn as π̂_k N(w | μ_k, σ_k) and the means marked. matplotlib runs
headless (Agg) and is imported only when plotting.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jgraph.core import atomic_write_bytes
from jgraph.quant._config import MIXTURE
from jgraph.quant._transform import _get, iter_mixtures

__all__ = ["plot_mixtures"]


def _panel(ax: Any, w: np.ndarray, mix: Mapping[str, Any], sigma_min: float, title: str) -> None:
    w = np.asarray(w, np.float64).reshape(-1)
    ax.hist(w, bins=80, density=True, color="0.75", label="weights")
    means = np.concatenate([[0.0], np.asarray(mix["mu"], np.float64)])
    sigma = np.maximum(np.asarray(mix["sigma"], np.float64), sigma_min)
    pi = np.abs(np.asarray(mix["pi"], np.float64))
    pi = pi / max(pi.sum(), 1e-30)
    lo, hi = float(min(w.min(), means.min())), float(max(w.max(), means.max()))
    pad = 0.05 * (hi - lo + 1e-12)
    grid = np.linspace(lo - pad, hi + pad, 600)
    total = np.zeros_like(grid)
    for k in range(means.size):
        pdf = (
            pi[k]
            * np.exp(-0.5 * ((grid - means[k]) / sigma[k]) ** 2)
            / (sigma[k] * np.sqrt(2 * np.pi))
        )
        total += pdf
        ax.plot(grid, pdf, lw=0.8, color="tab:red" if k == 0 else "tab:blue")
    ax.plot(grid, total, lw=1.2, color="k", label="mixture")
    ax.vlines(means, 0, ax.get_ylim()[1] * 0.05, color="tab:orange", lw=1.5, label="μ")
    # Densities of tiny σ dwarf the histogram; cap the view at a few times its peak.
    counts, _ = np.histogram(w, bins=80, density=True)
    ax.set_ylim(0, 3 * float(counts.max(initial=1.0)))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("weight")


def plot_mixtures(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    out_dir: Path,
    *,
    sigma_min: float = 1e-5,
) -> list[Path]:
    """Writes ``<out_dir>/<layer>.png`` (layer path with ``/`` as ``.``) per quantized layer.

    Args:
        before: variables right after `DGMS.init` (k-means mixture).
        after: variables after DGMS training.
        out_dir: destination folder.
        sigma_min: the σ floor used in training.

    Returns:
        The PNG paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    after_mix = dict(iter_mixtures(after[MIXTURE]))
    for path, mix0 in iter_mixtures(before[MIXTURE]):
        name = "/".join(path)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
        _panel(
            axes[0],
            _get(before["params"], (*path, "kernel")),
            mix0,
            sigma_min,
            f"{name}: k-means init",
        )
        _panel(
            axes[1],
            _get(after["params"], (*path, "kernel")),
            after_mix[path],
            sigma_min,
            f"{name}: after DGMS",
        )
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        paths.append(atomic_write_bytes(out_dir / f"{name.replace('/', '.')}.png", buf.getvalue()))
    return paths
