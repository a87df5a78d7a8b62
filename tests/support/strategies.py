"""Hypothesis strategies whose arguments depend on drawn values, one strategy per set of
arguments.

A strategy built inside a composite's body is built again on every draw, and each new one is
validated and has its properties worked out again; that was most of the CPU of the unit
tests' properties. These caches build each once. Picks from a drawn sequence draw an index
(st.sampled_from draws positions, and st.permutations swaps positions), so the same draws
give the same values as sampling the sequence itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T")


@functools.cache
def ints(lo: int | None, hi: int | None) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


@functools.cache
def index_of(n: int) -> st.SearchStrategy[int]:
    """A position in a sequence of n, as st.sampled_from(seq) picks it."""
    return st.sampled_from(range(n))


@functools.cache
def index_subsets(n: int, min_size: int = 0,
                  max_size: int | None = None) -> st.SearchStrategy[list[int]]:
    """Distinct positions in a sequence of n, as st.lists(st.sampled_from(seq), unique=True)
    with these sizes picks them."""
    return st.lists(st.sampled_from(range(n)), min_size=min_size, max_size=max_size,
                    unique=True)


@functools.cache
def index_lists(n: int, min_size: int = 0,
                max_size: int | None = None) -> st.SearchStrategy[list[int]]:
    """Positions in a sequence of n, as st.lists(st.sampled_from(seq)) picks them."""
    return st.lists(st.sampled_from(range(n)), min_size=min_size, max_size=max_size)


@functools.cache
def orders(n: int) -> st.SearchStrategy[list[int]]:
    """Permutations of range(n), as st.permutations of any n items draws them."""
    return st.permutations(range(n))


def pick(draw: st.DrawFn, seq: Sequence[T]) -> T:
    """What draw(st.sampled_from(seq)) gives."""
    return seq[draw(index_of(len(seq)))]


def subset(draw: st.DrawFn, seq: Sequence[T], min_size: int = 0,
           max_size: int | None = None) -> list[T]:
    """What draw(st.lists(st.sampled_from(seq), unique=True, ...)) gives, for a sequence of
    distinct items."""
    return [seq[i] for i in draw(index_subsets(len(seq), min_size, max_size))]


def sample(draw: st.DrawFn, seq: Sequence[T], min_size: int = 0,
           max_size: int | None = None) -> list[T]:
    """What draw(st.lists(st.sampled_from(seq), ...)) gives."""
    return [seq[i] for i in draw(index_lists(len(seq), min_size, max_size))]


def permutation(draw: st.DrawFn, seq: Sequence[T]) -> list[T]:
    """What draw(st.permutations(seq)) gives."""
    return [seq[i] for i in draw(orders(len(seq)))]
