"""Small layers shared by the project's models."""
import flax.linen as nn
import jax
import jax.numpy as jnp


class GroupNorm32(nn.Module):
    """GroupNorm computed in float32 (params ``scale``, ``bias``), cast back to the input dtype."""

    num_groups: int = 32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels not divisible by {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        h = x.astype(jnp.float32)
        shape = h.shape
        h = h.reshape(shape[:-1] + (self.num_groups, c // self.num_groups))
        axes = tuple(range(1, h.ndim - 2)) + (h.ndim - 1,)
        mean = h.mean(axis=axes, keepdims=True)
        var = jnp.square(h - mean).mean(axis=axes, keepdims=True)
        h = ((h - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(shape)
        return (h * scale + bias).astype(x.dtype)
