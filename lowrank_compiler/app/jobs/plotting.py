"""The jobs' figures: matplotlib drawn to memory, imported only when a figure is drawn.

``pyplot()`` is ``matplotlib.pyplot`` on the display-less Agg backend, or None where matplotlib
is not installed (the job then says so and goes on); ``png(fig)`` is the figure's PNG bytes,
the figure closed.
"""

from __future__ import annotations

import io


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: draw to memory
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
