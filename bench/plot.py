"""Plot of the ratios (matplotlib, written as PNG): ``python -m bench.plot results.json out.png``."""

from __future__ import annotations

import json
import pathlib
import sys


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [row for row in results.get("ratios", []) if row.get("ours_s") is not None]
    targets = [row for row in results.get("targets", []) if row.get("score") is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, max(4.5, 0.42 * max(len(targets), 2 * len(ratios)) + 1.5)))

    labels = [f"{row['input']} ({row['kind']})" for row in ratios]
    series = (("vs_whole", "ours / whole video", "#4c72b0"), ("vs_floor", "ours / plain audio file", "#55a868"),
              ("stored_vs_floor", "from the rendition store / plain audio file", "#8172b2"),
              ("vs_ffmpeg", "ours / ffmpeg -vn -c:a copy", "#c44e52"))
    height = 0.2
    for offset, (key, name, color) in enumerate(series):
        ys = [index + (offset - 1.5) * height for index in range(len(ratios))]
        values = [row.get(key) or 0 for row in ratios]
        left.barh(ys, values, height=height, label=name, color=color)
    left.axvline(1.0, color="black", linewidth=1)
    left.set_xscale("log")
    left.set_yticks(range(len(ratios)), labels)
    left.invert_yaxis()
    left.set_xlabel("time ratio (log; < 1: ours is faster)")
    left.set_title("Flagged download vs the alternatives")
    left.legend(loc="lower right", fontsize=8)

    scores = [row["score"] for row in targets]
    colors = ["#55a868" if row["ok"] else "#c44e52" for row in targets]
    right.barh(range(len(targets)), scores, color=colors)
    right.axvline(1.0, color="black", linewidth=1)
    right.set_xscale("log")
    right.set_yticks(range(len(targets)), [row["id"] for row in targets], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("ours vs goal (log; <= 1 meets the target)")
    right.set_title("Issue targets")

    machine = (results.get("meta") or {}).get("machine") or {}
    fig.suptitle(f"audio_middleware benchmark ({(results.get('meta') or {}).get('set')} inputs, "
                 f"{machine.get('cores')} cores, {machine.get('cpu')})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    source = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("results.json"))
    plot(json.loads(source.read_text()), pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else
                                                        source.with_name("ratios.png")))
