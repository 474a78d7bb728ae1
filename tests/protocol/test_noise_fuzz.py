"""Generative tests: whatever an attacker does to the messages of an XXpsk3 session, the
only exceptions are the `RemoteProtocolError` subtypes `HandshakeError` (handshake) and
`DecryptError` (transport), and a session nobody touched completes."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blazemesh.protocol.errors import HandshakeError
from blazemesh.protocol.noise import DecryptError, KeyPair, NoiseHandshake

NAME = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"
PSK = bytes(range(32))
STATICS = KeyPair.from_private(bytes([7]) * 32), KeyPair.from_private(bytes([8]) * 32)
HANDSHAKE_MESSAGES = 3
TRANSPORT_MESSAGES = 4  # after the handshake: responder, initiator, responder, initiator

FUZZ_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, tuple[int, ...], bytes]:
    """A kind of mutation and its arguments, applied to a message of any length later."""
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "replace", "insert"]))
    numbers = tuple(draw(st.lists(st.integers(0, 1 << 16), min_size=1, max_size=4)))
    data = draw(st.binary(min_size=1, max_size=80))
    return kind, numbers, data


def mutate(message: bytes, mutation: tuple[str, tuple[int, ...], bytes]) -> bytes:
    kind, numbers, data = mutation
    if kind == "flip":  # flip one to four bits anywhere
        out = bytearray(message)
        for n in numbers:
            out[(n >> 3) % len(out)] ^= 1 << (n & 7)
        return bytes(out)
    if kind == "truncate":
        return message[: numbers[0] % len(message)]
    if kind == "extend":
        return message + data
    if kind == "insert":
        at = numbers[0] % (len(message) + 1)
        return message[:at] + data + message[at:]
    return data  # replace with random bytes


def new_pair(seed: int) -> tuple[NoiseHandshake, NoiseHandshake]:
    rng = random.Random(seed).randbytes
    return tuple(  # type: ignore[return-value]
        NoiseHandshake(
            protocol_name=NAME,
            initiator=initiator,
            prologue=b"fuzz",
            static_keypair=STATICS[0] if initiator else STATICS[1],
            psks=[PSK],
            random_bytes=rng,
        )
        for initiator in (True, False)
    )


def run_session(seed: int, target: int | None, mutation: tuple[str, tuple[int, ...], bytes]) -> int:
    """Run a handshake and a few transport messages, mutating message ``target``.

    Returns the number of messages delivered intact; raises what the receiver raised.
    """
    initiator, responder = new_pair(seed)
    sides = [(initiator, responder), (responder, initiator)]
    for index in range(HANDSHAKE_MESSAGES):
        sender, receiver = sides[index % 2]
        message = sender.write_message(b"payload %d" % index)
        delivered = mutate(message, mutation) if index == target else message
        assert receiver.read_message(delivered) == b"payload %d" % index
        # Only an unchanged message is accepted: in psk mode every handshake message
        # carries a tag over the whole transcript so far (Noise §9.2).
        assert delivered == message
    assert initiator.complete
    assert responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    transports = initiator.split(), responder.split()
    for index in range(HANDSHAKE_MESSAGES, HANDSHAKE_MESSAGES + TRANSPORT_MESSAGES):
        out, into = transports if index % 2 == 0 else transports[::-1]
        message = out.encrypt(b"transport %d" % index)
        delivered = mutate(message, mutation) if index == target else message
        assert into.decrypt(delivered) == b"transport %d" % index
        assert delivered == message
    return HANDSHAKE_MESSAGES + TRANSPORT_MESSAGES


@FUZZ_SETTINGS
@given(
    seed=st.integers(0, 2**32),
    target=st.integers(0, HANDSHAKE_MESSAGES + TRANSPORT_MESSAGES - 1),
    mutation=mutations(),
)
def test_a_mutated_message_raises_only_a_remote_protocol_error(
    seed: int, target: int, mutation: tuple[str, tuple[int, ...], bytes]
) -> None:
    try:
        run_session(seed, target, mutation)
    except HandshakeError:
        assert target < HANDSHAKE_MESSAGES
    except DecryptError:
        assert target >= HANDSHAKE_MESSAGES
    # Anything else (AssertionError included: a changed message accepted) fails the test.
    # A mutation can leave a message unchanged (replacing it with itself); then the session
    # runs to the end, which run_session checks.


@FUZZ_SETTINGS
@given(seed=st.integers(0, 2**32))
def test_an_untouched_session_completes(seed: int) -> None:
    assert run_session(seed, None, ("flip", (0,), b"")) == 7


@FUZZ_SETTINGS
@given(
    seed=st.integers(0, 2**32),
    garbage=st.lists(st.binary(max_size=200), min_size=1, max_size=3),
)
def test_garbage_from_a_stranger_raises_only_remote_protocol_errors(
    seed: int, garbage: list[bytes]
) -> None:
    # Whatever arrives first, at either role, is refused with a HandshakeError: a stranger
    # without the PSK cannot get past the first message (any other exception fails).
    initiator, responder = new_pair(seed)
    initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        responder.read_message(garbage[0])
    with pytest.raises(HandshakeError):
        initiator.read_message(garbage[-1])
