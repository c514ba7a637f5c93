"""Small layers shared by the project's models."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_norm_stats(x: jax.Array, num_groups: int):
    """Per-(sample, channel) mean and variance of channels-last ``x`` (n, ..., c) over its group.

    One fused float32 pass: sum and sum of squares of ``x - shift`` over every axis but the first and
    last (XLA CPU reduces a (n, P, c) view over P efficiently, unlike the (n, ..., G, c/G) view over
    three non-adjacent axes it had before: ~10x faster). ``shift`` is each group's first value, so
    var = E[(x-s)^2] - E[x-s]^2 does not cancel catastrophically when the mean is large against the
    spread (measured: 1.5e-5 max error at mean 300, std 2, vs 2e-4 for the old two-pass code and
    1.6e-2 for an unshifted one-pass). Returns (mean, var), each (n, c), float32."""
    n, c = x.shape[0], x.shape[-1]
    cg = c // num_groups
    xf = x.astype(jnp.float32)
    # reduced over the middle axes as they are (not a (n, -1, c) view): on a device mesh a reshape that
    # merges a split axis (the temporal layers' pixels) would gather the whole activation
    mid = tuple(range(1, x.ndim - 1))
    first = xf[(slice(None),) + (0,) * len(mid)]  # (n, c): each sample's first position
    shift = jax.lax.stop_gradient(jnp.repeat(first[:, ::cg], cg, axis=1))  # (n, c)
    d = xf - shift.reshape((n,) + (1,) * len(mid) + (c,))
    count = math.prod(x.shape[1:-1]) * cg
    s1 = d.sum(axis=mid).reshape(n, num_groups, cg).sum(-1) / count
    s2 = (d * d).sum(axis=mid).reshape(n, num_groups, cg).sum(-1) / count
    var = jnp.maximum(s2 - s1 * s1, 0.0)
    mean = jnp.repeat(s1, cg, axis=1) + shift
    return mean, jnp.repeat(var, cg, axis=1)


class GroupNorm32(nn.Module):
    """GroupNorm computed in float32 (params ``scale``, ``bias``), cast back to the input dtype.

    Channels-last input of any rank: (n, ..., c), normalised over every axis but the first and
    last within each of ``num_groups`` channel groups (so a (b, f, h, w, c) tensor is normalised
    over the whole (f, h, w) volume, as the reference normalises its 5-D tensor). The statistics
    take one fused pass (:func:`group_norm_stats`); the normalisation is one ``x * a + b`` pass
    with per-(sample, channel) ``a``, ``b``."""

    num_groups: int = 32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels not divisible by {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean, var = group_norm_stats(x, self.num_groups)
        a = jax.lax.rsqrt(var + self.epsilon) * scale  # (n, c)
        b = bias - mean * a
        bshape = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
        h = x.astype(jnp.float32) * a.reshape(bshape) + b.reshape(bshape)
        return h.astype(x.dtype)
