"""`protocol.clones`: two running instances of one node are caught by their run ids, a
restart or a redial never is (docs/protocol.md 8.5)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.clones import (
    CLONE_COOLDOWN_S,
    CLONE_REASON,
    MAX_RUNS_PER_NODE,
    MAX_TRACKED_NODES,
    RUN_ID_BYTES,
    RUN_META_KEY,
    Accept,
    Refuse,
    RunTracker,
    run_of,
)
from blazemesh.protocol.codec import PROTOCOL_VERSION
from blazemesh.protocol.codec.messages import (
    MAX_META_BYTES,
    REFUSAL_REASONS,
    Control,
    Hello,
    MessageDecoder,
    MessageEncoder,
    Refused,
)
from blazemesh.protocol.vv import VersionVector

X = b"x" * 16
R1, R2, R3 = b"1" * RUN_ID_BYTES, b"2" * RUN_ID_BYTES, b"3" * RUN_ID_BYTES


def hello(t: RunTracker, run: bytes, opened: float | None, now: float, node: bytes = X) -> bool:
    """Feed one hello; whether the link is refused."""
    return isinstance(t.hello(node, run, opened=opened, now=now, place="here"), Refuse)


def test_a_run_that_comes_back_after_another_replaced_it_is_a_clone() -> None:
    t = RunTracker()
    assert not hello(t, R1, opened=0.0, now=0.1)
    assert not hello(t, R2, opened=1.0, now=1.1)  # a restart, as far as anyone can tell
    verdict = t.hello(X, R1, opened=2.0, now=2.1, place="there")  # R1 answered after R2
    assert isinstance(verdict, Refuse)
    assert verdict.caught
    assert verdict.clone.node_id == X
    assert verdict.clone.until == 2.1 + CLONE_COOLDOWN_S
    assert verdict.clone.places == ("there", "here")
    assert [c.node_id for c in t.clones(3.0)] == [X]


def test_a_caught_node_is_refused_on_every_link_for_the_cool_down_then_judged_afresh() -> None:
    t = RunTracker()
    hello(t, R1, 0.0, 0.1)
    hello(t, R2, 1.0, 1.1)
    assert hello(t, R1, 2.0, 2.1)
    end = 2.1 + CLONE_COOLDOWN_S
    for run in (R1, R2, R3):
        verdict = t.hello(X, run, opened=end - 1, now=end - 0.5, place="p")
        assert isinstance(verdict, Refuse)
        assert not verdict.caught  # said once, when caught
    # After the cool-down the evidence seen before is forgotten: one instance alone is fine.
    assert not hello(t, R1, end, end + 0.1)
    assert not hello(t, R1, end + 5, end + 5.1)
    assert t.clones(end + 6) == []
    # ... and two that still run are caught again at their next alternation.
    assert not hello(t, R2, end + 7, end + 7.1)
    assert hello(t, R1, end + 8, end + 8.1)


def test_a_dead_runs_hello_read_late_proves_nothing() -> None:
    """R1's link began before R2's hello, so R1 may have died before R2 started."""
    t = RunTracker()
    assert not hello(t, R2, opened=1.0, now=1.5)
    assert not hello(t, R1, opened=0.5, now=2.0)
    assert t.clones(3.0) == []


def test_links_that_prove_nothing_after_they_began_never_catch() -> None:
    """A plain stream (simulation without encryption): the hello may predate the link."""
    t = RunTracker()
    for i in range(20):
        assert not hello(t, (R1, R2)[i % 2], opened=None, now=float(i))


def test_a_peer_without_run_ids_is_taken_as_before() -> None:
    t = RunTracker()
    for i in range(5):
        assert isinstance(t.hello(X, None, opened=float(i), now=i + 0.1, place="p"), Accept)


@st.composite
def restarts(draw: st.DrawFn) -> list[tuple[float, float, bytes]]:
    """The hellos of one node restarting: (opened, now, run), in the order they arrive.

    Each run lives in its own interval, after the one before. A link's hello proves its
    run alive at some moment of its lifetime, after ``opened`` (which may be any time
    before, even in an earlier run's lifetime) and before ``now`` (which may be any time
    after, even a later run's: read late)."""
    runs = draw(st.integers(1, 6))
    hellos = []
    start = 0.0
    for r in range(runs):
        life = draw(st.floats(0.1, 100))
        for _ in range(draw(st.integers(1, 4))):
            alive = start + draw(st.floats(0, 1)) * life
            opened = alive - draw(st.floats(0.001, 200))
            now = alive + draw(st.floats(0.001, 200))
            hellos.append((opened, now, r.to_bytes(RUN_ID_BYTES, "big")))
        start += life + draw(st.floats(0.001, 10))
    return sorted(hellos, key=lambda h: h[1])


@given(restarts())
def test_a_node_that_restarts_is_never_a_clone(hellos: list[tuple[float, float, bytes]]) -> None:
    t = RunTracker()
    for opened, now, run in hellos:
        assert not hello(t, run, opened, now)


@given(st.lists(st.floats(0.01, 10), min_size=1, max_size=20))
def test_redials_of_one_run_are_never_a_clone(gaps: list[float]) -> None:
    t = RunTracker()
    now = 0.0
    for gap in gaps:
        assert not hello(t, R1, opened=now, now=now + gap / 2)
        now += gap


@given(st.lists(st.integers(0, 3), min_size=2, max_size=30))
def test_instances_that_alternate_are_caught_at_the_first_comeback(order: list[int]) -> None:
    """Runs that all live at once, linking in turn: caught exactly when a run comes back
    after another one's hello, and refused from then on."""
    t = RunTracker()
    seen: list[int] = []
    caught_at = None
    for i, r in enumerate(order):
        refused = hello(t, bytes([r]) * RUN_ID_BYTES, opened=float(i), now=i + 0.5)
        comeback = r in seen and any(s != r for s in seen[seen.index(r) :])
        if caught_at is None:
            assert refused == comeback
            caught_at = i if refused else None
        else:
            assert refused
        seen.append(r)


def test_memory_is_bounded() -> None:
    t = RunTracker()
    for i in range(MAX_TRACKED_NODES + 10):
        node = i.to_bytes(16, "big")
        for run in range(MAX_RUNS_PER_NODE + 3):
            hello(t, run.to_bytes(RUN_ID_BYTES, "big"), opened=None, now=float(i), node=node)
    assert len(t._nodes) == MAX_TRACKED_NODES
    assert all(len(runs.runs) == MAX_RUNS_PER_NODE for runs in t._nodes.values())


def test_the_oldest_runs_are_forgotten_first() -> None:
    t = RunTracker()
    hello(t, R1, 0.0, 0.5)
    for i in range(MAX_RUNS_PER_NODE):  # restarts push R1 out
        hello(t, bytes([100 + i]) * RUN_ID_BYTES, i + 1.0, i + 1.5)
    assert not hello(t, R1, 10.0, 10.5)  # not caught (it would have been): a delay, no harm


def test_told_is_one_episode_while_peers_keep_saying_so() -> None:
    t = RunTracker()
    assert t.told_now(0.0) is None
    assert t.told(X, now=1.0, place="b:7420")
    for i in range(2, 50):
        assert not t.told(X, now=i * 5.0, place="b:7420")
    told = t.told_now(250.0)
    assert told is not None
    assert (told.first_at, told.last_at, told.place) == (1.0, 245.0, "b:7420")
    assert t.told_now(245.0 + CLONE_COOLDOWN_S) is None
    assert t.told(X, now=245.0 + CLONE_COOLDOWN_S, place="b:7420")  # a new episode


def test_run_of_reads_a_run_id_and_ignores_anything_else() -> None:
    assert run_of({RUN_META_KEY: R1}) == R1
    for bad in (None, b"short", R1 + b"x", "r" * RUN_ID_BYTES, 7, [R1]):
        assert run_of({RUN_META_KEY: bad}) is None
    assert run_of({}) is None


def test_the_wire_carries_the_run_id_and_the_refusal() -> None:
    assert CLONE_REASON in REFUSAL_REASONS
    encoder, decoder = MessageEncoder(), MessageDecoder()
    meta = {RUN_META_KEY: R1}
    sent: list[Control] = [
        Hello(version=PROTOCOL_VERSION, node_id=X, vv=VersionVector(), clock_ms=1, meta=meta),
        Refused(reason=CLONE_REASON, ranges=[], clock_ms=2),
    ]
    decoder.feed(b"".join(encoder.encode(m) for m in sent))
    got = list(decoder)
    assert run_of(got[0].meta) == R1  # type: ignore[union-attr]
    assert got[1] == sent[1]
    assert len(encoder.encode(sent[0])) < MAX_META_BYTES
