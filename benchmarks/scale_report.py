"""The scale benchmark's table (Markdown) and plot (log-log wall time per stage)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.scale_stages import WHAT


def markdown(res: dict, command: str) -> str:
    sizes = sorted(int(n) for n in res["runs"])
    head = " | ".join(f"{n // 1000}k" for n in sizes)
    merged = "".join(f" Merged with the run of {m['date']} (`{m['file']}`) for the sizes and stages this one did not "
                     "measure." for m in res.get("merged", []))
    lines = [f"## {res['date'][:10]}: cost curve, 1k to {max(sizes) // 1000}k images ({res['date'][11:16]})", "",
             f"Command: `{command}`. Load average {res['loadavg_start']:.2f} at the start, "
             f"{res.get('loadavg_end', float('nan')):.2f} at the end (2 CPUs, shared).{merged} Each cell: work s "
             "(the stage's own clock after its imports) / wall s of its process / peak RSS MiB of its process; the slope "
             "is fitted on the work time; *italic* = extrapolated linearly from the throughput at the largest measured "
             "size (not measured); — = not run. The CPU slope uses user + system seconds (children included), which the "
             "load of other processes does not stretch; it is missing where a size was measured without it.", "",
             f"| stage | {head} | slope from 10k (work) | slope from 10k (CPU) |", "|---|" + "---:|" * (len(sizes) + 2)]
    for stage, f in res["fit"].items():
        cells = []
        for n in sizes:
            if n in f["n"]:
                i = f["n"].index(n)
                cells.append(f"{f['work_s'][i]:.1f} / {f['wall_s'][i]:.1f} / {f['rss_mib'][i]}")
            elif n in f.get("extrapolated", {}) or str(n) in f.get("extrapolated", {}):
                cells.append(f"*{f['extrapolated'].get(n, f['extrapolated'].get(str(n)))} (extrapolated)*")
            else:
                cells.append("—")
        s, c = f["slope_10k"], f.get("slope_cpu_10k")
        lines.append(f"| {WHAT[stage]} | " + " | ".join(cells) + f" | {'—' if s is None else s} | {'—' if c is None else c} |")
    extras = {n: {k: v for st in r.values() for k, v in st.items() if k.endswith("_mb")}
              for n, r in sorted(res["runs"].items(), key=lambda kv: int(kv[0]))}
    if any(extras.values()):
        lines += ["", "Sizes (MB): " + "; ".join(f"{int(n) // 1000}k: " + ", ".join(f"{k} {v}" for k, v in e.items())
                                              for n, e in extras.items() if e)]
    lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
    colours = plt.get_cmap("tab20").colors
    for i, (stage, f) in enumerate(res["fit"].items()):
        slope = "—" if f["slope_10k"] is None else f["slope_10k"]
        (line,) = ax.plot(f["n"], f["work_s"], "os^Dv"[i % 5] + "-", label=f"{stage} ({slope})", lw=1.2, ms=3.5,
                          color=colours[(2 * i) % 20 if i < 10 else 2 * (i - 10) + 1])
        ex = f.get("extrapolated", {})
        if ex:
            ax.plot([f["n"][-1], *map(int, ex)], [f["work_s"][-1], *ex.values()], ":", color=line.get_color())
    ax.set(xscale="log", yscale="log", xlabel="images (N)", ylabel="work time (s, imports excluded)",
           title="Cost per stage (dotted: extrapolated; legend: slope from 10k)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
