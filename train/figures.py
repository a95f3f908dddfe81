"""The benchmarks' and replay's figures: matplotlib on the file-only Agg backend, imported
only when a figure is drawn (plots are an optional extra)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def subplots(path: Path, *grid: int, **options: Any) -> tuple[Any, Any]:
    """plt.subplots(*grid, **options) on the Agg backend, with `path`'s folder made; an
    ImportError that names the extra where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(f"plots need matplotlib, the optional extra: pip install -e '.[plots]' ({error})") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return plt.subplots(*grid, **options)


def save(figure: Any, path: Path, dpi: int = 120) -> None:
    """Lay the figure out, write it to `path` and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
