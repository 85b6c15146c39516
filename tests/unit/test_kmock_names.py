"""The emulated Kubernetes API's generated names (tests/support/kmockserver.py generated_name): made as
the API server makes them, drawn again on a collision, so thousands of kopf Events never clash."""

from __future__ import annotations

import random
import re

import pytest
from kmockserver import GENERATE_ATTEMPTS, MAX_PREFIX, NAME_ALPHABET, NameClash, generated_name


class Scripted(random.Random):
    """A random source whose choices are scripted: each `choice` returns the next character given."""

    def __init__(self, characters: str) -> None:
        super().__init__(0)
        self.left = list(characters)

    def choice(self, seq):  # type: ignore[override]
        char = self.left.pop(0)
        assert char in seq
        return char


def test_a_generated_name_is_the_prefix_and_five_characters_of_the_api_servers_alphabet():
    assert NAME_ALPHABET == "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery util/rand
    names = {generated_name("topic-a.", lambda _: False, random.Random(seed)) for seed in range(200)}
    assert len(names) == 200
    assert all(re.fullmatch(r"topic-a\.[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names), names
    long = generated_name("p" * 80, lambda _: False, random.Random(1))
    assert len(long) == 63 and long.startswith("p" * MAX_PREFIX)  # a prefix cut to 58, as the API server does


def test_a_taken_name_is_drawn_again_and_a_clash_only_when_every_draw_is_taken():
    taken = {"e.bbbbb", "e.ccccc"}
    name = generated_name("e.", taken.__contains__, Scripted("bbbbb" "ccccc" "dfghj"))
    assert name == "e.dfghj"
    with pytest.raises(NameClash):
        generated_name("e.", lambda _: True, Scripted("b" * 5 * GENERATE_ATTEMPTS))


def test_names_for_many_events_of_one_object_never_repeat():
    # kopf names every Event of an object <name>.<5 characters>: 20,000 of one prefix, with the taken
    # ones drawn again, are all distinct (without the retry, about 14 would collide among 27**5 names).
    rng = random.Random(7)
    seen: set[str] = set()
    for _ in range(20_000):
        seen.add(generated_name("t00042.", seen.__contains__, rng))
    assert len(seen) == 20_000
