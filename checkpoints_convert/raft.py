"""torchvision ``raft_large`` state dict -> Flax params of ``vstar_jax.metrics.raft``.

``python -m vstar_jax.checkpoints_convert.raft raft_large_C_T_SKHT_V2-ff5fadd5.pth OUT`` writes a checkpoint
(component ``raft``) that ``--flow raft:OUT`` / ``get_flow_model("raft:OUT")`` loads. The .pth
file is torchvision's (it cannot be downloaded from here: bring it along).
"""
from __future__ import annotations

import argparse
from typing import Mapping

import numpy as np

from vstar_jax.checkpoints_convert.common import Plan, apply_plan, load_state_dict, p_conv
from vstar_jax.io.checkpoint import save_checkpoint
from vstar_jax.metrics.raft import raft_param_shapes


def _bn(plan: Plan, src: str, dst: tuple):
    for a, b in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")):
        plan[f"{src}.{a}"] = (dst + (b,), "identity")


def _convnorm(plan: Plan, src: str, dst: tuple, batch_norm: bool):
    p_conv(plan, f"{src}.0", dst + ("conv", "conv"))
    if batch_norm:
        _bn(plan, f"{src}.1", dst + ("norm",))


def raft_plan() -> Plan:
    """torchvision key -> (Flax path, layout) for every parameter of raft_large."""
    plan: Plan = {}
    for enc, bn in (("feature_encoder", False), ("context_encoder", True)):
        _convnorm(plan, f"{enc}.convnormrelu", (enc, "convnormrelu"), bn)
        for i in (1, 2, 3):
            for j in (0, 1):
                s, d = f"{enc}.layer{i}.{j}", (enc, f"layer{i}_{j}")
                _convnorm(plan, f"{s}.convnormrelu1", d + ("convnormrelu1",), bn)
                _convnorm(plan, f"{s}.convnormrelu2", d + ("convnormrelu2",), bn)
                if i > 1 and j == 0:
                    _convnorm(plan, f"{s}.downsample", d + ("downsample",), bn)
        p_conv(plan, f"{enc}.conv", (enc, "conv", "conv"))
    ub = "update_block"
    for name in ("convcorr1", "convcorr2", "convflow1", "convflow2", "conv"):
        p_conv(plan, f"{ub}.motion_encoder.{name}.0", (ub, name, "conv"))
    for g in (1, 2):
        for c in "zrq":
            p_conv(plan, f"{ub}.recurrent_block.convgru{g}.conv{c}", (ub, f"convgru{g}", f"conv{c}", "conv"))
    for h in (1, 2):
        p_conv(plan, f"{ub}.flow_head.conv{h}", (ub, f"flow_head{h}", "conv"))
    p_conv(plan, "mask_predictor.convrelu.0", ("mask_predictor", "convrelu", "conv"))
    p_conv(plan, "mask_predictor.conv", ("mask_predictor", "conv", "conv"))
    return plan


def convert_raft(sd: Mapping[str, np.ndarray]) -> dict:
    """Flax params of a torchvision ``raft_large`` state dict (BatchNorm counters ignored)."""
    skip = tuple(k for k in sd if k.endswith("num_batches_tracked"))
    return apply_plan(sd, raft_plan(), raft_param_shapes(), component="RAFT (torchvision raft_large)",
                      ignore_prefixes=skip, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vstar_jax.checkpoints_convert.raft",
                                     description="Convert torchvision's raft_large weights for the flow metrics.")
    parser.add_argument("src", help="torchvision raft_large state dict (.pth or .safetensors)")
    parser.add_argument("out", help="output checkpoint folder")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    params = convert_raft(load_state_dict(args.src))
    save_checkpoint(args.out, {"raft": params}, {"raft": {"model": "raft_large", "source": "torchvision"}},
                    overwrite=args.overwrite, sources=[args.src])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
