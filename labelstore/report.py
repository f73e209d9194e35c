"""The generic pieces of the self-contained HTML report of `labelstore inspect --report`: figures
(matplotlib Agg) as PNG bytes, the per-epoch figure and table, HTML tables and the page.

Each task's report section (its tables and figures) is its own (pipeline/<task>_inspect.py);
everything here takes plain dicts / arrays; nothing reads the store.
"""

from __future__ import annotations

import base64
import html
import io


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (90 dpi); closes it."""
    buf = io.BytesIO()
    if fig.get_layout_engine() is None:  # figures made with layout="constrained" lay themselves out
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    pyplot().close(fig)
    return buf.getvalue()


def title_of(info: dict) -> str:
    """'store · teacher · dataset' for figure titles."""
    t, d = info.get("teacher") or {}, info.get("dataset") or {}
    return f"{info.get('path')}\nteacher {t.get('name')} · data {d.get('root') or d.get('kind')}"


def per_epoch_figure(per: dict[str, list[float]], title: str, labels: dict[str, str] | None = None,
                     unbounded: tuple[str, ...] = ()) -> bytes:
    """One panel per statistic against the epoch, its y axis labelled labels[name] (default: the name);
    probabilities on [0, 1], the statistics named in `unbounded` from 0 to 1.15 x their largest value."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(1, len(per), figsize=(3.2 * len(per), 3.2), squeeze=False)
    for ax, (name, vals) in zip(axes[0], per.items()):
        ax.plot(range(len(vals)), vals, marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel((labels or {}).get(name, name), fontsize=8)
        top = 1 if name not in unbounded else max(max(vals) * 1.15, 1e-3)  # from 0: small changes look small
        ax.set_ylim(0, top)
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))  # whole epochs, readable at any count
    fig.suptitle(title.replace("\n", " · "), fontsize=8)
    return png(fig)


def short(text: str, n: int) -> str:
    """text cut to n characters, an ellipsis marking the cut."""
    return text if len(text) <= n else text[: n - 1] + "…"


def table(header: list[str], rows: list[list]) -> str:
    """An HTML table; floats with 4 decimals, everything else escaped text."""
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def per_epoch_table(stats: dict) -> str:
    """HTML: one row per epoch, one column per per-epoch statistic."""
    per = stats["per_epoch"]
    epochs = len(next(iter(per.values())))
    return "<h2>per epoch</h2>" + table(["epoch", *per], [[e, *(per[k][e] for k in per)] for e in range(epochs)])


def write_html(path: str, info: dict, sections: list[str], figures: dict[str, bytes]) -> None:
    """One self-contained HTML file: the tables (HTML sections) and the figures as base64 PNGs."""
    parts = [f"<h1>labelstore inspect</h1><p>{html.escape(title_of(info))} · task {html.escape(str(info.get('task')))}</p>",
             *sections]
    for name, data in figures.items():
        b64 = base64.b64encode(data).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    style = ("body{font-family:sans-serif;max-width:1200px} table{border-collapse:collapse} "
             "td,th{border:1px solid #999;padding:2px 6px} img{max-width:100%}")
    with open(path, "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>labelstore inspect</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(path: str, info: dict, stats: dict, sections: list[str], figures: dict[str, bytes]) -> None:
    """The HTML report of a store: the per-epoch table of its inspect `stats`, then its task's report
    section (`sections`, `figures`: what the task's report function makes; labelstore.trainers.tasks)."""
    write_html(path, info, [per_epoch_table(stats), *sections], figures)
