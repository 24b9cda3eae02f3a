"""Character-level addition, generated in code (the UNF paper's RNN-zoo task in miniature).

A problem ``a + b`` with ``a, b < 10**digits`` is the token sequence

    reversed digits of a, "+", reversed digits of b, "=", ``digits`` padding tokens

and its answer is the ``digits + 1`` digits of ``a + b``, least significant first, read at
the last ``digits + 1`` positions (the "=" and the padding). Reversed digits let a left-to-
right recurrent network carry as it reads, as in schoolbook addition.
"""

from __future__ import annotations

import numpy as np

PLUS, EQUALS, PAD = 10, 11, 12
VOCAB_SIZE = 13
ANSWER_CLASSES = 10


def _reversed_digits(numbers: np.ndarray, width: int) -> np.ndarray:
    """``(N,)`` integers to ``(N, width)`` base-10 digits, least significant first."""
    return (numbers[:, None] // 10 ** np.arange(width)) % 10


def addition_problems(digits: int, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Every ``a + b`` with ``digits``-digit operands, split into train and test by a shuffle.

    Args:
        digits: number of digits of each operand (all ``10**(2 * digits)`` pairs are made).
        test_fraction: share of the problems held out for ``test``.
        seed: seed of the fixed shuffle that splits them.

    Returns:
        ``{"train": {"inputs", "targets"}, "test": {...}}``: ``inputs`` int32
        ``(N, 3 * digits + 2)`` token ids, ``targets`` int32 ``(N, digits + 1)`` answer digits.
    """
    if digits < 1 or digits > 3:
        raise ValueError(f"addition_problems needs 1 <= digits <= 3, got {digits}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    a, b = np.divmod(np.arange(10 ** (2 * digits)), 10**digits)
    count = len(a)
    inputs = np.concatenate(
        [
            _reversed_digits(a, digits),
            np.full((count, 1), PLUS),
            _reversed_digits(b, digits),
            np.full((count, 1), EQUALS),
            np.full((count, digits), PAD),
        ],
        axis=1,
    ).astype(np.int32)
    targets = _reversed_digits(a + b, digits + 1).astype(np.int32)
    order = np.random.default_rng(seed).permutation(count)
    test_count = round(count * test_fraction)
    test, train = order[:test_count], order[test_count:]
    return {
        "train": {"inputs": inputs[train], "targets": targets[train]},
        "test": {"inputs": inputs[test], "targets": targets[test]},
    }
