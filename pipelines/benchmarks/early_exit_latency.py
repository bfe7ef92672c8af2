"""ECO-M2F CPU latency: a gated batch with mixed exits next to every fixed exit, in one run.

``python -m pipelines.benchmarks.early_exit_latency [CONFIG] [--batch 5] [--shape H W]``

One model (random weights, eval, ``no_grad``), one batch of random images. The gate is a real
:class:`~pipelines.models.early_exit.ExitGate` whose weights are solved (least squares on this
batch's pooled res5 tokens) so that image ``i`` picks the ``i``-th exit of ``--exits`` (default:
one image per exit). Timed, interleaved in one loop (``pipelines.stages.timing.interleaved``, the order
alternating every round):

* ``gated``: the gate picks the exits and each encoder layer runs once over the images still
  active at that depth;
* ``exit<k>``: the whole batch at fixed exit ``k`` (the ladder);
* ``padded``: the whole batch to the deepest picked exit (what running a mixed batch without
  per-image exits costs).

Reported per part (``pixel_decoder`` on fixed backbone features; ``model`` the whole inference):
medians, and the ratios gated / deepest exit, gated / padded and gated / ideal, where ideal is
the mean of the fixed-exit medians over the picked exits (a batch that split perfectly).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

DEFAULT_CONFIG = "configs/models/mask2former_r18_ecom2f_synthetic-128x128.py"


def steer_gate(gate, pooled, picks):
    """Set ``gate``'s weights so that row ``i`` of ``pooled`` gets the logit max at ``picks[i]``."""
    import torch

    target = torch.full((pooled.shape[0], gate.fc.out_features), -10.0)
    target[torch.arange(len(picks)), torch.tensor(picks)] = 10.0
    with torch.no_grad():
        x = torch.cat((pooled, torch.ones(len(picks), 1)), 1)
        sol = torch.linalg.lstsq(x, target).solution  # (C + 1, exits)
        gate.fc.weight.copy_(sol[:-1].T)
        gate.fc.bias.copy_(sol[-1])


def measure(config: str, batch: int, shape, exits_arg, repeats: int, warmup: int) -> dict:
    import torch

    import pipelines.registry  # noqa: F401
    from pipelines.config import load_config
    from pipelines.models.early_exit import ExitGate, forced_exits
    from pipelines.registry import build_model
    from pipelines.stages.flops import input_shape
    from pipelines.stages.timing import interleaved, make_timer, paired_ratio, summarize

    cfg = load_config(config)
    image_hw = input_shape(cfg, shape)
    model = build_model(cfg)
    pd = model.decode_head.pixel_decoder
    exits = list(pd.exits)
    wanted = exits_arg or exits
    if len(wanted) != batch:
        wanted = [exits[i * len(exits) // batch] for i in range(batch)]
    torch.manual_seed(0)
    img = torch.randn(batch, 3, *image_hw)
    with torch.no_grad():
        feats = [f.detach() for f in model.extract_feat(img)]
        tokens, *_ = pd._encoder_tokens(feats)
        pd.gate = ExitGate(in_channels=tokens[0].shape[-1], num_exits=len(exits))
        steer_gate(pd.gate, ExitGate.pool(tokens[0]), [exits.index(k) for k in wanted])
        with forced_exits(pd, "gate"):
            pd(feats)
        picked = list(pd.last_exits)
    metas = [dict(img_shape=image_hw, pad_shape=image_hw, ori_shape=image_hw)] * batch

    def run(exits_choice, part):
        def call():
            with forced_exits(pd, exits_choice):
                if part == "pixel_decoder":
                    return pd(feats)
                return model.decode_head.predict(model.extract_feat(img), metas, model.test_cfg)
        return call

    settings = {"gated": "gate", **{f"exit{k}": k for k in exits}, "padded": max(picked)}
    calls = {f"{name}/{part}": run(choice, part) for part in ("pixel_decoder", "model")
             for name, choice in settings.items()}
    with torch.no_grad():
        times = interleaved(calls, repeats, warmup, make_timer("cpu"))
    doc = {"config": config, "shape": list(image_hw), "batch": batch, "picked_exits": picked,
           "torch_threads": torch.get_num_threads(), "repeats": repeats, "parts": {}}
    for part in ("pixel_decoder", "model"):
        med = {name: summarize(times[f"{name}/{part}"])["median_ms"] for name in settings}
        ideal = statistics.mean(med[f"exit{k}"] for k in picked)
        gated = times[f"gated/{part}"]
        doc["parts"][part] = {
            "median_ms": med, "ideal_ms": ideal,
            "ratio_gated_to_deepest": paired_ratio(gated, times[f"exit{exits[-1]}/{part}"]),
            "ratio_gated_to_padded": paired_ratio(gated, times[f"padded/{part}"]),
            "ratio_gated_to_ideal": med["gated"] / ideal}
    return doc


def format_doc(doc: dict) -> str:
    lines = [f"{doc['config']}  batch {doc['batch']} at {doc['shape'][0]}x{doc['shape'][1]}, "
             f"CPU, {doc['torch_threads']} threads, {doc['repeats']} interleaved runs; gate "
             f"picked exits {doc['picked_exits']}"]
    for part, p in doc["parts"].items():
        lines.append(f"{part}: " + ", ".join(f"{n} {v:.1f} ms" for n, v in p["median_ms"].items()))
        lines.append(f"  gated / deepest exit {p['ratio_gated_to_deepest']:.3f}   gated / padded "
                     f"{p['ratio_gated_to_padded']:.3f}   gated / ideal ({p['ideal_ms']:.1f} ms) "
                     f"{p['ratio_gated_to_ideal']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--exits", type=int, nargs="+", help="exit per image (default: spread)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    doc = measure(args.config, args.batch, args.shape, args.exits, args.repeats, args.warmup)
    print(format_doc(doc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
