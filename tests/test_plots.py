"""Figures: every plotting function writes a valid PNG; the exact chain correlation that CORA's
evaluation draws agrees with enumeration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.ticker import MaxNLocator

from deeprg import plots
from deeprg.cora.evaluate import evaluate
from deeprg.cora.network import Cora
from deeprg.lattice import Lattice
from deeprg.models.enumeration import Enumeration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    assert not list(path.parent.glob(f".{path.name}*"))  # no temporary file left behind


@pytest.fixture
def captured_axes(monkeypatch):
    """The axes of every figure saved during a test (to check what was drawn)."""
    saved = []
    original = plots._save

    def save(fig, path):
        saved.append(fig.axes)
        original(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return saved


def enumerated_chain_correlation(L: int, K: float) -> np.ndarray:
    enum = Enumeration(Lattice((L,)), K)
    return np.array([enum.mean(lambda s, r=r: s[:, 0].astype(float) * s[:, r]) for r in range(L)])


# ---- exact chain correlation -------------------------------------------------------------------


@pytest.mark.parametrize("L, K", [(8, 0.4), (8, 1.3), (4, 0.7)])
def test_evaluate_exact_correlation_matches_enumeration(L, K):
    net = Cora((L,), chi=2, seed=0)
    x = net.sample(50, torch.Generator().manual_seed(0))
    metadata = {"model": "ising", "d": 1, "K": K, "lattice_shape": [L]}
    summary = evaluate(net, x, 2, n_samples=50, generator=torch.Generator().manual_seed(1), metadata=metadata)
    exact = np.array(summary["exact_correlation"])
    assert exact.shape == (L // 2 + 1, 2)
    np.testing.assert_array_equal(exact[:, 0], np.arange(L // 2 + 1))
    np.testing.assert_allclose(exact[:, 1], enumerated_chain_correlation(L, K)[: L // 2 + 1], rtol=0, atol=1e-12)
    assert [c["r"] for c in summary["correlation"]] == exact[:, 0].tolist()


def test_chain_correlation_formula_on_six_sites():
    """The formula (t^r + t^(L-r)) / (1 + t^L) against enumeration, on a chain that is not a
    power of two."""
    L, K = 6, 0.55
    t = np.tanh(K)
    r = np.arange(L)
    np.testing.assert_allclose((t**r + t ** (L - r)) / (1 + t**L), enumerated_chain_correlation(L, K), atol=1e-12)


def test_evaluate_without_chain_metadata_has_no_exact_curve():
    net = Cora((4, 4), chi=2, seed=0)
    x = net.sample(100, torch.Generator().manual_seed(0))
    summary = evaluate(net, x, 2, n_samples=100, generator=torch.Generator().manual_seed(1),
                       metadata={"model": "ising", "d": 2, "K": 0.4, "lattice_shape": [4, 4]})
    assert "exact_correlation" not in summary


# ---- figures -----------------------------------------------------------------------------------


def correlation_entries(L=8):
    r = np.arange(L // 2 + 1)
    g = 0.6**r
    return [{"r": int(i), "model": float(v) + 0.01, "model_error": 0.02, "data": float(v), "data_error": 0.01}
            for i, v in zip(r, g)]


def test_correlation_plot_with_and_without_exact_curve(tmp_path, captured_axes):
    entries = correlation_entries()
    plots.correlation_model_vs_data(entries, tmp_path / "plain.png", title="plain")
    assert_png(tmp_path / "plain.png")
    r = np.arange(5)
    exact = [[int(i), float(0.6**i)] for i in r]
    plots.correlation_model_vs_data(entries, tmp_path / "pairs.png", exact=exact)
    plots.correlation_model_vs_data(entries, tmp_path / "arrays.png", exact=np.column_stack((r, 0.6**r)))
    for name in ("pairs", "arrays"):
        assert_png(tmp_path / f"{name}.png")
    labels = [line.get_label() for line in captured_axes[-1][0].get_lines()]
    assert "exact" in labels
    assert isinstance(captured_axes[-1][0].xaxis.get_major_locator(), MaxNLocator)
    with pytest.raises(ValueError, match="shape"):
        plots.correlation_model_vs_data(entries, tmp_path / "bad.png", exact=[1.0, 0.5])


def test_field_grid_with_colour_bar(tmp_path, captured_axes):
    fields = np.random.default_rng(0).normal(size=(5, 8, 8))
    plots.field_grid(fields, tmp_path / "plain.png", title="fields")
    plots.field_grid(fields, tmp_path / "bar.png", title="fields", colorbar=True, label="value",
                     titles=[f"f{i}" for i in range(5)])
    assert_png(tmp_path / "plain.png")
    assert_png(tmp_path / "bar.png")
    assert len(captured_axes[1]) == len(captured_axes[0]) + 1  # the colour bar's axes


@pytest.mark.parametrize("shape", [(4, 16), (4, 8, 8)])
def test_latent_response_maps_in_one_and_two_dimensions(tmp_path, captured_axes, shape):
    maps = np.random.default_rng(1).normal(size=shape)
    plots.latent_response_maps(maps, tmp_path / "response.png", sites=[0, 4, 8, 12])
    assert_png(tmp_path / "response.png")
    if len(shape) == 2:
        lines = [ln for ln in captured_axes[0][0].get_lines() if ln.get_label().startswith("$z")]
        assert len(lines) == 4
        np.testing.assert_array_equal(lines[2].get_ydata(), maps[2])
    else:
        assert len(captured_axes[0]) == 4 + 1  # 2 x 2 panels and a colour bar
    with pytest.raises(ValueError, match="one site per map"):
        plots.latent_response_maps(maps, tmp_path / "bad.png", sites=[0])
    with pytest.raises(ValueError, match="n_latents"):
        plots.latent_response_maps(maps[0, 0], tmp_path / "bad.png")


def test_mutual_information_maps_share_a_scale_from_zero(tmp_path, captured_axes):
    rng = np.random.default_rng(2)
    a = np.abs(rng.normal(size=(6, 6))) * 0.1
    b = np.abs(rng.normal(size=(6, 6)))
    a[0, 1] = -0.01  # KSG estimates can dip below zero
    plots.mutual_information_maps(a, b, tmp_path / "mi.png")
    assert_png(tmp_path / "mi.png")
    images = [ax.images[0] for ax in captured_axes[0] if ax.images]
    assert len(images) == 2
    for im in images:
        assert im.get_clim() == (0.0, float(b.max()))


def test_epoch_axes_have_integer_ticks(tmp_path, captured_axes):
    epochs = np.arange(1, 4)
    plots.exponent_vs_epoch(epochs, np.array([0.9, 0.95, 1.0]), np.array([0.02, 0.02, 0.01]),
                            tmp_path / "exponent.png", {"exact": 1.0})
    history = [{"pass": 0, "layer": 0, "epoch": e, "loss": 1.0 / e} for e in range(1, 4)]
    plots.window_nll_curve(history, tmp_path / "nll.png", reference=0.3)
    steps = [{"step": s, "loss": -10.0 + 1.0 / s, "error": 0.01} for s in range(1, 4)]
    plots.training_curve(steps, -10.5, tmp_path / "training.png")
    plots.hmc_traces({"latent": np.ones((5, 3))}, 1, (1.0, 0.1), tmp_path / "hmc.png", ylabel="E")
    for name in ("exponent", "nll", "training", "hmc"):
        assert_png(tmp_path / f"{name}.png")
    for axes in captured_axes:
        ticks = axes[0].get_xticks()
        assert isinstance(axes[0].xaxis.get_major_locator(), MaxNLocator)
        np.testing.assert_array_equal(ticks, np.round(ticks))


def test_remaining_figures_write_pngs(tmp_path):
    plots.filter_snapshots(np.random.default_rng(3).normal(size=(3, 4, 4)), [0, 5, 10], tmp_path / "filters.png")
    values = np.linspace(-2, 2, 9)
    plots.latent_energy(values, values**2, np.add.outer(values**2, values**2), tmp_path / "energy.png")
    plots.chain_samples(np.where(np.random.default_rng(4).random((10, 16)) < 0.5, 1, -1), tmp_path / "chains.png")
    for name in ("filters", "energy", "chains"):
        assert_png(tmp_path / f"{name}.png")
