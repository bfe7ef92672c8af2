"""``train-gate``: the exit gate of one beta, trained on a derived table's stored features (the
parent model is not loaded); and reading a trained gate back (see :mod:`pipelines.eco_m2f`)."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Sequence

from pipelines.config import ensure_writable_dir, load_config, write_json_atomic
from pipelines.eco_m2f.model import histogram, load_exit_model
from pipelines.eco_m2f.table import check_same_model, features_path, read_table
from pipelines.errors import UserError


def quality_matrix(df, exits: Sequence[int]):
    """``(image_ids, (N, exits) quality tensor)`` from the long table."""
    import torch

    wide = df.pivot(index="image_id", columns="exit", values="quality")
    missing = [k for k in exits if k not in wide.columns]
    if missing or wide.isna().any().any():
        raise UserError(f"derived table is incomplete: exits {missing or 'some'} missing for "
                        "some images; derive it again")
    wide = wide[list(exits)]
    return list(wide.index), torch.tensor(wide.to_numpy(), dtype=torch.float32)


def fit_gate(features, labels, num_exits: int, epochs: int, lr: float, weight_decay: float,
             seed: int):
    """``ExitGate`` trained full-batch with Adam on cross-entropy; returns (gate, accuracy)."""
    import torch
    import torch.nn.functional as F

    from pipelines.models.early_exit import ExitGate

    torch.manual_seed(seed)
    gate = ExitGate(in_channels=features.shape[1], num_exits=num_exits)
    opt = torch.optim.Adam(gate.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = F.cross_entropy(gate.fc(features), labels)
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = float((gate.fc(features).argmax(1) == labels).float().mean())
    return gate, accuracy, float(loss.detach())


def gate_settings(args) -> dict:
    settings = dict(beta=None, lr=0.01, weight_decay=1e-4, epochs=300, seed=0)
    if args.config:
        cfg = load_config(args.config, getattr(args, "cfg_options", None))
        settings.update({k: v for k, v in dict(cfg.get("exit_gate", {}) or {}).items()
                         if k in settings})
    for key in ("beta", "epochs", "lr"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    beta = settings["beta"]
    if beta is None:
        raise UserError("no beta: pass --beta or a --config with exit_gate.beta")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise UserError(f"beta must be a finite number >= 0, got {beta!r}")
    if int(settings["epochs"]) < 1 or not float(settings["lr"]) > 0:
        raise UserError(f"epochs must be >= 1 and lr > 0, got {settings['epochs']}, "
                        f"{settings['lr']}")
    return settings


def run(args: argparse.Namespace) -> int:
    import torch

    from pipelines.models.early_exit import gate_labels

    settings = gate_settings(args)
    table = Path(args.table)
    df, meta = read_table(table)
    feats_df, feats_meta = read_table(features_path(table, args.features), "gate features file")
    if feats_meta.get("model_hash") != meta.get("model_hash"):
        raise UserError(f"{features_path(table, args.features)} and {table} come from "
                        "different models; derive them again together")
    if args.checkpoint:
        if not args.config:
            raise UserError("--checkpoint needs --config (to build the model it is hashed on)")
        ns = argparse.Namespace(config=args.config, checkpoint=args.checkpoint, batch_size=1,
                                cfg_options=list(getattr(args, "cfg_options", None) or []),
                                data_root=None)
        check_same_model(meta, load_exit_model(ns)[2], "derived table", table)
    out = Path(args.out)
    ensure_writable_dir(out.parent, "output folder")
    exits = list(meta["exits"])
    ids, quality = quality_matrix(df, exits)
    by_id = dict(zip(feats_df["image_id"], feats_df["feature"]))
    if set(by_id) != set(ids):
        raise UserError(f"{table} and its features file list different images")
    features = torch.tensor([list(by_id[i]) for i in ids], dtype=torch.float32)
    labels = gate_labels(quality, exits, float(settings["beta"]))
    gate, accuracy, loss = fit_gate(features, labels, len(exits), int(settings["epochs"]),
                                    float(settings["lr"]), float(settings["weight_decay"]),
                                    int(settings["seed"]))
    label_exits = [exits[i] for i in labels.tolist()]
    summary = dict(beta=float(settings["beta"]), model_hash=meta["model_hash"], exits=exits,
                   images=len(ids), label_histogram=histogram(label_exits, exits),
                   label_mean_exit=sum(label_exits) / len(label_exits),
                   train_accuracy=accuracy, train_loss=loss,
                   settings={k: v for k, v in settings.items() if k != "beta"},
                   table=str(table))
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save({"state_dict": gate.state_dict(), "meta": summary}, tmp)
    os.replace(tmp, out)
    if args.json:
        write_json_atomic(args.json, summary)
    print(f"beta {summary['beta']}: labels {summary['label_histogram']}, training accuracy "
          f"{accuracy:.3f} -> {out}")
    return 0


def load_gate(path: Path, pixel_decoder, expected_hash: str):
    import torch

    from pipelines.models.early_exit import ExitGate

    if not path.is_file():
        raise UserError(f"gate not found: {path} (train it with `python -m pipelines "
                        "train-gate`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta, state = blob["meta"], blob["state_dict"]
    except (Exception,) as err:  # noqa: BLE001 - any unreadable file is the user's
        raise UserError(f"{path} is not a gate of train-gate: {type(err).__name__}") from None
    check_same_model(meta, expected_hash, "gate", path)
    if list(meta["exits"]) != list(pixel_decoder.exits):
        raise UserError(f"gate {path} has exits {meta['exits']}, the model "
                        f"{list(pixel_decoder.exits)}")
    gate = ExitGate(in_channels=state["fc.weight"].shape[1], num_exits=len(meta["exits"]))
    gate.load_state_dict(state)
    return gate.eval(), meta
