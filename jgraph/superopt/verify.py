"""Probabilistic equivalence checking and its parts.

`Verifier` runs random tests over finite fields (`ModRing`, primes from `safe_prime_pairs`)
through the exact block schedule, then a float32/float16 screen against the float64
interpreter (`FloatRing`) at two input scales (the larger one rejects a softmax without
max subtraction, which the field tests cannot tell from a safe one), and returns a
`Verdict` (a program whose verification would need more than
`VerifyConfig.max_memory_gib`, `verifier_bytes`, is refused up front); `Oracle` is the
abstract-expression (e-graph) pruning check; `mutants` builds the wrong-μGraph corpus
the false-positive benchmark uses.
"""

from jgraph.superopt._absexpr import Oracle as Oracle
from jgraph.superopt._mutants import mutants as mutants
from jgraph.superopt._ring import FloatRing as FloatRing
from jgraph.superopt._ring import ModRing as ModRing
from jgraph.superopt._ring import safe_prime_pairs as safe_prime_pairs
from jgraph.superopt._verify import Verdict as Verdict
from jgraph.superopt._verify import Verifier as Verifier
from jgraph.superopt._verify import verifier_bytes as verifier_bytes

__all__ = [
    "FloatRing",
    "ModRing",
    "Oracle",
    "Verdict",
    "Verifier",
    "mutants",
    "safe_prime_pairs",
    "verifier_bytes",
]
