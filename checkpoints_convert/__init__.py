"""Checkpoint converters (``vstar-jax convert LAYOUT ...``) and the user's check (``vstar-jax verify``)."""

_PKG = "vstar_jax.checkpoints_convert"
LAYOUTS = {
    "videocrafter2": (f"{_PKG}.videocrafter2", "VideoCrafter2 model.ckpt + its inference YAML (lvdm)"),
    "diffusers": (f"{_PKG}.diffusers", "diffusers text-to-video folder (ModelScope UNet3DConditionModel)"),
    "streamingt2v": (f"{_PKG}.streamingt2v", "StreamingT2V streaming_t2v.ckpt (CAM + APM) + its ModelScope folder"),
    "msvid2vid": (f"{_PKG}.msvid2vid", "MS-Vid2Vid-XL UNet (StreamingT2V's refiner) + a ModelScope folder's VAE / text"),
}


def convert_help() -> str:
    """``vstar-jax convert --help``: every source layout with its options."""
    import importlib

    parts = ["usage: vstar-jax convert {" + ",".join(LAYOUTS) + "} ...", "",
             "Convert a PyTorch checkpoint into a vstar-jax (orbax) checkpoint. Layouts:"]
    parts += [f"  {name:<14} {what}" for name, (_, what) in LAYOUTS.items()]
    parts += ["", "Check a conversion afterwards with: vstar-jax verify CKPT_DIR --source SOURCE", ""]
    for name, (module, _) in LAYOUTS.items():
        try:
            text = importlib.import_module(module).build_parser().format_help()
        except ImportError as e:
            text = f"vstar-jax convert {name}: not available ({e})\n"
        parts += ["=" * 72, text]
    return "\n".join(parts)
