"""Which remote changes a replica takes (docs/protocol.md, section 8.3).

A node refuses a remote change, and tells the peer why, when taking it would

- put words in its own mouth: only the node makes changes under its own id, so a remote
  change under that id that it does not hold was forged by a member, or was made by a
  copy of this node's data directory (`OwnOriginError`) -- unless the node knows it runs
  on a restored copy and the seq is one the copy may have issued (``own_lost``): then it
  is the node's own change, lost with the copy, and taken back;
- leave an origin with more gaps than `MAX_RUNS_HELD` (all origins together, more than
  `MAX_TOTAL_RUNS_HELD`), or hold changes of more origins than `MAX_ORIGINS_HELD`: a
  node's version vector is sent whole in every HELLO and SUMMARY, so what it holds must
  stay within what every peer's decoder accepts (`GapLimitError`, `OriginLimitError`);
- drag its clock into the future (`protocol.hlc.check_skew`, applied by the caller with
  its wall clock).

Refused changes are offered again after the next SUMMARY: a gap may have closed by then,
and a clock may have caught up.
"""

from __future__ import annotations

from blazemesh.protocol.codec.messages import MAX_VV_ORIGINS, MAX_VV_RUNS, MAX_VV_TOTAL_RUNS
from blazemesh.protocol.errors import GapLimitError, OriginLimitError, OwnOriginError
from blazemesh.protocol.model import Change
from blazemesh.protocol.vv import VersionVector

MAX_RUNS_HELD = MAX_VV_RUNS // 4  # gaps per origin: honest arrivals out of order leave a few
MAX_TOTAL_RUNS_HELD = MAX_VV_TOTAL_RUNS // 4  # gaps over all origins
MAX_ORIGINS_HELD = MAX_VV_ORIGINS // 4  # origins a node holds changes of: three times the
# largest simulated mesh, for devices that come and go over a mesh's life


class Admission:
    """The checks for one batch of remote changes against ``vv`` as it was before the
    batch; changes `admit` passes count against the bounds for the rest of the batch
    (a change next to none held or admitted counts as a new run, though it may later
    join two: the count never falls short)."""

    __slots__ = (
        "_max_origins",
        "_max_runs",
        "_max_total_runs",
        "_new_origins",
        "_new_runs",
        "_node_id",
        "_open_first",
        "_open_last",
        "_own_lost",
        "_taken",
        "_vv",
    )

    def __init__(
        self,
        node_id: bytes,
        vv: VersionVector,
        *,
        max_runs: int = MAX_RUNS_HELD,
        max_total_runs: int = MAX_TOTAL_RUNS_HELD,
        max_origins: int = MAX_ORIGINS_HELD,
        own_lost: tuple[int, int] | None = None,
    ) -> None:
        self._node_id = node_id
        self._own_lost = own_lost  # own seqs an earlier copy may have issued: taken back
        self._vv = vv
        self._max_runs = max_runs
        self._max_total_runs = max_total_runs
        self._max_origins = max_origins
        # The dots taken so far: per origin the run being extended (its first and last
        # seq: ints, which the collector does not track), the rest in `_taken`. A
        # catch-up brings an origin's changes in order, each extending the open run.
        self._open_first: dict[bytes, int] = {}
        self._open_last: dict[bytes, int] = {}
        self._taken = VersionVector()
        self._new_runs: dict[bytes, int] = {}
        self._new_origins: set[bytes] = set()

    def admit(self, change: Change) -> None:
        """Count ``change`` (not held) as taken, or raise the `ChangeRefusedError` that
        says why it is not."""
        origin, seq = change.origin, change.seq
        last = self._open_last.get(origin)
        if last is not None:
            if seq == last + 1:
                self._open_last[origin] = seq  # next to one taken: no new gap
                return
            self._taken.add_range(origin, self._open_first[origin], last)
        self._check(origin, seq)
        self._open_first[origin] = self._open_last[origin] = seq

    def _check(self, origin: bytes, seq: int) -> None:
        vv = self._vv
        lost = self._own_lost
        if origin == self._node_id and not (lost is not None and lost[0] <= seq <= lost[1]):
            raise OwnOriginError(
                f"change {seq} under this node's own id is not one it holds: forged by a "
                "member, or made by a copy of this node's data directory"
            )
        if not vv.knows(origin) and origin not in self._new_origins:
            if vv.origin_count() + len(self._new_origins) >= self._max_origins:
                raise OriginLimitError(
                    f"this node holds changes of {self._max_origins} origins, its limit"
                )
            self._new_origins.add(origin)
        if self._opens_run(origin, seq):
            new = self._new_runs.get(origin, 0)
            if len(vv.runs(origin)) + new >= self._max_runs:
                raise GapLimitError(
                    f"change {seq} would open gap {self._max_runs + 1} in its origin's "
                    "changes, past the limit; it is taken once the gaps before it close"
                )
            if vv.run_count + sum(self._new_runs.values()) >= self._max_total_runs:
                raise GapLimitError(
                    f"change {seq} would open gap {self._max_total_runs + 1} over all "
                    "origins, past the limit; it is taken once earlier gaps close"
                )
            self._new_runs[origin] = new + 1

    def _opens_run(self, origin: bytes, seq: int) -> bool:
        """Whether ``seq`` (held by neither) touches nothing ``vv`` holds or was taken."""
        taken = self._taken
        return (
            (origin, seq - 1) not in taken
            and (origin, seq + 1) not in taken
            and self._vv.opens_run(origin, seq)
        )
