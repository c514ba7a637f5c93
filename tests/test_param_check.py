"""Flax's parameter shape check stays a check when memoised (vstar_jax.models.param_check, issue 30)."""
import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from vstar_jax.models import layers  # noqa: F401  (importing the layers installs the memo)
from vstar_jax.models import param_check


class _Two(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.width, name="b")(nn.Dense(self.width, name="a")(x))


def test_installed_and_still_checks_shapes():
    assert param_check.installed()
    x = jnp.ones((1, 4))
    params = _Two(3).init(jax.random.PRNGKey(0), x)
    _Two(3).apply(params, x)  # memo filled with (lecun_normal, ((4, 3), float32)) ... for width 3
    # the same initializer with other arguments is a different entry: a width-5 model refuses width-3 params
    with pytest.raises(flax.errors.ScopeParamShapeError):
        _Two(5).apply(params, x)


def test_repeated_checks_trace_the_initializer_once(monkeypatch):
    calls = []
    memo = jax.eval_shape  # the real one, which the memo calls on a miss

    def counting(fun, *a, **k):
        calls.append(fun)
        return memo(fun, *a, **k)

    monkeypatch.setattr(jax, "eval_shape", counting)  # what the memo (and Flax without it) calls
    monkeypatch.setattr(param_check._flax_scope.jax, "_memo", {})
    x = jnp.ones((1, 7))
    params = _Two(7).init(jax.random.PRNGKey(0), x)
    calls.clear()
    jax.make_jaxpr(lambda p: _Two(7).apply(p, x))(params)
    jax.make_jaxpr(lambda p: _Two(7).apply(p, x))(params)
    # a and b have the same kernel (7, 7) and bias (7,) initializers: two traces in all, not eight
    assert len(calls) == 2
