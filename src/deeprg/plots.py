"""Figures (matplotlib, Agg backend). Functions take plain data and a path; nothing here computes
physics. Every figure is written atomically; axes counting epochs, steps or distances get integer
ticks."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from deeprg.runs import atomic_path  # noqa: E402

__all__ = ["field_grid", "hmc_traces", "latent_energy", "latent_response_maps", "mutual_information_maps",
           "training_curve"]


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def _integer_x(ax) -> None:
    """Ticks of the x axis at integers only (epochs, steps, distances)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curve(history: list[dict], exact_free_energy: float | None, path: str | Path, title: str = "") -> None:
    """Variational free energy during training (Li & Wang Fig. 3(a)): the relative error
    ``(F_q - F) / |F|`` on a log scale when the exact ``F = -ln Z`` is known, else ``F_q``."""
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    err = np.array([h["error"] for h in history])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if exact_free_energy is not None:
        rel = (loss - exact_free_energy) / abs(exact_free_energy)
        rel_err = err / abs(exact_free_energy)
        ax.fill_between(steps, np.maximum(rel - rel_err, 1e-7), rel + rel_err, alpha=0.3, lw=0)
        ax.plot(steps, np.maximum(rel, 1e-7), lw=1)
        ax.set_yscale("log")
        ax.set_ylabel(r"relative error $(F_q - F)/|F|$")
    else:
        ax.fill_between(steps, loss - err, loss + err, alpha=0.3, lw=0)
        ax.plot(steps, loss, lw=1)
        ax.set_ylabel(r"variational free energy $F_q$")
    ax.set_xlabel("training step")
    _integer_x(ax)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, path)


def hmc_traces(traces: dict[str, np.ndarray], warmup: int, reference: tuple[float, float] | None,
               path: str | Path, ylabel: str, title: str = "") -> None:
    """An observable against the HMC step for several samplers (Li & Wang Fig. 3(b)).

    ``traces``: label -> ``(steps, chains)`` values, warm-up steps first; drawn as the mean over
    chains with its standard error. ``warmup`` steps are shaded; ``reference`` is ``(value,
    error)`` of the exact or Monte Carlo value, drawn as a line with its band."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, values in traces.items():
        values = np.asarray(values, dtype=float)
        steps = np.arange(1, len(values) + 1)
        mean = values.mean(1)
        sem = values.std(1, ddof=1) / np.sqrt(values.shape[1]) if values.shape[1] > 1 else 0 * mean
        ax.fill_between(steps, mean - sem, mean + sem, alpha=0.25, lw=0)
        ax.plot(steps, mean, lw=1, label=label)
    if reference is not None:
        value, error = reference
        ax.axhline(value, color="C3", lw=1.2, label="exact" if error == 0 else "Monte Carlo")
        if error > 0:
            ax.axhspan(value - error, value + error, color="C3", alpha=0.2, lw=0)
    if warmup > 0:
        ax.axvspan(0, warmup, color="0.85", lw=0, zorder=0, label="warm-up")
    ax.set_xlabel("HMC step")
    _integer_x(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def latent_energy(values: np.ndarray, profile: np.ndarray, plane: np.ndarray, path: str | Path) -> None:
    """The renormalized energy of the top-level latents: along their collective direction
    (``profile`` against ``values``) and on the plane of the first two (``plane``)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.plot(values, profile, lw=1.2)
    a.set_xlabel("every top-level latent $= t$")
    a.set_ylabel(r"$E(z) - E_{\min}$")
    a.grid(alpha=0.3)
    extent = (values[0], values[-1], values[0], values[-1])
    im = b.imshow(plane.T, origin="lower", extent=extent, cmap="viridis", aspect="equal")
    b.set_xlabel("$z_1$")
    b.set_ylabel("$z_2$")
    fig.colorbar(im, ax=b, shrink=0.85)
    fig.suptitle("renormalized energy of the top-level latents (others at 0)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def field_grid(fields: np.ndarray, path: str | Path, title: str = "", cmap: str = "RdBu_r", *,
               colorbar: bool = False, label: str = "", titles: list[str] | None = None) -> None:
    """A grid of 2D fields or spin configurations ``(n, L, L)`` as images (at most 64 shown), on
    one colour scale symmetric about 0 (``+-max |field|``).

    ``colorbar``: draw that scale as one colour bar beside the grid, labelled ``label`` (for
    response maps and other fields whose values matter; off for spin configurations).
    ``titles``: one small title per panel (e.g. the latent's site)."""
    fields = np.asarray(fields)[:64]
    n = len(fields)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    vmax = float(np.abs(fields).max()) or 1.0
    width = 1.2 * cols + (0.9 if colorbar else 0.0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 1.2 * rows + 0.4), squeeze=False,
                             layout="constrained" if colorbar else None)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (ax, f) in enumerate(zip(axes.ravel(), fields)):
        im = ax.imshow(f, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=axes, shrink=0.9, label=label)
    else:
        fig.tight_layout()
    _save(fig, path)


def latent_response_maps(maps: np.ndarray, path: str | Path, sites: np.ndarray | list[int] | None = None,
                         title: str = "E[dz_i/dx] of the top-level latents") -> None:
    """Response maps ``E[dz_i / dx]`` of some latents (:func:`deeprg.flows.analysis.response_maps`)
    for a lattice in any dimension the flows support.

    ``maps``: ``(n_latents, L)`` for a chain, drawn as one line per latent against the site;
    ``(n_latents, L, L)`` for a square lattice, drawn as a grid of images with a colour bar
    (:func:`field_grid`). ``sites``: the flat site of each latent, used in the legend / panel
    titles (default: numbered ``0 .. n_latents - 1``)."""
    maps = np.asarray(maps, dtype=float)
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must have shape (n_latents, L) or (n_latents, L, L), got {maps.shape}")
    names = [f"$z_{{{int(s)}}}$" for s in (range(len(maps)) if sites is None else sites)]
    if len(names) != len(maps):
        raise ValueError(f"sites must give one site per map ({len(maps)}), got {len(names)}")
    if maps.ndim == 3:
        field_grid(maps, path, title=title, colorbar=True, label=r"$E[\partial z_i / \partial x]$", titles=names)
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = np.arange(maps.shape[1])
    for i, (m, name) in enumerate(zip(maps, names)):
        ax.plot(x, m, "o-", ms=3, lw=1, color=f"C{i % 10}", label=name)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("site")
    ax.set_ylabel(r"$E[\partial z_i / \partial x_j]$")
    _integer_x(ax)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(maps) <= 12:
        ax.legend(fontsize=7, ncol=2 if len(maps) > 6 else 1)
    fig.tight_layout()
    _save(fig, path)


def mutual_information_maps(mi_latent: np.ndarray, mi_physical: np.ndarray, path: str | Path) -> None:
    """Heat maps of pairwise mutual information among latents and among physical variables
    (Li & Wang Fig. 4(b, c)), ``(m, m)`` each, in nats, on one shared colour scale from 0 to
    the largest value of either (small negative KSG estimates show as 0), so the two panels
    compare directly."""
    mi_latent, mi_physical = np.asarray(mi_latent, dtype=float), np.asarray(mi_physical, dtype=float)
    vmax = max(float(np.nanmax(mi_latent)), float(np.nanmax(mi_physical)), 0.0) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.8))
    for ax, mi, name in ((axes[0], mi_latent, "latent variables z"), (axes[1], mi_physical, "physical variables x")):
        im = ax.imshow(mi, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"mutual information, {name}", fontsize=9)
        ax.set_xlabel("site")
        ax.set_ylabel("site")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="nats")
    fig.tight_layout()
    _save(fig, path)


def filter_snapshots(filters: np.ndarray, epochs: list[int], path: str | Path, title: str = "") -> None:
    """Filters of the RBM projector after the given training epochs on one symmetric colour scale
    (Chung & Kao Fig. 1). 2D filters ``(n, f, f)``: one panel per epoch, row = filter row offset
    from the block. 3D filters ``(n, f, f, f)``: one row of panels per epoch, one panel per slice
    along the first axis (slice ``k`` holds offsets ``k - f/2 + 1`` from the block's first plane)."""
    filters = np.asarray(filters, dtype=float)
    if filters.ndim not in (3, 4):
        raise ValueError(f"filters must have shape (n, f, f) or (n, f, f, f), got {filters.shape}")
    n = len(filters)
    vmax = float(np.abs(filters).max()) or 1.0
    if filters.ndim == 3:
        fig, axes = plt.subplots(1, n, figsize=(1.9 * n + 0.8, 2.4), squeeze=False)
        panels = [(axes[0][i], w, f"epoch {e}") for i, (w, e) in enumerate(zip(filters, epochs))]
    else:
        f = filters.shape[1]
        fig, axes = plt.subplots(n, f, figsize=(1.6 * f + 0.8, 1.7 * n + 0.6), squeeze=False)
        panels = [(axes[i][k], w[k], f"epoch {e}, slice {k}") for i, (w, e) in enumerate(zip(filters, epochs))
                  for k in range(f)]
    for ax, w, label in panels:
        im = ax.imshow(w, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="weight")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def exponent_vs_epoch(epochs: np.ndarray, means: np.ndarray, errors: np.ndarray, path: str | Path,
                      references: dict[str, float], ylabel: str = r"$y_t$", title: str = "") -> None:
    """An MCRG exponent with error bars against the training epoch (Chung & Kao Fig. 2);
    ``references`` maps labels to values drawn as dotted horizontal lines."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(epochs, means, yerr=errors, fmt="o-", ms=3, lw=1, capsize=2, label="RBM projector")
    for i, (label, value) in enumerate(references.items()):
        ax.axhline(value, ls=":", lw=1.2, color=f"C{i + 1}", label=label)
    ax.set_xlabel("training epoch")
    _integer_x(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


__all__ += ["exponent_vs_epoch", "filter_snapshots"]


def window_nll_curve(history: list[dict], path: str | Path, reference: float | None = None, title: str = "") -> None:
    """CORA training: window negative log-likelihood per site against the epoch, one colour per
    training stage (layer-by-layer learning fits one layer at a time on data of its level);
    ``reference`` (e.g. the exact window entropy per site) as a dotted line."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    stages: dict[tuple, list[dict]] = {}
    for h in history:
        stages.setdefault((h["pass"], h["layer"]), []).append(h)
    for i, ((p, layer), records) in enumerate(stages.items()):
        label = "all layers" if layer == 0 else (f"pass {p}, layer {layer}" if len(stages) <= 8 else None)
        ax.plot([h["epoch"] for h in records], [h["loss"] for h in records], lw=1, color=f"C{i % 10}", label=label)
    if reference is not None:
        ax.axhline(reference, ls=":", color="k", lw=1.2, label="exact")
    ax.set_xlabel("epoch")
    _integer_x(ax)
    ax.set_ylabel("window NLL per site (nats)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def correlation_model_vs_data(correlation: list[dict], path: str | Path, title: str = "",
                              exact=None) -> None:
    """Two-point function ``G(r)`` of model samples against the data's, with error bars;
    ``correlation`` is a list of ``{"r", "model", "model_error", "data", "data_error"}``.

    ``exact``: optional exact ``G(r)`` (e.g. ``evaluate(...)["exact_correlation"]`` for the
    periodic Ising chain), an ``(n, 2)`` array-like of ``(r, G)`` pairs (from arrays ``r`` and
    ``G``: ``np.column_stack((r, G))``); drawn as a black line under the estimates."""
    r = np.array([c["r"] for c in correlation])
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    if exact is not None:
        curve = np.asarray(exact, dtype=float)
        if curve.ndim != 2 or curve.shape[1] != 2:
            raise ValueError(f"exact must be (r, G) pairs, shape (n, 2), got shape {curve.shape}")
        ax.plot(curve[:, 0], curve[:, 1], "-", color="k", lw=1.2, zorder=1, label="exact")
    for key, fmt in (("data", "o-"), ("model", "s--")):
        ax.errorbar(r, [c[key] for c in correlation], yerr=[c[f"{key}_error"] for c in correlation], fmt=fmt,
                    ms=3, lw=1, capsize=2, label=key, zorder=2)
    ax.set_xlabel("distance r")
    _integer_x(ax)
    ax.set_ylabel(r"$G(r) = \langle s_i s_{i+r} \rangle$")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def chain_samples(samples: np.ndarray, path: str | Path, title: str = "") -> None:
    """1D configurations ``(n, L)`` (at most 64) as one image, one configuration per row, +1 / -1
    (or the two values) in two colours."""
    samples = np.asarray(samples, dtype=float)[:64]
    n, L = samples.shape
    fig, ax = plt.subplots(figsize=(min(2.0 + L / 10, 12.0), min(1.2 + n / 10, 8.0)))
    ax.imshow(samples, cmap="RdBu_r", interpolation="nearest", aspect="auto")
    ax.set_xlabel("site")
    ax.set_ylabel("sample")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


__all__ += ["chain_samples", "correlation_model_vs_data", "window_nll_curve"]
