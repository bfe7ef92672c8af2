"""A gated run's section of the ablation report (``python -m pipelines report``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List


def report_lines(run_id: str, metrics_json) -> List[str]:
    """Markdown of one gated run for ``python -m pipelines report``: exit histogram, mean exit,
    the ladder (every fixed exit) and the oracle next to the gated model, from its metrics JSON;
    nothing for another run (or a missing or failed evaluation)."""
    try:
        evaluation = json.loads(Path(metrics_json).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(evaluation, dict) or "ladder" not in evaluation:
        return []
    hist = ", ".join(f"{k}: {n}" for k, n in evaluation.get("exit_histogram", {}).items())
    lines = [f"### `{run_id}` (beta {evaluation.get('beta')})", "",
             f"exit histogram (exit after encoder layer: images) {hist}; mean exit "
             f"{evaluation.get('mean_exit', float('nan')):.2f}", "",
             "| model | mIoU | mean GFLOPs total | mean GFLOPs pixel dec. | mean exit |",
             "|---|---|---|---|---|"]

    def row(name, m, mean_exit):
        return (f"| {name} | {m.get('miou', float('nan')):.2f} | "
                f"{m.get('gflops_total', float('nan')):.3f} | "
                f"{m.get('gflops_pixel_decoder', float('nan')):.3f} | {mean_exit:.2f} |")

    lines.append(row("gated", evaluation, evaluation.get("mean_exit", float("nan"))))
    lines.append(row("oracle", evaluation.get("oracle", {}),
                     evaluation.get("oracle", {}).get("mean_exit", float("nan"))))
    lines += [row(f"ladder: exit {r['exit']}", r, float(r["exit"]))
              for r in evaluation["ladder"]]
    return lines + [""]
