"""Sweep over the embedded default model: plain vs two TAR presets vs VSP (vstar-jax sweep).

    vstar-jax sweep configs/sweep_demo.py --out benchmarks/sweep_demo && vstar-jax report benchmarks/sweep_demo

Prompts are captions of the demo model's procedural world (vstar_jax/demo/world.py); VSP uses
each caption's visual states (world.synopsis). The model was trained on 8-frame clips, so 16
and 32 frames are 2x and 4x its trained length.
"""
import ml_collections

PROMPTS = {
    "a red circle moves to the right, then turns green": [
        "a red circle moves to the right", "a red circle turns green"],
    "a blue square grows, then moves down": ["a blue square grows", "a blue square moves down"],
    "a yellow triangle moves to the left, then shrinks": [
        "a yellow triangle moves to the left", "a yellow triangle shrinks"],
}


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "demo"
    c.run_fn = "vstar_jax.sweep.generate_and_score"
    c.checkpoint = ""  # "" = the embedded default model
    c.prompts = list(PROMPTS)
    c.synopses = dict(PROMPTS)
    c.prompts_file = ""  # optional: one prompt a line
    c.prompts_tfds = ml_collections.ConfigDict(
        {"name": "", "data_dir": "", "split": "train", "key": "caption", "limit": 0}
    )
    c.methods = ml_collections.ConfigDict(
        {
            "plain": {"tar": None},
            "tar_64D1": {"tar": "64D1"},
            "tar_64D1_32D8": {"tar": "64D1_32D8"},
            "vsp": {"synopsis": "per_prompt", "vsp_mode": "linear"},
        }
    )
    c.frames = [8, 16, 32]
    c.seeds = [0, 1]
    # shared generate_video arguments (steps, cfg, eta, fps: the model's defaults when absent);
    # record_attention keeps the temporal attention maps for the band score
    c.generate = ml_collections.ConfigDict({"progress": False, "record_attention": True})
    c.metrics = ml_collections.ConfigDict(
        {"flow_model": "dis", "mawe_size": (720, 720), "clip_checkpoint": "", "fps": 8.0}
    )
    return c
