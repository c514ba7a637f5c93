"""CLIP score: per-frame text-image similarity, averaged over the frames.

score = mean over frames of 100 * cos(image embedding of the frame, text embedding of the prompt)
(CLIPSIM; no clamping at zero). The image tower is ``vstar_jax.models.clip_vision``, the text
tower ``vstar_jax.models.text`` (its projected end-token output); weights come from a
transformers ``CLIPModel`` or an OpenCLIP checkpoint via ``vstar_jax.checkpoints_convert.clip``.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from vstar_jax.compile_options import jit
from vstar_jax.io.checkpoint import load_checkpoint
from vstar_jax.models.clip_vision import CLIPVisionTransformer, preprocess
from vstar_jax.models.text import TextTransformer
from vstar_jax.models.tokenizer import get_tokenizer


def _normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class ClipScorer:
    """CLIP image and text towers with their params; ``score(video, prompt) -> float``."""

    def __init__(self, vision_config, vision_params, text_config, text_params, tokenizer=None, batch: int = 16):
        if not text_config.output_dim or text_config.output_dim != vision_config.output_dim:
            raise ValueError(
                f"text projection {text_config.output_dim} does not match image projection {vision_config.output_dim}"
            )
        self.vision_config, self.text_config = vision_config, text_config
        self.vision_params, self.text_params = vision_params, text_params
        self.tokenizer = tokenizer or get_tokenizer(pad_token_id=int(text_config.get("pad_token_id", 0) or 0))
        self.batch = int(batch)
        vision = CLIPVisionTransformer(vision_config)
        text = TextTransformer(text_config)
        self._image = jit(lambda p, x: vision.apply({"params": p}, x))
        self._text = jit(lambda p, t: text.apply({"params": p}, t, return_pooled=True)[1])

    @classmethod
    def from_converted(cls, params: dict, configs: dict, **kw) -> "ClipScorer":
        """From ``vstar_jax.checkpoints_convert.clip`` output: params/configs keyed clip_vision, clip_text."""
        cfg = {k: configs[k] if isinstance(configs[k], ml_collections.ConfigDict)
               else ml_collections.ConfigDict(dict(configs[k])) for k in ("clip_vision", "clip_text")}
        return cls(cfg["clip_vision"], params["clip_vision"], cfg["clip_text"], params["clip_text"], **kw)

    @classmethod
    def load(cls, path: str, **kw) -> "ClipScorer":
        """From a checkpoint written by ``python -m vstar_jax.checkpoints_convert.clip``."""
        params, config = load_checkpoint(path)
        if "clip_vision" not in params or "clip_text" not in params:
            raise ValueError(f"{path} is not a CLIP checkpoint (needs clip_vision and clip_text)")
        return cls.from_converted(params, config, **kw)

    def image_embeddings(self, frames: np.ndarray) -> np.ndarray:
        """Unit-norm image embeddings (n, d) of uint8 (n, H, W, 3) frames."""
        pixels = preprocess(frames, self.vision_config.image_size)
        out = [np.asarray(self._image(self.vision_params, jnp.asarray(pixels[i:i + self.batch])))
               for i in range(0, len(pixels), self.batch)]
        return _normalize(np.concatenate(out))

    def text_embeddings(self, prompts) -> np.ndarray:
        """Unit-norm text embeddings (n, d) of prompts."""
        tokens = np.asarray(self.tokenizer(prompts, self.text_config.context_length))
        return _normalize(self._text(self.text_params, jnp.asarray(tokens)))

    def frame_scores(self, video: np.ndarray, prompt: str) -> np.ndarray:
        """100 * cosine similarity of every frame with the prompt: (F,)."""
        return 100.0 * self.image_embeddings(video) @ self.text_embeddings([prompt])[0]

    def score(self, video: np.ndarray, prompt: str) -> float:
        """The CLIP score of a video: the mean of ``frame_scores``."""
        return float(self.frame_scores(video, prompt).mean())
