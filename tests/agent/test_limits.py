"""The connection bounds an agent derives from its open-file limit."""

from __future__ import annotations

import pytest

from blazemesh.agent.errors import ConfigError
from blazemesh.agent.links.limits import (
    MAX_HANDSHAKE_SLOTS,
    OTHER_FILES,
    HandshakeSlots,
    connection_limits,
)


@pytest.mark.parametrize("files", [256, 1_024, 4_096, 20_000, 1_048_576])
def test_connections_stay_below_the_file_limit_with_room_for_the_rest(files: int) -> None:
    limits = connection_limits(files, control_clients=64)
    assert limits.files == files
    assert limits.handshakes + limits.links == files - OTHER_FILES - 64
    assert 1 <= limits.handshakes <= MAX_HANDSHAKE_SLOTS
    assert limits.handshakes <= limits.links


def test_the_figures_the_docs_give() -> None:
    low = connection_limits(256, control_clients=64)
    assert (low.handshakes, low.links) == (32, 96)
    common = connection_limits(1_024, control_clients=64)
    assert (common.handshakes, common.links) == (224, 672)


def test_a_limit_too_low_to_run_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="open-file limit is 100, and blazemesh needs at least"):
        connection_limits(100, control_clients=64)


def test_a_node_needs_a_handshake_slot() -> None:
    with pytest.raises(ValueError, match="at least one handshake slot"):
        HandshakeSlots(0)
