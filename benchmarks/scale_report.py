"""The scale benchmark's table (Markdown) and plot (log-log wall time per stage)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.scale_stages import WHAT


def markdown(res: dict, command: str) -> str:
    sizes = [int(n) for n in res["runs"]]
    head = " | ".join(f"{n // 1000}k s / MiB" for n in sizes)
    lines = [f"## {res['date'][:10]}: cost curve, 1k to {max(sizes) // 1000}k images ({res['date'][11:16]})", "",
             f"Command: `{command}`. Load average {res['loadavg_start']:.2f} at the start, "
             f"{res.get('loadavg_end', float('nan')):.2f} at the end (2 CPUs, shared). Each cell: wall s / peak RSS MiB "
             "of the stage's own process; *italic* = extrapolated linearly from the throughput at the largest measured "
             "size (not measured); — = not run.", "",
             f"| stage | {head} | slope from 10k |", "|---|" + "---:|" * (len(sizes) + 1)]
    for stage, f in res["fit"].items():
        cells = []
        for n in sizes:
            if n in f["n"]:
                i = f["n"].index(n)
                cells.append(f"{f['wall_s'][i]:.1f} / {f['rss_mib'][i]}")
            elif n in f.get("extrapolated", {}) or str(n) in f.get("extrapolated", {}):
                cells.append(f"*{f['extrapolated'].get(n, f['extrapolated'].get(str(n)))} (extrapolated)*")
            else:
                cells.append("—")
        s = f["slope_10k"]
        lines.append(f"| {WHAT[stage]} | " + " | ".join(cells) + f" | {'—' if s is None else s} |")
    extras = {n: {k: v for st in r.values() for k, v in st.items() if k.endswith("_mb")} for n, r in res["runs"].items()}
    lines += ["", "Sizes (MB): " + "; ".join(f"{int(n) // 1000}k: " + ", ".join(f"{k} {v}" for k, v in e.items())
                                          for n, e in extras.items() if e), ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
    for stage, f in res["fit"].items():
        (line,) = ax.plot(f["n"], f["wall_s"], "o-", label=f"{stage} ({f['slope_10k']})", lw=1.2, ms=3)
        ex = f.get("extrapolated", {})
        if ex:
            ax.plot([f["n"][-1], *map(int, ex)], [f["wall_s"][-1], *ex.values()], ":", color=line.get_color())
    ax.set(xscale="log", yscale="log", xlabel="images (N)", ylabel="wall time (s)",
           title="Cost per stage (dotted: extrapolated; legend: slope from 10k)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
