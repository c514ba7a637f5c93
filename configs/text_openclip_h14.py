"""OpenCLIP ViT-H-14 text tower (laion2b_s32b_b79k) as VideoCrafter2 uses it (layer 'penultimate')."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.vocab_size = 49408
    c.context_length = 77
    c.width = 1024
    c.heads = 16
    c.layers = 24
    c.mlp_dim = 4096
    c.act = "gelu"
    c.layer_norm_eps = 1e-5
    c.output_dim = 1024
    c.layer = "penultimate"
    # None: the end token is found by argmax over ids (OpenCLIP); an int: its first occurrence.
    c.eot_token_id = None
    c.pad_token_id = 0  # open_clip.tokenize pads with zeros
    return c
