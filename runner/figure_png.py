"""Matplotlib figures as PNG bytes, ready for an atomic write."""
from __future__ import annotations

import io


def figure_png(fig, dpi: int) -> bytes:
    """Render `fig` to PNG bytes and close it (figures are not kept open between plots)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
