"""Per-exit GFLOPs of ECO-M2F configs: traced (``pipelines.stages.flops``) next to the analytic count.

``python -m pipelines.benchmarks.early_exit_flops CONFIG [--shape H W] [--json OUT]`` builds the
model once (random weights), traces the whole inference at every exit (``test_exit=k``) and
evaluates :func:`pipelines.stages.cost_model.pixel_decoder_flops_from_cfg` for the same exit; it prints a
markdown table (the one in ``pipelines/models/README.md``) and fails if the two counts differ.
"""
from __future__ import annotations

import argparse
import json
import sys


def exit_table(config: str, shape=None) -> dict:
    import pipelines.registry  # noqa: F401
    from pipelines.config import load_config
    from pipelines.models.early_exit import forced_exits
    from pipelines.registry import build_model
    from pipelines.stages.flops import flops_report, input_shape

    cfg = load_config(config)
    image_hw = input_shape(cfg, shape)
    model = build_model(cfg)
    pd = model.decode_head.pixel_decoder
    rows = []
    for k in pd.exits:
        cfg.model.decode_head.pixel_decoder.test_exit = k
        with forced_exits(pd, k):
            rep = flops_report(cfg, image_hw, model=model)
        rows.append(dict(exit=k, **{f"traced_{p}": rep["gflops"][p]
                                    for p in ("encoder", "pixel_decoder", "total")},
                         **{f"analytic_{p}": rep["analytic_gflops"][p]
                            for p in ("encoder", "pixel_decoder")}))
    return dict(config=config, shape=list(image_hw), rows=rows)


def markdown(table: dict) -> str:
    full = table["rows"][-1]
    lines = [f"`{table['config']}` at {table['shape'][0]}x{table['shape'][1]}", "",
             "| exit | encoder GF (analytic) | pixel decoder GF (analytic) | total GF | "
             "total vs last exit |", "|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(f"| {r['exit']} | {r['traced_encoder']:.2f} ({r['analytic_encoder']:.2f}) | "
                     f"{r['traced_pixel_decoder']:.2f} ({r['analytic_pixel_decoder']:.2f}) | "
                     f"{r['traced_total']:.2f} | "
                     f"{100 * r['traced_total'] / full['traced_total']:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config")
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--json")
    args = p.parse_args(argv)
    table = exit_table(args.config, args.shape)
    print(markdown(table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    bad = [r["exit"] for r in table["rows"]
           if any(abs(r[f"traced_{p}"] - r[f"analytic_{p}"]) > 1e-9 * max(1, r[f"traced_{p}"])
                  for p in ("encoder", "pixel_decoder"))]
    if bad:
        print(f"traced and analytic GFLOPs differ at exits {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
