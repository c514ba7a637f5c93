"""A tiny sweep for tests: 2 prompts x 3 methods x 1 frame count x 2 seeds = 12 runs."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "tiny"
    c.run_fn = "vstar_jax.sweep.generate_and_score"
    c.checkpoint = ""
    c.prompts = ["a square moves right", "a square moves down"]
    c.prompts_file = ""
    c.prompts_tfds = ml_collections.ConfigDict(
        {"name": "", "data_dir": "", "split": "train", "key": "caption", "limit": 0}
    )
    c.methods = ml_collections.ConfigDict(
        {
            "plain": {"tar": None},
            "tar_64D1": {"tar": "64D1"},
            "vsp": {"synopsis": ["{prompt}, slowly", "{prompt}, fast"]},
        }
    )
    c.frames = [8]
    c.seeds = [0, 1]
    c.generate = ml_collections.ConfigDict({"steps": 2, "progress": False, "record_attention": True})
    c.metrics = ml_collections.ConfigDict(
        {"flow_model": "dis-fast", "mawe_size": (64, 64), "clip_checkpoint": "", "fps": 8.0}
    )
    c.fake_sleep = 0.0  # used by the tests' fake run_fn only
    c.write_videos = False  # likewise
    c.run_fn_keys = ["fake_sleep", "write_videos"]  # declared, so they are not taken for typos
    return c
