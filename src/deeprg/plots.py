"""Figures (matplotlib, Agg backend). Functions take plain data and a path; nothing here computes
physics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deeprg.runs import atomic_path  # noqa: E402

__all__ = ["field_grid", "hmc_traces", "latent_energy", "mutual_information_maps", "training_curve"]


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


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


def field_grid(fields: np.ndarray, path: str | Path, title: str = "", cmap: str = "RdBu_r") -> None:
    """A grid of 2D fields or spin configurations ``(n, L, L)`` as images (at most 64 shown)."""
    fields = np.asarray(fields)[:64]
    n = len(fields)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    vmax = float(np.abs(fields).max()) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), fields):
        ax.imshow(f, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def mutual_information_maps(mi_latent: np.ndarray, mi_physical: np.ndarray, path: str | Path) -> None:
    """Heat maps of pairwise mutual information among latents and among physical variables
    (Li & Wang Fig. 4(b, c)); separate colour scales."""
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.8))
    for ax, mi, name in ((axes[0], mi_latent, "latent variables z"), (axes[1], mi_physical, "physical variables x")):
        im = ax.imshow(mi, cmap="viridis", interpolation="nearest")
        ax.set_title(f"mutual information, {name}", fontsize=9)
        ax.set_xlabel("site")
        ax.set_ylabel("site")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="nats")
    fig.tight_layout()
    _save(fig, path)
