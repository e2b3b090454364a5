"""Seeds of the random streams of a run: one derivation, so that no two streams of a run can replay each other.

Why not `seed + i`: accelerate's `SeedableRandomSampler` shuffles epoch `e` with a generator seeded `data_seed + e`.
With member data seeds `seed + i`, member `i`'s epoch `e` used the seed `seed + i + e`, so member `i + 1`'s epoch
`e - 1` replayed it: every member walked its predecessor's shuffles, shifted by one epoch. Any stream seeded by a
base plus a small counter has the same flaw, whatever counter is added later.

[`derive_seed`] hashes a seed and a stream key through `numpy.random.SeedSequence` (a mixing hash built to give
independent streams for distinct entropy, even for entropy that differs by one) into a uniformly spread 32-bit value.
"""

from __future__ import annotations

import numpy as np

SEED_BITS = 32


def derive_seed(seed: int, *stream: int | str) -> int:
    """A 32-bit seed for the random stream `stream` (e.g. `"data", index`) of something seeded `seed`.

    The value is `numpy.random.SeedSequence([seed, *stream]).generate_state(1)`, with string keys encoded as integers:
    a deterministic hash of the whole key, uniformly spread over `[0, 2**32)` and unrelated for keys that differ in any
    part (`derive_seed(42, "data", 1)` and `derive_seed(43, "data", 0)` share nothing).

    Args:
        seed (`int`): The seed of the run or member (any integer; negative values are taken modulo `2**64`).
        stream (`int` or `str`): The key of the stream (its purpose, a member index, ...).
    """
    entropy = [int(seed) % 2**64, *(_key(part) for part in stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def member_data_seed(seed: int, index: int) -> int:
    """The data-order seed of member `index` whose own seed is `seed` (every training path uses this one function).

    Trainer loop: epoch `e` of the member is shuffled by accelerate's `SeedableRandomSampler` seeded
    `member_data_seed(seed, index) + e`. Two members `i != j` of a run share an epoch's order only if their data seeds
    lie within `E` (the epochs of the longer one) of each other; since the `(seed, index)` keys of a run's members are
    distinct, their data seeds are independent uniform 32-bit values and that happens with probability below
    `K**2 * E / 2**32` for `K` members (about 2e-6 for 10 members x 100 epochs, 5e-8 for the demo's 5 x 10), instead of
    for sure with `seed + i`. The member-parallel loop, the vectorised members and the post-hoc builders draw every
    epoch from one persistent generator seeded with this value, so their epochs never repeat within a member either.
    The index is part of the key, so members given equal seeds (allowed for Global DE) still get their own order.

    Args:
        seed (`int`): The member's seed (`MemberPlan.seed`: `seed + index` unless `member_seeds` is given).
        index (`int`): The member's index.
    """
    return derive_seed(seed, "data", index)


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return int.from_bytes(part.encode("utf-8"), "little") + 2**64  # never equal to an integer key below 2**64
    return int(part) % 2**64
