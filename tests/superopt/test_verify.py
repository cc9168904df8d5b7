"""The verifier: completeness on equivalent μGraphs, soundness on mutants, the float screen."""

import dataclasses
import resource
import time

import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.superopt import SearchConfig, VerifyConfig, new_kernel_graph, search
from jgraph.superopt._tiling import partial_outputs
from jgraph.superopt.programs import HANDWRITTEN, PROGRAMS, get_program, handwritten
from jgraph.superopt.verify import Verifier, mutants, verifier_bytes


def _prog(kind):
    return get_program("gqa" if kind.startswith("gqa") else kind, scale=16)


@pytest.mark.parametrize("kind", HANDWRITTEN)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equivalent_mugraphs_always_pass_the_field_test(kind, seed):
    prog = _prog(kind)
    v = Verifier(prog.graph, VerifyConfig(seed=seed, float_screen=False))
    verdict = v.check(handwritten(kind, prog))
    assert verdict.ok, verdict


@pytest.mark.parametrize("kind", ["rmsnorm_linear", "gated_mlp", "lora", "gqa", "ntrans"])
def test_mutants_are_rejected_at_large_primes(kind):
    prog = _prog(kind)
    corpus = mutants(prog.graph, handwritten(kind, prog), limit=40, seed=1)
    assert len(corpus) >= 20
    v = Verifier(prog.graph, VerifyConfig(float_screen=False))
    accepted = [m for m in corpus if v.check(m).ok]
    assert accepted == []


def test_mutant_corpus_only_holds_wrong_mugraphs():
    from jgraph.superopt import evaluate

    prog = _prog("rmsnorm_linear")
    xs = [np.random.default_rng(9).standard_normal(s) for s in prog.shapes]
    ref = evaluate(prog.graph, xs)[0]
    for m in mutants(prog.graph, handwritten("rmsnorm_linear", prog), limit=15, seed=2):
        assert not np.allclose(evaluate(m, xs)[0], ref)


def test_output_permutations_are_matched():
    prog = _prog("gqa")
    g = handwritten("gqa", prog)
    # a μGraph with two outputs checked against itself in swapped order
    two = dataclasses.replace(g, outputs=(3, 4))
    swapped = dataclasses.replace(g, outputs=(4, 3))
    verdict = Verifier(two, VerifyConfig(float_screen=False)).check(swapped)
    assert verdict.ok
    assert verdict.permutation == (1, 0)


def test_float_screen_rejects_unnormalized_sums_stored_in_fp16():
    # Moving the softmax division after the PV matmul at kernel level stores the
    # unnormalized sums exp(QK)·V in float16 device memory: they overflow while
    # the reference (which normalizes first) stays finite. The field test cannot
    # tell (it is exact), the float16 screen must.
    prog = get_program("gqa", scale=16)
    g = new_kernel_graph()
    q, k, v = (g.new_input(s, "float16") for s in prog.shapes)
    e = g.exp(g.matmul(q, k))
    g.mark_output(g.div(g.matmul(e, v), g.reduction(e, 2)))
    naive = Verifier(prog.graph).check(g.graph)
    assert not naive.ok
    assert naive.stage == "float16"
    assert "overflow" in naive.reason
    assert Verifier(prog.graph, VerifyConfig(float_screen=False)).check(g.graph).ok


def test_split_kv_partials_are_float32_and_pass_the_fp16_screen(monkeypatch):
    # Split-KV attention (no max subtraction, Mirage's saved GQA μGraph) stores
    # its partial numerators and row sums between the two kernels; in float32,
    # as FlashDecoding-style kernels do, it passes the float16 screen.
    prog = get_program("gqa", scale=16)
    split_kv = handwritten("gqa", prog)
    k1, k2 = split_kv.ops
    shapes = split_kv.shapes
    assert partial_outputs(k1.block, [shapes[i] for i in k1.inputs]) == (True, True)
    assert partial_outputs(k2.block, [shapes[i] for i in k2.inputs]) == (False,)
    rms = handwritten("rmsnorm_linear", get_program("rmsnorm_linear", scale=16))
    assert partial_outputs(rms.ops[0].block, rms.shapes[:2]) == (False,)
    v = Verifier(prog.graph)
    assert v.check(split_kv).ok
    assert v.check(handwritten("gqa_online_softmax", prog)).ok
    # negative check: the same μGraph with float16 partials overflows
    monkeypatch.setattr(
        "jgraph.superopt._interp.partial_outputs",
        lambda block, shapes: (False,) * len(block.outputs),
    )
    fp16 = Verifier(prog.graph).check(split_kv)
    assert not fp16.ok
    assert fp16.stage == "float16"


def test_mirage_compat_mode_and_counter_inputs_run():
    prog = _prog("rmsnorm_linear")
    good = handwritten("rmsnorm_linear", prog)
    for cfg in (VerifyConfig(primes="mirage", tests=1), VerifyConfig(inputs="counter", tests=1)):
        assert Verifier(prog.graph, cfg).check(good).ok


def test_verify_config_validates():
    with pytest.raises(ConfigError, match=r"VerifyConfig.tests=0: must be >= 1"):
        VerifyConfig(tests=0)
    with pytest.raises(ConfigError, match=r"VerifyConfig\.primes='small'"):
        VerifyConfig(primes="small")


@pytest.mark.parametrize("kind", ["rmsnorm_linear", "lora", "gqa"])
def test_congruent_mutants_fool_the_small_field_but_not_large_primes(kind):
    from jgraph.superopt import evaluate

    prog = _prog(kind)
    corpus = mutants(prog.graph, handwritten(kind, prog), limit=30, seed=0, family="congruent")
    assert len(corpus) >= 20
    xs = [np.random.default_rng(4).standard_normal(s) for s in prog.shapes]
    ref = evaluate(prog.graph, xs)[0]
    with np.errstate(all="ignore"):
        assert all(not np.allclose(evaluate(m, xs)[0], ref) for m in corpus)  # all wrong
    large = Verifier(prog.graph, VerifyConfig(tests=1, float_screen=False))
    small = Verifier(prog.graph, VerifyConfig(tests=1, primes="mirage", float_screen=False))
    assert [m for m in corpus if large.check(m).ok] == []
    # the constants are 1 modulo 167 and/or 83, so Mirage's arithmetic accepts some
    assert sum(small.check(m).ok for m in corpus) > 0


def test_unknown_mutant_family_is_a_config_error():
    prog = _prog("rmsnorm_linear")
    with pytest.raises(ConfigError, match=r"mutants.family='typo'"):
        mutants(prog.graph, handwritten("rmsnorm_linear", prog), family="typo")


def test_a_program_too_large_to_verify_is_refused_up_front_with_the_memory_it_needs():
    # rmsnorm_linear at batch 10^6: x is (2e6, 4096); its float64 copy alone is 61 GiB.
    prog = get_program("rmsnorm_linear", batch=1_000_000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"VerifyConfig\.max_memory_gib=16\.0") as err:
        search(prog.graph, config=SearchConfig(time_limit_s=60))
    assert time.perf_counter() - start < 5
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert grown_mib < 256  # nothing of the program's size was allocated
    need = verifier_bytes(prog.graph) / 2**30
    assert need > 1000
    msg = str(err.value)
    assert f"about {need:,.1f} GiB" in msg
    assert "(2000000, 4096)" in msg
    assert "smaller batch" in msg
    assert "raise VerifyConfig.max_memory_gib" in msg


def test_the_memory_limit_is_a_limit_not_a_setting():
    prog = get_program("rmsnorm_linear", scale=16)
    need = verifier_bytes(prog.graph) / 2**30
    # just below what it needs: refused; just above: verified as before
    with pytest.raises(ConfigError, match="would need about"):
        Verifier(prog.graph, VerifyConfig(max_memory_gib=need * 0.99))
    assert Verifier(prog.graph, VerifyConfig(max_memory_gib=need * 1.01)).check(prog.graph).ok
    # the largest program the CLI accepts (--batch 64, --scale 1) fits the default
    assert all(
        verifier_bytes(get_program(name, batch=64).graph) < VerifyConfig().max_memory_gib * 2**30
        for name in PROGRAMS
    )
    a = SearchConfig(verify=VerifyConfig(max_memory_gib=1.0))
    assert a.key() == SearchConfig().key()
    assert SearchConfig(verify=VerifyConfig(seed=1)).key() != SearchConfig().key()
    with pytest.raises(ConfigError, match="max_memory_gib"):
        VerifyConfig(max_memory_gib=0)
