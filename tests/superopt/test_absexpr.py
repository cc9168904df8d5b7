"""The pruning oracle: squares are atomic, so norms do not expand into spurious subexpressions."""

import pytest

from jgraph.superopt._absexpr import Oracle, erase, graph_exprs, kernel_expr
from jgraph.superopt.programs import get_program

H, X, A = ("var", 0), ("var", 1), ("var", 2)


@pytest.fixture(scope="module")
def ntrans_oracle():
    prog = get_program("ntrans", scale=16)
    target = graph_exprs(prog.graph)[prog.graph.outputs[0]]
    return Oracle([erase(target)])


def test_a_tensor_times_itself_is_the_atomic_square():
    assert kernel_expr("mul", [X, X], [(2, 4)] * 2, {}) == ("sq", X)
    assert kernel_expr("square", [X], [(2, 4)], {}) == ("sq", X)
    assert kernel_expr("mul", [X, A], [(2, 4)] * 2, {}) == ("mul", X, A)


def test_norms_do_not_make_expanded_squares_subexpressions(ntrans_oracle):
    # (r + x)·a + x: distributivity still exposes x·a and r·a ...
    assert ntrans_oracle.contains(("mul", X, A))
    assert ntrans_oracle.contains(("add", ("div", H, ("rms", 0, H)), X))
    # ... but the squares inside the norms are not expanded into x + x, a·a, h·h
    for e in [("add", X, X), ("add", H, H), ("sq", A), ("mul", A, A), ("add", H, X)]:
        assert not ntrans_oracle.contains(e), e


def test_rms_is_the_root_of_a_sum_of_squares():
    prog = get_program("rmsnorm_linear", scale=16)
    x = ("var", 0)
    target = graph_exprs(prog.graph)[prog.graph.outputs[0]]
    oracle = Oracle([target])
    n = prog.shapes[0][-1]
    rms = ("rms", n, x)
    assert oracle.contains(rms)
    assert oracle.contains(("sqrt", ("sum", n, ("sq", x))))  # x·x summed, then sqrt
    assert oracle.contains(("sum", n, ("sq", x)))
    assert not oracle.contains(("add", x, x))


def test_exact_gelu_is_its_own_head_not_the_tanh_form():
    m = ("sum", 16, ("mul", X, A))
    target = kernel_expr("gelu_exact", [m], [(2, 4)], {})
    assert target == ("gelu_exact", m)
    oracle = Oracle([target])
    assert oracle.contains(("gelu_exact", m))
    assert oracle.contains(m)
    assert not oracle.contains(("gelu", m))
    assert not Oracle([("gelu", m)]).contains(("gelu_exact", m))
