"""Check a converted checkpoint against its source: ``vstar-jax verify CKPT_DIR --source SOURCE``.

    vstar-jax verify ckpt/modelscope --source path/to/text-to-video-ms-1.7b
    vstar-jax verify ckpt/vc2 --source model.ckpt --config inference_t2v_512_v2.0.yaml

* diffusers folder: builds the PyTorch models from the folder (torch + diffusers/transformers, CPU,
  float32; when the checkpoint was stored in bfloat16/float16 the PyTorch weights are rounded to that
  dtype first, so the check sees the conversion, not the rounding), runs both on the same random inputs
  at a small shape and prints each component's max error relative to max |reference|: PASS at <= 1e-4
  (the project's parity tolerance). UNet: one call on (1, in, 2 frames, small h, w); VAE: decode and
  encode; text encoder: last hidden state of random token ids.
* VideoCrafter2 ``model.ckpt`` (+ its YAML; default: the one recorded at conversion): every source
  tensor is taken through the converter's key plan and compared with the converted array (names, shapes,
  values; all must be equal), then each component runs a forward pass on random inputs (finite outputs).
* StreamingT2V ``streaming_t2v.ckpt`` (a checkpoint converted by ``convert streamingt2v``): the UNet
  with CAM + APM and the image encoder the same way (key plan, equal arrays, finite forward); the VAE
  and text encoder against the ModelScope folder recorded at conversion, as for a diffusers folder.
* A VAE with VidRD's temporal decoder layers (``convert --vae-temporal``, or a fine-tuned decoder from
  ``launch/train_temporal_decoder.py``): the image part is checked as above (the source has no temporal
  layers); the temporal arrays are counted and reported as zero-initialised (the decoder is then the
  source's image decoder) or fine-tuned, and must be finite, as the forward pass with them.

Exit status 0 only if every component passes; 1 if one fails; 2 on bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, List, Optional, Sequence

import numpy as np

from vstar_jax.checkpoints_convert.clip import openclip_vision_plan
from vstar_jax.checkpoints_convert.common import TRANSFORMS, PrefixView, flatten, load_state_dict
from vstar_jax.checkpoints_convert.streamingt2v import IMAGE_PREFIXES, plan_streamingt2v
from vstar_jax.checkpoints_convert.text import openclip_plan, openclip_text_config_from_state_dict
from vstar_jax.checkpoints_convert.unet import plan_unet_lvdm, unet_config_from_lvdm
from vstar_jax.checkpoints_convert.vae import ldm_plan, vae_config_from_ldm
from vstar_jax.checkpoints_convert.videocrafter2 import PREFIXES, read_yaml
from vstar_jax.compile_options import jit
from vstar_jax.io.checkpoint import load_checkpoint, read_config
from vstar_jax.models.clip_vision import CLIPVisionTransformer
from vstar_jax.models.streaming import build_unet
from vstar_jax.models.temporal_decoder import merge_params, split_temporal, temporal_settings, without_temporal
from vstar_jax.models.text import TextTransformer
from vstar_jax.models.unet3d import unet_num_levels
from vstar_jax.models.vae import AutoencoderKL, vae_param_shapes

TOL = 1e-4


@dataclasses.dataclass
class Result:
    component: str
    ok: bool
    summary: str
    details: List[str] = dataclasses.field(default_factory=list)


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.abs(want).max())
    return float(np.abs(got - want).max() / (scale if scale > 0 else 1.0))


def _f32_config(cfg):
    """The stored component config with float32 compute (the check compares in float32)."""
    import ml_collections

    c = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    for key in ("dtype", "param_dtype"):
        if key in c:
            setattr(c, key, "float32")
    if "attention_backend" in c:
        c.attention_backend = "xla"
    return c


def _f32(tree):
    import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)


def _stored_dtype(tree):
    import jax

    leaves = jax.tree_util.tree_leaves(tree)
    return np.asarray(leaves[0]).dtype if leaves else np.dtype(np.float32)


def _unet_inputs(cfg, rng, frames: int = 2):
    side = 2 ** (unet_num_levels(cfg) - 1) * 2
    x = rng.standard_normal((1, int(cfg.in_channels), frames, side, side)).astype(np.float32)
    ctx = rng.standard_normal((1, 8, int(cfg.context_dim))).astype(np.float32)
    return x, np.array([500]), ctx


_JITTED: dict = {}


def _jitted(kind: str, cfg, make: Callable):
    """One compiled function per (kind, config): a second verify of the same model reuses it."""
    import json

    key = (kind, json.dumps(_f32_config(cfg).to_dict(), sort_keys=True, default=str))
    if key not in _JITTED:
        _JITTED[key] = jit(make(_f32_config(cfg)))
    return _JITTED[key]


def _run_unet(cfg, params, x, t, ctx, fps=None):
    def make(c):
        model = build_unet(c)
        return lambda p, x, t, ctx, fps: model.apply({"params": p}, x, t, ctx, fps=fps)

    return np.asarray(_jitted("unet", cfg, make)(_f32(params), x, t, ctx, fps))


def _run_vae(cfg, params, z=None, image=None):
    p = {"params": _f32(params)}
    out = {}
    if z is not None:
        dec = _jitted("vae.decode", cfg, lambda c: (lambda p, z: AutoencoderKL(c).apply(p, z, method=AutoencoderKL.decode)))
        out["decode"] = np.asarray(dec(p, z))
    if image is not None:
        # the encoder does not depend on the decoder's temporal layers: one compiled encoder for both
        enc = _jitted("vae.encode", without_temporal(cfg),
                      lambda c: (lambda p, x: AutoencoderKL(c).apply(p, x, method=AutoencoderKL.encode)))
        out["encode"] = np.asarray(enc(p, image))
    return out


def _vae_shapes(cfg, rng):
    factor = 2 ** (len(tuple(cfg.ch_mult)) - 1)
    z = rng.standard_normal((1, int(cfg.embed_dim), 4, 4)).astype(np.float32)
    image = rng.uniform(-1, 1, (1, int(cfg.in_channels), 4 * factor, 4 * factor)).astype(np.float32)
    return z, image


def _tokens(rng, vocab: int, bos: int, eos: int, length: int = 77):
    ids = np.zeros((1, length), np.int64)
    n = 6
    ids[0, 0], ids[0, n + 1] = bos, eos
    ids[0, 1:n + 1] = rng.integers(1, min(vocab, 40000), n)
    return ids


def _run_text(cfg, params, tokens):
    run = _jitted("text", cfg, lambda c: (lambda p, t: TextTransformer(c).apply({"params": p}, t)))
    return np.asarray(run(_f32(params), tokens.astype(np.int32)))


def _split_vae(cfg, params):
    """(image config, image params, note, temporal arrays finite) of a VAE; the note describes its
    temporal decoder layers ("" without them)."""
    if temporal_settings(cfg) is None:
        return cfg, params, "", True
    image, temporal = split_temporal(params)
    zero = all(not np.any(np.asarray(v)) for k, v in temporal.items() if k.endswith(("conv/kernel", "proj_out/kernel")))
    finite = all(np.isfinite(np.asarray(v, np.float32)).all() for v in temporal.values())
    note = (f"; {len(temporal)} temporal decoder arrays (VidRD layers, not in the source): "
            f"{'zero-initialised, the decoder is the image decoder' if zero else 'fine-tuned'}"
            f"{'' if finite else ', NOT finite'}")
    return without_temporal(cfg), merge_params(image), note, finite


def _verdict(component: str, errs: dict) -> Result:
    worst = max(errs.values())
    ok = bool(np.isfinite(worst) and worst <= TOL)
    parts = ", ".join(f"{k} {v:.2e}" for k, v in errs.items()) if len(errs) > 1 else ""
    summary = f"max rel err {worst:.2e} (tol {TOL:.0e})" + (f" [{parts}]" if parts else "")
    return Result(component, ok, summary)


# ------------------------------------------------------------------------------ diffusers source


def _round_torch(model, dtype):
    """Round the reference's weights to the checkpoint's stored dtype (bf16/fp16 conversions)."""
    import torch

    tdt = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(dtype))
    if tdt is None:
        return
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(tdt).float())


def _check_diffusers(params, config, source: str, components: Sequence[str], seed: int) -> List[Result]:
    import torch

    results = []
    for comp in components:
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            results.append(_check_diffusers_one(comp, params, config, source, rng))
    return results


def _check_diffusers_one(comp: str, params, config, source: str, rng) -> Result:
    import torch

    try:
        if comp == "unet":
            from diffusers import UNet3DConditionModel

            ref = UNet3DConditionModel.from_pretrained(os.path.join(source, "unet")).float().eval()
            _round_torch(ref, _stored_dtype(params[comp]))
            x, t, ctx = _unet_inputs(config[comp], rng)
            want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
            got = _run_unet(config[comp], params[comp], x, t, ctx)
            return _verdict(comp, {"unet": rel_err(got, want)})
        elif comp == "vae":
            from diffusers import AutoencoderKL

            ref = AutoencoderKL.from_pretrained(os.path.join(source, "vae")).float().eval()
            _round_torch(ref, _stored_dtype(params[comp]))
            z, image = _vae_shapes(config[comp], rng)
            want_dec = ref.decode(torch.from_numpy(z)).sample.numpy()
            want_enc = ref.encode(torch.from_numpy(image)).latent_dist.parameters.numpy()
            cfg, image_params, note, finite = _split_vae(config[comp], params[comp])
            got = _run_vae(cfg, image_params, z, image)
            r = _verdict(comp, {"decode": rel_err(got["decode"], want_dec),
                                "encode": rel_err(got["encode"], want_enc)})
            if note:
                finite = finite and np.isfinite(_run_vae(config[comp], params[comp], z)["decode"]).all()
                r = Result(comp, r.ok and bool(finite), r.summary + note)
            return r
        elif comp == "text":
            from transformers import CLIPTextModel

            ref = CLIPTextModel.from_pretrained(os.path.join(source, "text_encoder")).float().eval()
            _round_torch(ref, _stored_dtype(params[comp]))
            tc = ref.config
            tokens = _tokens(rng, tc.vocab_size, getattr(tc, "bos_token_id", 49406) or 49406,
                             getattr(tc, "eos_token_id", 49407) or 49407, tc.max_position_embeddings)
            want = ref(torch.from_numpy(tokens)).last_hidden_state.numpy()
            got = _run_text(config[comp], params[comp], tokens)
            return _verdict(comp, {"text": rel_err(got, want)})
        else:
            return Result(comp, False, "unknown component: no reference to compare with")
    except Exception as e:  # a component that cannot be built or run fails; the others still run
        return Result(comp, False, f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}")


# ------------------------------------------------------------------------------ VideoCrafter2 source


def _plan_items(plan) -> list:
    """(source key, flax path, transform) from a Plan ({key: (path, kind)}) or MultiPlan ({key: [(path, fn)]})."""
    items = []
    for key, target in plan.items():
        if isinstance(target, list):
            items += [(key, dst, fn) for dst, fn in target]
        else:
            dst, kind = target
            items.append((key, dst, TRANSFORMS[kind]))
    return items


def _vc2_plan(comp: str, sd, mp, stored_cfg):
    if comp == "unet":
        return plan_unet_lvdm(unet_config_from_lvdm(mp["unet_config"]["params"]))
    if comp == "vae":
        fp = mp["first_stage_config"]["params"]
        cfg = vae_config_from_ldm(fp["ddconfig"], embed_dim=fp.get("embed_dim", 4),
                                  scale_factor=float(mp.get("scale_factor", 0.18215)))
        return ldm_plan(vae_param_shapes(cfg))
    if comp == "text":
        view = PrefixView(sd, "cond_stage_model.model.")
        cfg = openclip_text_config_from_state_dict(view, layer=stored_cfg.get("layer", "penultimate"),
                                                   heads=int(stored_cfg["heads"]))
        return openclip_plan(cfg, projection_as_linear="text_projection.weight" in view)
    raise ValueError(f"unknown component {comp!r}")


def _compare_arrays(comp: str, sd, prefix: str, plan, params, cap: int = 10) -> tuple:
    """Every planned source tensor vs its converted array. Returns (n checked, problems)."""
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    problems, seen, n = [], set(), 0
    for key, dst, fn in _plan_items(plan):
        name = "/".join(dst)
        seen.add(tuple(dst))
        if prefix + key not in sd:
            problems.append(f"{prefix}{key}: missing in the source")
            continue
        if tuple(dst) not in flat:
            problems.append(f"{name}: missing in the converted checkpoint (source {prefix}{key})")
            continue
        want = np.asarray(fn(sd[prefix + key]))
        got = flat[tuple(dst)]
        n += 1
        if want.shape != got.shape:
            problems.append(f"{name}: shape {got.shape}, source {prefix}{key} gives {want.shape}")
            continue
        want = want.astype(got.dtype)
        if not np.array_equal(want, got):
            diff = rel_err(got.astype(np.float32), want.astype(np.float32))
            problems.append(f"{name}: values differ from source {prefix}{key} (max rel err {diff:.2e})")
    extra = sorted("/".join(p) for p in flat if p not in seen)
    problems += [f"{name}: converted array with no source tensor in the key plan" for name in extra]
    return n, problems


def _forward_finite(comp: str, params, cfg, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    if comp == "unet":
        x, t, ctx = _unet_inputs(cfg, rng)
        outs = {"unet": _run_unet(cfg, params, x, t, ctx, fps=28 if cfg.get("fps_cond", False) else None)}
    elif comp == "vae":
        outs = _run_vae(cfg, params, *_vae_shapes(cfg, rng))
    elif comp == "image_encoder":
        px = rng.standard_normal((1, int(cfg.image_size), int(cfg.image_size), 3)).astype(np.float32)
        outs = {"image_encoder": np.asarray(CLIPVisionTransformer(cfg).apply({"params": params}, px))}
    else:
        outs = {"text": _run_text(cfg, params, _tokens(rng, int(cfg.vocab_size), 49406, 49407,
                                                       int(cfg.context_length)))}
    bad = [k for k, v in outs.items() if not np.isfinite(v).all()]
    return not bad, ", ".join(f"{k} {tuple(v.shape)}" for k, v in outs.items()), bad


def _key_plan_result(comp: str, sd, prefix: str, plan, params, cfg, seed: int) -> Result:
    """Every planned source tensor equal to its converted array, and a finite forward pass."""
    note, t_finite = "", True
    if comp == "vae":
        _, image_params, note, t_finite = _split_vae(cfg, params)
        n, problems = _compare_arrays(comp, sd, prefix, plan, image_params)
    else:
        n, problems = _compare_arrays(comp, sd, prefix, plan, params)
    finite, shapes, bad = _forward_finite(comp, params, cfg, seed)
    finite = finite and t_finite
    summary = (f"{n} arrays {'equal' if not problems else 'checked'} to the source through the key plan"
               + (f", {len(problems)} problem(s)" if problems else "")
               + f"; forward {'finite' if finite else 'NOT finite: ' + ', '.join(bad)} ({shapes})" + note)
    return Result(comp, not problems and finite, summary, problems)


def _check_vc2(params, config, ckpt: str, yaml_path: str, components: Sequence[str], seed: int,
               trust_pickle: bool) -> List[Result]:
    mp = read_yaml(yaml_path)
    sd = load_state_dict(ckpt, trust_pickle=trust_pickle)
    results = []
    for comp in components:
        try:
            plan = _vc2_plan(comp, sd, mp, config[comp])
            results.append(_key_plan_result(comp, sd, PREFIXES[comp], plan, params[comp], config[comp], seed))
        except Exception as e:
            results.append(Result(comp, False, f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"))
    return results


def _check_streamingt2v(params, config, ckpt: str, components: Sequence[str], seed: int,
                        trust_pickle: bool) -> List[Result]:
    sd = load_state_dict(ckpt, trust_pickle=trust_pickle)
    results = []
    for comp in components:
        try:
            if comp in ("vae", "text"):
                folder = (config.get("source") or {}).get("modelscope")
                if not folder or not os.path.isdir(folder):
                    results.append(Result(comp, False, "no ModelScope folder recorded at conversion to compare with"))
                    continue
                import torch

                with torch.no_grad():
                    results.append(_check_diffusers_one(comp, params, config, folder, np.random.default_rng(seed)))
                continue
            if comp == "unet":
                plan, prefix = plan_streamingt2v(config["unet"]), ""
            elif comp == "image_encoder":
                prefix = next((p for p in IMAGE_PREFIXES[:1] if any(k.startswith(p) for k in sd)), None)
                if prefix is None:
                    results.append(Result(comp, False, f"{ckpt} has no image_encoder.model.visual.* (it came from "
                                                        "--openclip FILE: verify against that file's conversion)"))
                    continue
                plan = openclip_vision_plan(config[comp], prefix="")
            else:
                results.append(Result(comp, False, "unknown component: no reference to compare with"))
                continue
            results.append(_key_plan_result(comp, sd, prefix, plan, params[comp], config[comp], seed))
        except Exception as e:
            results.append(Result(comp, False, f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"))
    return results


# ------------------------------------------------------------------------------ entry points


def source_layout(source: str) -> str:
    if os.path.isdir(source):
        if any(os.path.isdir(os.path.join(source, d)) for d in ("unet", "vae", "text_encoder")):
            return "diffusers"
        raise ValueError(f"{source}: a folder without unet/, vae/ or text_encoder/ (not a diffusers model folder)")
    if os.path.isfile(source):
        return "videocrafter2"
    raise FileNotFoundError(f"source not found: {source}")


def verify(ckpt_dir: str, source: str, *, config_yaml: Optional[str] = None,
           components: Optional[Sequence[str]] = None, seed: int = 0, trust_pickle: bool = False,
           out: Callable[[str], None] = print, cap: int = 10) -> bool:
    """Check ``ckpt_dir`` against ``source``; prints a line per component; True if all pass."""
    config = read_config(ckpt_dir)
    have = list(config.get("components", []))
    comps = list(components) if components else have
    unknown = sorted(set(comps) - set(have))
    if unknown:
        raise ValueError(f"{ckpt_dir} has no component(s) {unknown}; it has {have}")
    layout = source_layout(source)
    params, _ = load_checkpoint(ckpt_dir, components=comps)
    if layout == "diffusers":
        out(f"verify {ckpt_dir} against the diffusers folder {source}: same random inputs through both, "
            f"PASS if max |flax - torch| <= {TOL:.0e} x max |torch|")
        results = _check_diffusers(params, config, source, comps, seed)
    elif (config.get("source") or {}).get("layout") == "streamingt2v":
        out(f"verify {ckpt_dir} against {source}: every source tensor through the key plan must equal its "
            f"converted array, each forward pass be finite; VAE and text against the ModelScope folder "
            f"(max |flax - torch| <= {TOL:.0e} x max |torch|)")
        results = _check_streamingt2v(params, config, source, comps, seed, trust_pickle)
    else:
        yaml_path = config_yaml or (config.get("source") or {}).get("config")
        if not yaml_path or not os.path.isfile(yaml_path):
            raise ValueError(f"{source}: a VideoCrafter2 checkpoint needs its inference YAML (--config)")
        out(f"verify {ckpt_dir} against {source} ({yaml_path}): every source tensor through the key plan "
            f"must equal its converted array; each component's forward pass must be finite")
        results = _check_vc2(params, config, source, yaml_path, comps, seed, trust_pickle)
    width = max(len(r.component) for r in results) if results else 4
    for r in results:
        out(f"  {r.component:<{width}}  {'PASS' if r.ok else 'FAIL'}  {r.summary}")
        for d in r.details[:cap]:
            out(f"      {d}")
        if len(r.details) > cap:
            out(f"      ... and {len(r.details) - cap} more")
    failed = [r.component for r in results if not r.ok]
    out(f"{'FAIL: ' + ', '.join(failed) if failed else 'PASS'} ({len(results) - len(failed)}/{len(results)} "
        f"components pass)")
    return not failed


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vstar-jax verify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt_dir", help="converted checkpoint directory (vstar-jax convert ... --out)")
    ap.add_argument("--source", required=True,
                    help="what it was converted from: a diffusers folder, a VideoCrafter2 model.ckpt or a "
                         "StreamingT2V streaming_t2v.ckpt")
    ap.add_argument("--config", default=None,
                    help="VideoCrafter inference YAML (default: the one recorded at conversion)")
    ap.add_argument("--components", default=None,
                    help="comma list of unet,vae,text,image_encoder (default: all converted)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    ap.add_argument("--trust-pickle", action="store_true", help="allow non-tensor objects in a torch pickle")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    comps = [c for c in a.components.split(",") if c] if a.components else None
    try:
        ok = verify(a.ckpt_dir, a.source, config_yaml=a.config, components=comps, seed=a.seed,
                    trust_pickle=a.trust_pickle)
    except ImportError as e:
        print(f"error: verify needs torch and diffusers: pip install -e '.[convert]' ({e})", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
