"""Sweep over the embedded default model: plain vs two TAR presets vs VSP (vstar-jax sweep)."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "demo"
    c.run_fn = "vstar_jax.sweep.generate_and_score"
    c.checkpoint = ""  # "" = the embedded default model
    c.prompts = [
        "a red ball rolls across a green field",
        "a white boat sails on a blue lake",
    ]
    c.prompts_file = ""  # optional: one prompt a line
    c.prompts_tfds = ml_collections.ConfigDict(
        {"name": "", "data_dir": "", "split": "train", "key": "caption", "limit": 0}
    )
    c.methods = ml_collections.ConfigDict(
        {
            "plain": {"tar": None},
            "tar_64D1": {"tar": "64D1"},
            "tar_64D1_32D8": {"tar": "64D1_32D8"},
            "vsp": {
                "synopsis": ["{prompt}, at the start", "{prompt}, halfway", "{prompt}, at the end"],
                "vsp_mode": "linear",
            },
        }
    )
    c.frames = [16, 32]
    c.seeds = [0, 1, 2]
    # shared generate_video arguments (steps, cfg, eta, fps: the model's defaults when absent);
    # record_attention keeps the temporal attention maps for the band score
    c.generate = ml_collections.ConfigDict({"progress": False, "record_attention": True})
    c.metrics = ml_collections.ConfigDict(
        {"flow_model": "dis", "mawe_size": (720, 720), "clip_checkpoint": "", "fps": 8.0}
    )
    return c
