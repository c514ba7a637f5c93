"""Generation as stages: request (validate/plan) -> encode -> sample -> decode/write -> sidecar.

``vstar_jax.pipeline`` composes them into ``generate_video``; batched, sharded and multi-host
paths reuse the same stages.
"""
