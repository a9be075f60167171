"""The scope grammar and the one matching rule (services/edge/grants.py), as pure logic: what
a key or token may hold, and which names its patterns reach."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from bus import matches
from services.edge.grants import allows, holds_any, reaches, valid_scope

TOKENS = ("a", "b")
SUBJECTS = [".".join(p) for n in range(1, 5) for p in itertools.product(("a", "b", "c"), repeat=n)]
patterns = st.lists(st.sampled_from((*TOKENS, "*")), min_size=1, max_size=3).flatmap(
    lambda tokens: st.sampled_from([".".join(tokens), ".".join([*tokens[:-1], ">"])])
)


def test_the_scope_grammar() -> None:
    good = [
        "read",
        "write",
        "admin",
        "publish:tasks.*.created",
        "read:>",
        "read:$KV.settings.user1.>",
        "publish:$WF.review",
        "request:tasks.get",
    ]
    bad = [
        "delete:x",
        "read:",
        "read:a..b",
        "read:>.x",
        "read:$KV",
        "read:$KV.",
        "read:$XX.a",
        "read:tasks\uff0ex",
        "read:tasks.\u2024",
        "root",
        "read:" + "a." * 600 + "a",
    ]
    assert all(map(valid_scope, good))
    assert not any(map(valid_scope, bad))


def test_whole_scopes_and_patterns() -> None:
    reader = frozenset({"read"})
    limited = frozenset({"read:$KV.settings.user1.>", "publish:$WF.review"})
    assert allows(reader, "read", "$KV.anything.at.all")
    assert not allows(reader, "publish", "tasks.t1.created")
    assert allows(frozenset({"write"}), "request", "tasks.get")  # write holds requests
    assert allows(frozenset({"admin"}), "request", "tasks.get")
    assert allows(limited, "read", "$KV.settings.user1.a")
    assert allows(limited, "read", "$KV.settings.user1.>")  # a watch of all of it
    assert not allows(limited, "read", "$KV.settings.>")  # more than it holds
    assert not allows(limited, "read", "$KV.settings.user2.a")
    assert not allows(limited, "publish", "$WF.ship")
    assert reaches(limited, "read", "$KV.settings.>")  # listed: it holds part of it
    assert not reaches(limited, "read", "$KV.notes.>")
    assert holds_any(limited, ("publish",))
    assert not holds_any(limited, ("request",))


@given(patterns, patterns)
def test_patterns_intersect_when_a_subject_matches_both(a: str, b: str) -> None:
    common = any(matches(a, s) and matches(b, s) for s in SUBJECTS)
    assert reaches(frozenset({f"read:{a}"}), "read", b) == common, (a, b)
