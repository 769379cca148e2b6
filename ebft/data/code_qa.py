"""Synthetic Python programming problems with unit tests (the offline stand-in for OpenCodeInstruct).

Each problem comes from one of the template *families* below (arithmetic, strings, lists, counting,
filtering, extrema, reversing, dictionaries, number properties, sequences, ...), instantiated with random
constants, function names and parameter names. A record looks like a HumanEval problem:

- ``question``: ``def name(args):`` plus a docstring that states the task and shows one example,
- ``answer``: the reference body (indented by four spaces, ending with a newline),
- ``entry_point``: the function name,
- ``test``: ``def check(candidate):`` with one ``assert`` per input (at least four), whose expected values
  come from running the reference solution (our own trusted code) in this process,
- ``family``: the template family (an extra key, for per-family analysis).

So ``question + answer + "\\n\\n" + test + f"\\n\\ncheck({entry_point})\\n"`` is a passing program.
Splits are disjoint by problem: a hash of the question decides the split, and every question occurs once.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ebft.data.records import SPLITS, check_sizes

WORDS: tuple[str, ...] = (
    "apple", "banana", "cherry", "river", "stone", "cloud", "tiger", "piano", "lemon", "orange",
    "garden", "window", "rocket", "pencil", "forest", "silver", "yellow", "planet", "butter", "candle",
    "level", "radar", "noon", "civic", "kayak", "moon", "sun", "tree", "bird", "fish", "code", "data",
    "list", "map", "key", "note", "star", "road", "lamp", "bell",
)  # fmt: skip
NAMES: tuple[str, ...] = (
    "ann",
    "bob",
    "cid",
    "dora",
    "eve",
    "finn",
    "gus",
    "hana",
    "ivan",
    "jo",
    "kim",
    "lea",
)
INT_LIST_PARAMS: tuple[str, ...] = ("numbers", "values", "nums", "xs")
STR_PARAMS: tuple[str, ...] = ("s", "text", "word")
INT_PARAMS: tuple[str, ...] = ("n", "x", "value")
_MAX_FRUITLESS_DRAWS = 20_000


@dataclass(frozen=True)
class Problem:
    """One instantiated problem before its tests are computed."""

    family: str
    name: str
    params: tuple[str, ...]
    doc: str
    body: str
    inputs: tuple[tuple[Any, ...], ...]


FAMILIES: dict[str, Callable[[random.Random], Problem]] = {}
"""Template families by name; each builds a random :class:`Problem`."""


def _family(func: Callable[[random.Random], Problem]) -> Callable[[random.Random], Problem]:
    """Register a template family under its function name (without the leading underscore)."""
    FAMILIES[func.__name__.lstrip("_")] = func
    return func


# ----------------------------------------------------------------------------------------------
# Input makers.


def _calls(
    make: Callable[[], tuple[Any, ...]], count: int = 5, min_count: int = 4
) -> tuple[tuple[Any, ...], ...]:
    """Draw up to ``count`` distinct argument tuples from ``make`` (at least ``min_count``)."""
    seen: dict[str, tuple[Any, ...]] = {}
    for _ in range(count * 20):
        args = make()
        seen.setdefault(repr(args), args)
        if len(seen) == count:
            break
    if len(seen) < min_count:
        raise RuntimeError(f"input maker produced only {len(seen)} distinct inputs")
    return tuple(seen.values())


def _int_list(
    rng: random.Random, lo: int = -9, hi: int = 20, min_len: int = 0, max_len: int = 8
) -> list[int]:
    """A random list of integers."""
    return [rng.randint(lo, hi) for _ in range(rng.randint(min_len, max_len))]


def _word(rng: random.Random) -> str:
    """A random lowercase word."""
    return rng.choice(WORDS)


def _sentence(rng: random.Random, min_words: int = 1, max_words: int = 5) -> str:
    """A random sentence of lowercase words separated by single spaces."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))


def _mixed_case(rng: random.Random) -> str:
    """A random sentence where some letters are uppercase."""
    return "".join(ch.upper() if rng.random() < 0.3 else ch for ch in _sentence(rng))


def _word_list(rng: random.Random, min_len: int = 0, max_len: int = 6) -> list[str]:
    """A random list of words."""
    return [rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))]


def _pick(rng: random.Random, *options: str) -> str:
    """Choose one of ``options``."""
    return rng.choice(options)


# ----------------------------------------------------------------------------------------------
# Arithmetic.


@_family
def _add_constant(rng: random.Random) -> Problem:
    k, x = rng.randint(1, 99), _pick(rng, *INT_PARAMS)
    name = _pick(rng, "add_constant", "plus_k", "increase")
    return Problem(
        "add_constant",
        name,
        (x,),
        f"Return {x} plus {k}.",
        f"    return {x} + {k}\n",
        _calls(lambda: (rng.randint(-50, 50),)),
    )


@_family
def _multiply_constant(rng: random.Random) -> Problem:
    k, x = rng.randint(2, 19), _pick(rng, *INT_PARAMS)
    name = _pick(rng, "multiply", "scale", "times_k")
    return Problem(
        "multiply_constant",
        name,
        (x,),
        f"Return {x} multiplied by {k}.",
        f"    return {x} * {k}\n",
        _calls(lambda: (rng.randint(-30, 30),)),
    )


@_family
def _linear_function(rng: random.Random) -> Problem:
    a, b, x = rng.randint(2, 9), rng.randint(1, 30), _pick(rng, *INT_PARAMS)
    op, word = rng.choice([("+", "plus"), ("-", "minus")])
    name = _pick(rng, "linear", "affine", "evaluate_line")
    return Problem(
        "linear_function",
        name,
        (x,),
        f"Return {a} times {x} {word} {b}.",
        f"    return {a} * {x} {op} {b}\n",
        _calls(lambda: (rng.randint(-20, 20),)),
    )


@_family
def _integer_division(rng: random.Random) -> Problem:
    k, x = rng.randint(2, 12), _pick(rng, *INT_PARAMS)
    kind = rng.choice(["quotient", "remainder"])
    op = "//" if kind == "quotient" else "%"
    name = _pick(rng, f"{kind}_by_{k}", f"div_{kind}", f"{kind}_of")
    doc = f"Return the {kind} of the integer division of the non-negative integer {x} by {k}."
    return Problem(
        "integer_division",
        name,
        (x,),
        doc,
        f"    return {x} {op} {k}\n",
        _calls(lambda: (rng.randint(0, 200),)),
    )


@_family
def _range_sum(rng: random.Random) -> Problem:
    n = _pick(rng, "n", "limit", "upper")
    kind = rng.choice(["integers", "squares", "cubes", "multiples"])
    k = rng.randint(2, 9)
    docs = {
        "integers": f"Return the sum of the integers from 1 to {n} inclusive.",
        "squares": f"Return the sum of the squares of the integers from 1 to {n} inclusive.",
        "cubes": f"Return the sum of the cubes of the integers from 1 to {n} inclusive.",
        "multiples": f"Return the sum of all multiples of {k} between 1 and {n} inclusive.",
    }
    terms = {"integers": "i", "squares": "i * i", "cubes": "i ** 3", "multiples": "i"}
    cond = f" if i % {k} == 0" if kind == "multiples" else ""
    body = f"    return sum({terms[kind]} for i in range(1, {n} + 1){cond})\n"
    name = _pick(rng, f"sum_of_{kind}", f"{kind}_total", f"total_{kind}")
    return Problem("range_sum", name, (n,), docs[kind], body, _calls(lambda: (rng.randint(0, 40),)))


# ----------------------------------------------------------------------------------------------
# Number properties and sequences.


@_family
def _is_prime(rng: random.Random) -> Problem:
    n = _pick(rng, *INT_PARAMS)
    body = (
        f"    if {n} < 2:\n        return False\n    d = 2\n    while d * d <= {n}:\n"
        f"        if {n} % d == 0:\n            return False\n        d += 1\n    return True\n"
    )
    return Problem(
        "is_prime",
        _pick(rng, "is_prime", "prime_check", "check_prime"),
        (n,),
        f"Return True if {n} is a prime number, otherwise False.",
        body,
        _calls(lambda: (rng.randint(0, 120),), count=6),
    )


@_family
def _factorial(rng: random.Random) -> Problem:
    n = _pick(rng, *INT_PARAMS)
    start = rng.randint(1, 3)
    doc = f"Return the factorial of the non-negative integer {n}."
    if start > 1:
        doc = f"Return {start} times the factorial of the non-negative integer {n}."
    body = f"    result = {start}\n    for i in range(2, {n} + 1):\n        result *= i\n    return result\n"
    return Problem(
        "factorial",
        _pick(rng, "factorial", "fact", "scaled_factorial"),
        (n,),
        doc,
        body,
        _calls(lambda: (rng.randint(0, 12),)),
    )


@_family
def _fibonacci_like(rng: random.Random) -> Problem:
    a, b, n = rng.randint(0, 5), rng.randint(1, 5), _pick(rng, "n", "index", "k")
    doc = (
        f"Return the term with index {n} (counting from 0) of the sequence that starts with {a}, {b} and "
        "where every later term is the sum of the two terms before it."
    )
    body = f"    a, b = {a}, {b}\n    for _ in range({n}):\n        a, b = b, a + b\n    return a\n"
    name = _pick(rng, "fibonacci", "fib_like", "sequence_term")
    return Problem("fibonacci_like", name, (n,), doc, body, _calls(lambda: (rng.randint(0, 20),)))


@_family
def _digit_statistic(rng: random.Random) -> Problem:
    n = _pick(rng, *INT_PARAMS)
    kind = rng.choice(["sum", "product", "largest", "even_count"])
    docs = {
        "sum": "the sum of the decimal digits",
        "product": "the product of the decimal digits",
        "largest": "the largest decimal digit",
        "even_count": "the number of even decimal digits",
    }
    exprs = {
        "sum": f"sum(int(d) for d in str({n}))",
        "product": "result",
        "largest": f"max(int(d) for d in str({n}))",
        "even_count": f"sum(1 for d in str({n}) if int(d) % 2 == 0)",
    }
    body = f"    return {exprs[kind]}\n"
    if kind == "product":
        body = f"    result = 1\n    for d in str({n}):\n        result *= int(d)\n    return result\n"
    doc = f"Return {docs[kind]} of the non-negative integer {n}."
    return Problem(
        "digit_statistic",
        _pick(rng, f"digit_{kind}", f"{kind}_of_digits"),
        (n,),
        doc,
        body,
        _calls(lambda: (rng.randint(0, 99999),)),
    )


@_family
def _gcd_lcm(rng: random.Random) -> Problem:
    a, b = rng.choice([("a", "b"), ("x", "y"), ("m", "n")])
    kind = rng.choice(["gcd", "lcm"])
    loop = f"    p, q = {a}, {b}\n    while q:\n        p, q = q, p % q\n"
    if kind == "gcd":
        doc = f"Return the greatest common divisor of the positive integers {a} and {b}."
        body = loop + "    return p\n"
    else:
        doc = f"Return the least common multiple of the positive integers {a} and {b}."
        body = loop + f"    return {a} * {b} // p\n"
    name = _pick(rng, kind, f"compute_{kind}", f"{kind}_of_pair")
    return Problem(
        "gcd_lcm", name, (a, b), doc, body, _calls(lambda: (rng.randint(1, 60), rng.randint(1, 60)))
    )


@_family
def _divisors(rng: random.Random) -> Problem:
    n = _pick(rng, *INT_PARAMS)
    kind = rng.choice(["count", "sum", "list"])
    docs = {
        "count": f"Return the number of positive divisors of the positive integer {n}.",
        "sum": f"Return the sum of the positive divisors of the positive integer {n}.",
        "list": f"Return the sorted list of the positive divisors of the positive integer {n}.",
    }
    exprs = {
        "count": f"sum(1 for d in range(1, {n} + 1) if {n} % d == 0)",
        "sum": f"sum(d for d in range(1, {n} + 1) if {n} % d == 0)",
        "list": f"[d for d in range(1, {n} + 1) if {n} % d == 0]",
    }
    name = _pick(rng, f"divisor_{kind}", f"{kind}_divisors")
    return Problem(
        "divisors",
        name,
        (n,),
        docs[kind],
        f"    return {exprs[kind]}\n",
        _calls(lambda: (rng.randint(1, 60),)),
    )


@_family
def _collatz_steps(rng: random.Random) -> Problem:
    n, mult = _pick(rng, *INT_PARAMS), rng.choice([3, 5])
    limit = 200
    doc = (
        f"Count the steps needed to reach 1 from the positive integer {n}, where a step halves an even "
        f"number and replaces an odd number v by {mult} * v + 1; stop after {limit} steps at most and "
        "return the number of steps taken."
    )
    body = (
        f"    steps = 0\n    while {n} != 1 and steps < {limit}:\n"
        f"        {n} = {n} // 2 if {n} % 2 == 0 else {mult} * {n} + 1\n"
        "        steps += 1\n    return steps\n"
    )
    return Problem(
        "collatz_steps",
        _pick(rng, "collatz_steps", "steps_to_one"),
        (n,),
        doc,
        body,
        _calls(lambda: (rng.randint(1, 40),)),
    )


# ----------------------------------------------------------------------------------------------
# Lists of numbers.


@_family
def _sum_where(rng: random.Random) -> Problem:
    p = _pick(rng, *INT_LIST_PARAMS)
    cond_word, cond = rng.choice(
        [
            ("positive", "v > 0"),
            ("negative", "v < 0"),
            ("even", "v % 2 == 0"),
            ("odd", "v % 2 != 0"),
            ("all", ""),
        ]
    )
    if cond:
        doc = f"Return the sum of the {cond_word} integers in the list {p} (0 if there are none)."
        body = (
            f"    total = 0\n    for v in {p}:\n        if {cond}:\n            total += v\n"
            "    return total\n"
        )
    else:
        doc = f"Return the sum of the integers in the list {p}."
        body = f"    total = 0\n    for v in {p}:\n        total += v\n    return total\n"
    name = _pick(rng, f"sum_{cond_word}", f"{cond_word}_sum", f"total_{cond_word}")
    return Problem("sum_where", name, (p,), doc, body, _calls(lambda: (_int_list(rng),)))


@_family
def _sum_multiples(rng: random.Random) -> Problem:
    p, k = _pick(rng, *INT_LIST_PARAMS), rng.randint(2, 9)
    doc = f"Return the sum of the elements of {p} that are divisible by {k}."
    name = _pick(rng, "sum_multiples", f"sum_divisible_by_{k}", "multiples_total")
    return Problem(
        "sum_multiples",
        name,
        (p,),
        doc,
        f"    return sum(v for v in {p} if v % {k} == 0)\n",
        _calls(lambda: (_int_list(rng, -20, 40),)),
    )


@_family
def _count_compare(rng: random.Random) -> Problem:
    p, t = _pick(rng, *INT_LIST_PARAMS), rng.randint(-5, 15)
    word, op = rng.choice([("greater than", ">"), ("less than", "<"), ("equal to", "=="), ("at least", ">=")])
    doc = f"Return how many elements of {p} are {word} {t}."
    name = _pick(rng, "count_matching", "how_many", f"count_{word.split()[0]}")
    return Problem(
        "count_compare",
        name,
        (p,),
        doc,
        f"    return sum(1 for v in {p} if v {op} {t})\n",
        _calls(lambda: (_int_list(rng, -5, 15),)),
    )


@_family
def _count_in_range(rng: random.Random) -> Problem:
    p, lo = _pick(rng, *INT_LIST_PARAMS), rng.randint(-10, 10)
    hi = lo + rng.randint(1, 15)
    doc = f"Return how many elements of {p} lie between {lo} and {hi} inclusive."
    name = _pick(rng, "count_in_range", "count_between", "in_range_count")
    return Problem(
        "count_in_range",
        name,
        (p,),
        doc,
        f"    return sum(1 for v in {p} if {lo} <= v <= {hi})\n",
        _calls(lambda: (_int_list(rng, -15, 30),)),
    )


@_family
def _filter_parity(rng: random.Random) -> Problem:
    p, kind = _pick(rng, *INT_LIST_PARAMS), rng.choice(["even", "odd"])
    op = "==" if kind == "even" else "!="
    doc = f"Return a list of the {kind} numbers in {p}, in their original order."
    name = _pick(rng, f"{kind}_numbers", f"keep_{kind}", f"filter_{kind}")
    return Problem(
        "filter_parity",
        name,
        (p,),
        doc,
        f"    return [v for v in {p} if v % 2 {op} 0]\n",
        _calls(lambda: (_int_list(rng),)),
    )


@_family
def _filter_threshold(rng: random.Random) -> Problem:
    p, t = _pick(rng, *INT_LIST_PARAMS), rng.randint(-5, 15)
    word, op = rng.choice(
        [("at least", ">="), ("at most", "<="), ("strictly greater than", ">"), ("strictly less than", "<")]
    )
    doc = f"Return a new list with the elements of {p} that are {word} {t}, keeping their order."
    name = _pick(rng, "filter_values", "select_values", "keep_matching")
    return Problem(
        "filter_threshold",
        name,
        (p,),
        doc,
        f"    return [v for v in {p} if v {op} {t}]\n",
        _calls(lambda: (_int_list(rng, -5, 20),)),
    )


@_family
def _extreme(rng: random.Random) -> Problem:
    p, kind = _pick(rng, *INT_LIST_PARAMS), rng.choice(["largest", "smallest"])
    op = ">" if kind == "largest" else "<"
    doc = f"Return the {kind} element of the non-empty list {p}."
    body = (
        f"    best = {p}[0]\n    for v in {p}[1:]:\n        if v {op} best:\n            best = v\n"
        "    return best\n"
    )
    name = _pick(rng, f"{kind}_element", f"find_{kind}", "max_value" if kind == "largest" else "min_value")
    return Problem("extreme", name, (p,), doc, body, _calls(lambda: (_int_list(rng, -30, 30, min_len=1),)))


@_family
def _value_range(rng: random.Random) -> Problem:
    p = _pick(rng, *INT_LIST_PARAMS)
    doc = f"Return the difference between the largest and the smallest element of the non-empty list {p}."
    name = _pick(rng, "value_range", "spread", "max_minus_min")
    return Problem(
        "value_range",
        name,
        (p,),
        doc,
        f"    return max({p}) - min({p})\n",
        _calls(lambda: (_int_list(rng, -30, 30, min_len=1),)),
    )


@_family
def _map_values(rng: random.Random) -> Problem:
    p = _pick(rng, *INT_LIST_PARAMS)
    if rng.random() < 0.4:
        k = rng.randint(2, 3)
        doc = f"Return a list with each element of {p} raised to the power {k}."
        body = f"    return [v ** {k} for v in {p}]\n"
    else:
        a, b = rng.randint(2, 9), rng.randint(-9, 9)
        doc = f"Return a list where each element v of {p} is replaced by {a} * v + {b}."
        body = f"    return [{a} * v + {b} for v in {p}]\n"
    name = _pick(rng, "transform", "map_values", "apply_formula")
    return Problem("map_values", name, (p,), doc, body, _calls(lambda: (_int_list(rng, -9, 9),)))


@_family
def _running_total(rng: random.Random) -> Problem:
    p, kind = _pick(rng, *INT_LIST_PARAMS), rng.choice(["sums", "maxima"])
    if kind == "sums":
        doc = (
            f"Return the running sums of {p}: element i of the result is the sum of the first i + 1 elements."
        )
        body = (
            f"    result = []\n    total = 0\n    for v in {p}:\n        total += v\n"
            "        result.append(total)\n    return result\n"
        )
    else:
        doc = (
            f"Return the running maxima of {p}: element i of the result is the largest of the first "
            "i + 1 elements."
        )
        body = (
            f"    result = []\n    for v in {p}:\n"
            "        result.append(v if not result else max(result[-1], v))\n    return result\n"
        )
    name = _pick(rng, f"running_{kind}", f"prefix_{kind}", f"cumulative_{kind}")
    return Problem("running_total", name, (p,), doc, body, _calls(lambda: (_int_list(rng),)))


@_family
def _unique_in_order(rng: random.Random) -> Problem:
    p = _pick(rng, *INT_LIST_PARAMS, "items")
    doc = f"Return the elements of {p} without duplicates, keeping the first occurrence of each in order."
    body = (
        f"    seen = set()\n    result = []\n    for v in {p}:\n        if v not in seen:\n"
        "            seen.add(v)\n            result.append(v)\n    return result\n"
    )
    return Problem(
        "unique_in_order",
        _pick(rng, "unique", "dedupe", "remove_duplicates"),
        (p,),
        doc,
        body,
        _calls(lambda: (_int_list(rng, 0, 6, max_len=9),)),
    )


@_family
def _first_index(rng: random.Random) -> Problem:
    p, t = _pick(rng, *INT_LIST_PARAMS), rng.randint(-3, 12)
    word, op = rng.choice([("greater than", ">"), ("less than", "<"), ("equal to", "==")])
    doc = f"Return the index of the first element of {p} that is {word} {t}, or -1 if there is none."
    body = f"    for i, v in enumerate({p}):\n        if v {op} {t}:\n            return i\n    return -1\n"
    return Problem(
        "first_index",
        _pick(rng, "first_index", "find_first", "index_of_first"),
        (p,),
        doc,
        body,
        _calls(lambda: (_int_list(rng, -3, 15),)),
    )


@_family
def _clamp(rng: random.Random) -> Problem:
    p, lo = _pick(rng, *INT_LIST_PARAMS), rng.randint(-10, 5)
    hi = lo + rng.randint(2, 15)
    doc = f"Return a list where every element of {p} is clamped to the range [{lo}, {hi}]."
    return Problem(
        "clamp",
        _pick(rng, "clamp_all", "clip_values", "limit_values"),
        (p,),
        doc,
        f"    return [min(max(v, {lo}), {hi}) for v in {p}]\n",
        _calls(lambda: (_int_list(rng, -20, 25),)),
    )


@_family
def _is_sorted(rng: random.Random) -> Problem:
    p = _pick(rng, *INT_LIST_PARAMS)
    word, op = rng.choice(
        [
            ("non-decreasing", "<="),
            ("strictly increasing", "<"),
            ("non-increasing", ">="),
            ("strictly decreasing", ">"),
        ]
    )
    doc = f"Return True if the elements of {p} are in {word} order, otherwise False."
    body = f"    return all({p}[i] {op} {p}[i + 1] for i in range(len({p}) - 1))\n"

    def make() -> tuple[Any, ...]:
        values = _int_list(rng, 0, 9, max_len=6)
        return (sorted(values, reverse=op in (">=", ">")) if rng.random() < 0.5 else values,)

    return Problem(
        "is_sorted",
        _pick(rng, "is_sorted", "in_order", "check_order"),
        (p,),
        doc,
        body,
        _calls(make, count=6),
    )


@_family
def _product(rng: random.Random) -> Problem:
    p, skip_zero = _pick(rng, *INT_LIST_PARAMS), rng.random() < 0.4
    if skip_zero:
        doc = f"Return the product of the non-zero integers in {p}; the product of no numbers is 1."
        cond = "        if v != 0:\n            result *= v\n"
    else:
        doc = f"Return the product of the integers in {p}; the product of an empty list is 1."
        cond = "        result *= v\n"
    body = f"    result = 1\n    for v in {p}:\n{cond}    return result\n"
    return Problem(
        "product",
        _pick(rng, "product", "multiply_all", "list_product"),
        (p,),
        doc,
        body,
        _calls(lambda: (_int_list(rng, -4, 6, max_len=6),)),
    )


@_family
def _rotate(rng: random.Random) -> Problem:
    p, k, side = _pick(rng, *INT_LIST_PARAMS, "items"), rng.randint(1, 5), rng.choice(["left", "right"])
    doc = f"Return a new list with the elements of {p} rotated to the {side} by {k} positions."
    shift = f"{k} % len({p})" if side == "left" else f"-{k} % len({p})"
    body = f"    if not {p}:\n        return []\n    s = {shift}\n    return {p}[s:] + {p}[:s]\n"
    return Problem(
        "rotate",
        _pick(rng, f"rotate_{side}", "rotate", "shift_list"),
        (p,),
        doc,
        body,
        _calls(lambda: (_int_list(rng, 0, 9),)),
    )


@_family
def _chunk(rng: random.Random) -> Problem:
    p, k = _pick(rng, *INT_LIST_PARAMS, "items"), rng.randint(2, 4)
    doc = (
        f"Split {p} into consecutive chunks of {k} elements (the last chunk may be shorter) "
        "and return the list of chunks."
    )
    body = f"    return [{p}[i:i + {k}] for i in range(0, len({p}), {k})]\n"
    return Problem(
        "chunk",
        _pick(rng, "chunks", "split_into_chunks", "batch"),
        (p,),
        doc,
        body,
        _calls(lambda: (_int_list(rng, 0, 9),)),
    )


@_family
def _every_kth(rng: random.Random) -> Problem:
    p, k, start = _pick(rng, *INT_LIST_PARAMS, "items"), rng.randint(2, 4), rng.randint(0, 2)
    doc = f"Return every {k}-th element of {p}, starting with the element at index {start}."
    return Problem(
        "every_kth",
        _pick(rng, "every_kth", "take_every", "stride"),
        (p,),
        doc,
        f"    return {p}[{start}::{k}]\n",
        _calls(lambda: (_int_list(rng, 0, 9, max_len=10),)),
    )


@_family
def _pairwise(rng: random.Random) -> Problem:
    a, b = rng.choice([("a", "b"), ("left", "right"), ("xs", "ys")])
    word, expr = rng.choice(
        [
            ("sums", "x + y"),
            ("differences (first minus second)", "x - y"),
            ("products", "x * y"),
            ("maxima", "max(x, y)"),
            ("minima", "min(x, y)"),
        ]
    )
    doc = f"Given two lists {a} and {b} of equal length, return the list of their element-wise {word}."
    body = f"    return [{expr} for x, y in zip({a}, {b})]\n"

    def make() -> tuple[Any, ...]:
        n = rng.randint(0, 6)
        return ([rng.randint(-9, 9) for _ in range(n)], [rng.randint(-9, 9) for _ in range(n)])

    name = _pick(rng, "pairwise", "combine_lists", "elementwise")
    return Problem("pairwise", name, (a, b), doc, body, _calls(make))


@_family
def _most_common(rng: random.Random) -> Problem:
    p = _pick(rng, *INT_LIST_PARAMS)
    tie = rng.choice(["smallest", "largest"])
    doc = (
        f"Return the element that occurs most often in the non-empty list {p}; "
        f"if several are tied, return the {tie} of them."
    )
    pick = "min" if tie == "smallest" else "max"
    body = (
        f"    counts = {{}}\n    for v in {p}:\n        counts[v] = counts.get(v, 0) + 1\n"
        f"    best = max(counts.values())\n    return {pick}(v for v, c in counts.items() if c == best)\n"
    )
    return Problem(
        "most_common",
        _pick(rng, "most_common", "mode", "most_frequent"),
        (p,),
        doc,
        body,
        _calls(lambda: (_int_list(rng, 0, 5, min_len=1),)),
    )


# ----------------------------------------------------------------------------------------------
# Strings.


@_family
def _reverse_string(rng: random.Random) -> Problem:
    s = _pick(rng, *STR_PARAMS)
    return Problem(
        "reverse_string",
        _pick(rng, "reverse", "reverse_string", "backwards"),
        (s,),
        f"Return the string {s} reversed.",
        f"    return {s}[::-1]\n",
        _calls(lambda: (_sentence(rng, 1, 2),)),
    )


@_family
def _reverse_words(rng: random.Random) -> Problem:
    s = _pick(rng, "sentence", "text", "line")
    doc = f"Return the words of {s} in reverse order, separated by single spaces."
    return Problem(
        "reverse_words",
        _pick(rng, "reverse_words", "flip_words", "words_backwards"),
        (s,),
        doc,
        f'    return " ".join({s}.split()[::-1])\n',
        _calls(lambda: (_sentence(rng),)),
    )


@_family
def _count_letter(rng: random.Random) -> Problem:
    s, c = _pick(rng, *STR_PARAMS), rng.choice("aeiorstnl")
    doc = f"Return how many times the letter '{c}' occurs in {s}."
    return Problem(
        "count_letter",
        _pick(rng, f"count_{c}", "count_letter", "letter_count"),
        (s,),
        doc,
        f'    return {s}.count("{c}")\n',
        _calls(lambda: (_sentence(rng),)),
    )


@_family
def _count_letter_set(rng: random.Random) -> Problem:
    s = _pick(rng, *STR_PARAMS)
    letters = "aeiou" if rng.random() < 0.3 else "".join(sorted(rng.sample("abcdeilmnorstu", 3)))
    desc = (
        "vowels (a, e, i, o, u)"
        if letters == "aeiou"
        else "characters that are one of " + ", ".join(f"'{ch}'" for ch in letters)
    )
    doc = f"Return the number of {desc} in the lowercase string {s}."
    body = f'    return sum(1 for ch in {s} if ch in "{letters}")\n'
    return Problem(
        "count_letter_set",
        _pick(rng, "count_vowels" if letters == "aeiou" else "count_chars", "count_members"),
        (s,),
        doc,
        body,
        _calls(lambda: (_sentence(rng),)),
    )


@_family
def _count_case(rng: random.Random) -> Problem:
    s, kind = _pick(rng, *STR_PARAMS), rng.choice(["uppercase", "lowercase"])
    method = "isupper" if kind == "uppercase" else "islower"
    doc = f"Return the number of {kind} letters in {s}."
    return Problem(
        "count_case",
        _pick(rng, f"count_{kind}", f"{kind}_count"),
        (s,),
        doc,
        f"    return sum(1 for ch in {s} if ch.{method}())\n",
        _calls(lambda: (_mixed_case(rng),)),
    )


@_family
def _is_palindrome(rng: random.Random) -> Problem:
    s = _pick(rng, *STR_PARAMS)
    ignore_spaces = rng.random() < 0.4
    if ignore_spaces:
        doc = (
            f"Return True if {s} reads the same forwards and backwards when spaces are ignored, "
            "otherwise False."
        )
        body = f'    t = {s}.replace(" ", "")\n    return t == t[::-1]\n'
    else:
        doc = f"Return True if {s} reads the same forwards and backwards, otherwise False."
        body = f"    return {s} == {s}[::-1]\n"

    def make() -> tuple[Any, ...]:
        word = _word(rng)
        return (rng.choice([word, word + word[::-1], word[:-1] + word[::-1], _sentence(rng, 1, 2)]),)

    return Problem(
        "is_palindrome",
        _pick(rng, "is_palindrome", "palindrome_check"),
        (s,),
        doc,
        body,
        _calls(make, count=6),
    )


@_family
def _replace_letter(rng: random.Random) -> Problem:
    s = _pick(rng, *STR_PARAMS)
    a, b = rng.sample("aeiorstnlm", 2)
    doc = f"Return {s} with every '{a}' replaced by '{b}'."
    return Problem(
        "replace_letter",
        _pick(rng, "replace_letter", f"swap_{a}_{b}", "substitute"),
        (s,),
        doc,
        f'    return {s}.replace("{a}", "{b}")\n',
        _calls(lambda: (_sentence(rng),)),
    )


@_family
def _repeat_string(rng: random.Random) -> Problem:
    s, k = _pick(rng, *STR_PARAMS), rng.randint(2, 5)
    sep = rng.choice(["-", ", ", " ", "", "|", "+"])
    between = f"separated by '{sep}'" if sep else "with nothing in between"
    doc = f"Return {s} repeated {k} times, {between}."
    return Problem(
        "repeat_string",
        _pick(rng, "repeat", "repeat_string", f"repeat_{k}_times"),
        (s,),
        doc,
        f'    return "{sep}".join([{s}] * {k})\n',
        _calls(lambda: (_word(rng),)),
    )


@_family
def _caesar_shift(rng: random.Random) -> Problem:
    s, k = _pick(rng, *STR_PARAMS), rng.randint(1, 25)
    doc = (
        f"Shift every letter of the lowercase string {s} forward by {k} positions in the alphabet, "
        "wrapping around from 'z' to 'a'; other characters stay the same. Return the result."
    )
    body = (
        f"    out = []\n    for ch in {s}:\n        if 'a' <= ch <= 'z':\n"
        f"            out.append(chr((ord(ch) - ord('a') + {k}) % 26 + ord('a')))\n"
        "        else:\n            out.append(ch)\n    return ''.join(out)\n"
    )
    return Problem(
        "caesar_shift",
        _pick(rng, "caesar", "shift_letters", "encode"),
        (s,),
        doc,
        body,
        _calls(lambda: (_sentence(rng, 1, 3),)),
    )


@_family
def _change_case(rng: random.Random) -> Problem:
    s = _pick(rng, *STR_PARAMS)
    kind, expr, doc_tail = rng.choice(
        [
            (
                "capitalize",
                f'" ".join(w[:1].upper() + w[1:] for w in {s}.split(" "))',
                "with the first letter of every space-separated word in uppercase",
            ),
            (
                "swap",
                f"{s}.swapcase()",
                "with uppercase letters made lowercase and lowercase letters made uppercase",
            ),
            ("upper", f"{s}.upper()", "with every letter in uppercase"),
            (
                "alternate",
                f'"".join(ch.upper() if i % 2 == 0 else ch for i, ch in enumerate({s}))',
                "with the characters at even indices in uppercase and the others unchanged",
            ),
        ]
    )
    return Problem(
        "change_case",
        _pick(rng, f"{kind}_case", f"to_{kind}", "recase"),
        (s,),
        f"Return {s} {doc_tail}.",
        f"    return {expr}\n",
        _calls(lambda: (_sentence(rng),)),
    )


@_family
def _longest_word(rng: random.Random) -> Problem:
    s, kind = _pick(rng, "sentence", "text", "line"), rng.choice(["longest", "shortest"])
    op = ">" if kind == "longest" else "<"
    doc = (
        f"Return the {kind} word in the non-empty sentence {s} (words are separated by spaces); "
        "if several words have that length, return the first of them."
    )
    body = (
        f"    words = {s}.split()\n    best = words[0]\n    for w in words[1:]:\n"
        f"        if len(w) {op} len(best):\n            best = w\n    return best\n"
    )
    return Problem(
        "longest_word",
        _pick(rng, f"{kind}_word", f"find_{kind}"),
        (s,),
        doc,
        body,
        _calls(lambda: (_sentence(rng),)),
    )


@_family
def _words_with_letter(rng: random.Random) -> Problem:
    w, c = _pick(rng, "words", "names", "tokens"), rng.choice("abcdefilmnoprst")
    word, expr = rng.choice(
        [
            ("start with", f'x.startswith("{c}")'),
            ("end with", f'x.endswith("{c}")'),
            ("contain", f'"{c}" in x'),
        ]
    )
    doc = f"Return the words of the list {w} that {word} the letter '{c}', in their original order."
    return Problem(
        "words_with_letter",
        _pick(rng, "select_words", "words_matching", "filter_words"),
        (w,),
        doc,
        f"    return [x for x in {w} if {expr}]\n",
        _calls(lambda: (_word_list(rng),)),
    )


@_family
def _join_words(rng: random.Random) -> Problem:
    w, sep = _pick(rng, "words", "parts", "tokens"), rng.choice(["-", ", ", "_", " ", "/", ""])
    upper = rng.random() < 0.3
    doc = (
        f"Return the words of the list {w} joined by '{sep}'."
        if sep
        else f"Return the words of {w} concatenated."
    )
    item = "x.upper()" if upper else "x"
    if upper:
        doc = doc[:-1] + ", each converted to uppercase."
    body = f'    return "{sep}".join({item} for x in {w})\n'
    return Problem(
        "join_words",
        _pick(rng, "join_words", "combine", "glue"),
        (w,),
        doc,
        body,
        _calls(lambda: (_word_list(rng),)),
    )


# ----------------------------------------------------------------------------------------------
# Dictionaries.


@_family
def _word_lengths(rng: random.Random) -> Problem:
    w, extra = _pick(rng, "words", "names", "tokens"), rng.randint(0, 3)
    plus = f" plus {extra}" if extra else ""
    doc = f"Return a dictionary that maps each word in the list {w} to its length{plus}."
    value = f"len(x) + {extra}" if extra else "len(x)"
    return Problem(
        "word_lengths",
        _pick(rng, "word_lengths", "length_map", "lengths"),
        (w,),
        doc,
        f"    return {{x: {value} for x in {w}}}\n",
        _calls(lambda: (_word_list(rng),)),
    )


@_family
def _char_counts(rng: random.Random) -> Problem:
    s, skip_spaces = _pick(rng, *STR_PARAMS), rng.random() < 0.5
    doc = f"Return a dictionary that maps each character of {s} to the number of times it occurs"
    doc += ", ignoring spaces." if skip_spaces else "."
    guard = "        if ch == ' ':\n            continue\n" if skip_spaces else ""
    body = (
        f"    counts = {{}}\n    for ch in {s}:\n{guard}        counts[ch] = counts.get(ch, 0) + 1\n"
        "    return counts\n"
    )
    return Problem(
        "char_counts",
        _pick(rng, "char_counts", "letter_histogram", "count_chars"),
        (s,),
        doc,
        body,
        _calls(lambda: (_sentence(rng, 1, 2),)),
    )


@_family
def _word_counts(rng: random.Random) -> Problem:
    s = _pick(rng, "sentence", "text", "line")
    doc = (
        f"Return a dictionary that maps each word of {s} (split on whitespace) to the number of times "
        "it occurs."
    )
    body = (
        f"    counts = {{}}\n    for w in {s}.split():\n        counts[w] = counts.get(w, 0) + 1\n"
        "    return counts\n"
    )

    def make() -> tuple[Any, ...]:
        pool = rng.sample(WORDS, 3)
        return (" ".join(rng.choice(pool) for _ in range(rng.randint(1, 7))),)

    return Problem(
        "word_counts",
        _pick(rng, "word_counts", "count_words", "word_frequencies"),
        (s,),
        doc,
        body,
        _calls(make),
    )


def _scores(rng: random.Random) -> dict[str, int]:
    """A random dict of names to small integer scores."""
    return {name: rng.randint(0, 20) for name in rng.sample(NAMES, rng.randint(0, 6))}


@_family
def _dict_filter(rng: random.Random) -> Problem:
    d, t = _pick(rng, "scores", "points", "grades"), rng.randint(3, 15)
    word, op = rng.choice([("at least", ">="), ("below", "<"), ("exactly", "==")])
    doc = (
        f"Given a dictionary {d} that maps names to integers, return the sorted list of names whose value "
        f"is {word} {t}."
    )
    body = f"    return sorted(name for name, v in {d}.items() if v {op} {t})\n"
    return Problem(
        "dict_filter",
        _pick(rng, "select_names", "names_matching", "filter_names"),
        (d,),
        doc,
        body,
        _calls(lambda: (_scores(rng),)),
    )


@_family
def _dict_aggregate(rng: random.Random) -> Problem:
    d = _pick(rng, "scores", "points", "stock")
    kind, expr = rng.choice(
        [
            ("total", f"sum({d}.values())"),
            ("best", f"max({d}, key=lambda k: ({d}[k], k))"),
            ("keys", f"sorted({d})"),
        ]
    )
    docs = {
        "total": f"Return the sum of the values of the dictionary {d}.",
        "best": f"Return the key with the largest value in the non-empty dictionary {d}; "
        "on a tie, return the alphabetically last of the tied keys.",
        "keys": f"Return the keys of the dictionary {d} as a sorted list.",
    }

    def make() -> tuple[Any, ...]:
        scores = _scores(rng)
        return (scores or {"zed": 1},) if kind == "best" else (scores,)

    return Problem(
        "dict_aggregate",
        _pick(rng, f"{kind}_of", f"dict_{kind}"),
        (d,),
        docs[kind],
        f"    return {expr}\n",
        _calls(make),
    )


@_family
def _invert_dict(rng: random.Random) -> Problem:
    d = _pick(rng, "mapping", "table", "lookup")
    doc = f"Return a dictionary that maps each value of {d} to its key; the values of {d} are all different."
    body = f"    return {{v: k for k, v in {d}.items()}}\n"

    def make() -> tuple[Any, ...]:
        keys = rng.sample(NAMES, rng.randint(0, 5))
        return ({k: v for k, v in zip(keys, rng.sample(range(50), len(keys)), strict=True)},)

    return Problem(
        "invert_dict", _pick(rng, "invert", "invert_dict", "swap_keys_values"), (d,), doc, body, _calls(make)
    )


@_family
def _group_by_length(rng: random.Random) -> Problem:
    w = _pick(rng, "words", "names", "tokens")
    doc = (
        f"Return a dictionary that maps each word length to the list of words of {w} with that length, "
        "in their original order."
    )
    body = (
        f"    groups = {{}}\n    for x in {w}:\n        groups.setdefault(len(x), []).append(x)\n"
        "    return groups\n"
    )
    return Problem(
        "group_by_length",
        _pick(rng, "group_by_length", "bucket_words"),
        (w,),
        doc,
        body,
        _calls(lambda: (_word_list(rng),)),
    )


# ----------------------------------------------------------------------------------------------
# Building records.


def _docstring(problem: Problem, example: tuple[Any, ...], result: Any) -> str:
    """The indented docstring block: the wrapped task statement and one doctest-style example."""
    text = textwrap.fill(problem.doc, width=96, initial_indent="    ", subsequent_indent="    ").lstrip()
    call = f"{problem.name}({', '.join(repr(a) for a in example)})"
    lines = [f'    """{text}', "", f"    >>> {call}", f"    {result!r}", '    """']
    return "\n".join(lines) + "\n"


def _run_reference(problem: Problem) -> list[tuple[tuple[Any, ...], Any]]:
    """Execute the reference solution on every input; return (arguments, result) pairs."""
    source = f"def {problem.name}({', '.join(problem.params)}):\n{problem.body}"
    namespace: dict[str, Any] = {"__builtins__": builtins}
    exec(compile(source, f"<{problem.family}>", "exec"), namespace)  # noqa: S102 - our own template code
    func = namespace[problem.name]
    pairs = []
    for args in problem.inputs:
        result = func(*copy.deepcopy(args))
        if result is None or eval(repr(result)) != result:  # noqa: S307 - literal of our own result
            raise RuntimeError(f"{problem.family}: result {result!r} is not a round-trippable literal")
        pairs.append((args, result))
    return pairs


def build_record(problem: Problem) -> dict[str, Any]:
    """Turn a problem into a record (without ``id``): prompt, reference body, entry point and tests."""
    pairs = _run_reference(problem)
    example_args, example_result = pairs[0]
    if "\\" in repr(example_args) + repr(example_result):
        raise RuntimeError(f"{problem.family}: example needs escapes inside the docstring")
    question = f"def {problem.name}({', '.join(problem.params)}):\n" + _docstring(
        problem, example_args, example_result
    )
    asserts = [
        f"    assert candidate({', '.join(repr(a) for a in args)}) == {result!r}" for args, result in pairs
    ]
    test = "def check(candidate):\n" + "\n".join(asserts) + "\n"
    return {
        "question": question,
        "answer": problem.body,
        "entry_point": problem.name,
        "test": test,
        "family": problem.family,
    }


def problem_key(problem: Problem) -> str:
    """The identity of a problem: its signature, statement and reference body (not its example inputs)."""
    return f"def {problem.name}({', '.join(problem.params)}):\n{problem.doc}\n{problem.body}"


def split_of(text: str) -> str:
    """The split a problem belongs to, from a hash of its text: 10 % test, 10 % valid, 80 % train."""
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def generate(sizes: dict[str, int], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Generate synthetic code problems for the train/valid/test splits.

    Args:
        sizes: number of problems per split, e.g. ``{"train": 3000, "valid": 100, "test": 100}``.
        seed: random seed; the same seed gives identical output.

    Returns:
        ``{split: [record, ...]}`` with records carrying ``id``, ``question``, ``answer``,
        ``entry_point``, ``test`` and ``family``. No question occurs twice (within or across splits).

    Raises:
        ValueError: for bad sizes, or if the template space cannot supply that many distinct problems.
    """
    sizes = check_sizes(sizes)
    rng = random.Random(seed)
    families = sorted(FAMILIES)
    out: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    fruitless = 0  # draws since the last problem that went into a split
    while any(len(out[s]) < sizes[s] for s in SPLITS):
        if fruitless > _MAX_FRUITLESS_DRAWS:
            counts = {s: len(out[s]) for s in SPLITS}
            raise ValueError(f"the templates ran out of distinct problems: got {counts} for sizes {sizes}")
        fruitless += 1
        problem = FAMILIES[rng.choice(families)](rng)
        key = problem_key(problem)
        if key in seen:
            continue
        seen.add(key)
        split = split_of(key)
        if len(out[split]) < sizes[split]:
            out[split].append({"id": f"{split}-{len(out[split]):06d}", **build_record(problem)})
            fruitless = 0
    return out
