"""A host's protocol timers, kept on one event-loop timer of the runtime's clock.

`MachineHost` (`dtxn.runtime.hosting._host`) turns `SetTimer` into `TimerWheel.arm` and
`CancelTimer` into `Timer.cancel`; when a deadline is reached the wheel calls
the host back with the `Timer`, and the host dispatches `TimerFired`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtxn.actors.timing import Cancellable

if TYPE_CHECKING:
    # Only for annotations: hosting imports this module at run time.
    from dtxn.runtime.hosting._host import HostServices


# A deadline this close to the clock's reading counts as reached: the loop
# timer is set from a difference of clock readings, which can round either way.
_DEADLINE_SLACK_S = 1e-6
# A lane is rebuilt without its cancelled timers once they outnumber the live
# ones by this much (cancellations out of arming order leave dead entries
# behind the live front).
_LANE_SLACK = 64


class Timer:
    """One protocol timer armed by a host (the `Cancellable` in `_Txn.timers`)."""

    __slots__ = ("deadline_s", "lane", "live", "name", "seq", "txid")

    def __init__(self, lane: _Lane, deadline_s: float, seq: int, txid: str, name: str) -> None:
        self.lane = lane
        self.deadline_s = deadline_s
        self.seq = seq
        self.txid = txid
        self.name = name
        self.live = True

    def cancel(self) -> None:
        if self.live:
            self.live = False
            self.lane.cancelled()


class _Lane:
    """The timers armed with one delay: in arming order, so in deadline order too."""

    __slots__ = ("delay_s", "entries", "live", "owner")

    def __init__(self, owner: TimerWheel, delay_s: float) -> None:
        self.owner = owner
        self.delay_s = delay_s
        self.entries: deque[Timer] = deque()
        self.live = 0

    def cancelled(self) -> None:
        self.live -= 1
        entries = self.entries
        # Transactions mostly end in the order they began, so the cancelled
        # timer is usually at the front: drop it (and any dead ones behind it).
        while entries and not entries[0].live:
            entries.popleft()
        if len(entries) > 2 * self.live + _LANE_SLACK:
            self.entries = deque(timer for timer in entries if timer.live)
        if not self.live:
            self.owner.emptied(self)


class TimerWheel:
    """A host's protocol timers on one event-loop timer.

    Every transaction arms and cancels a few timers (votes, acks, decision)
    that almost never fire. A loop timer each costs an allocation, a heap
    insertion and a cancellation in the loop; here arming is an append to the
    lane of its delay (deadlines rise along a lane, since the clock does), and
    cancelling marks the entry dead. One loop timer is set for the earliest
    deadline; when it rings, every timer due fires, in deadline order (arming
    order among equal deadlines), as separate loop timers would.
    """

    def __init__(self, services: HostServices, fire: Callable[[Timer], None]) -> None:
        self._services = services
        self._now = services.clock.now
        self._fire = fire
        self._lanes: dict[float, _Lane] = {}
        self._seq = 0
        self._alarm: Cancellable | None = None
        self._alarm_s = 0.0  # the deadline `_alarm` rings for

    def arm(self, delay_s: float, txid: str, name: str) -> Timer:
        lane = self._lanes.get(delay_s)
        if lane is None:
            lane = self._lanes[delay_s] = _Lane(self, delay_s)
        now_s = self._now()
        deadline_s = now_s + delay_s
        self._seq += 1
        timer = Timer(lane, deadline_s, self._seq, txid, name)
        lane.entries.append(timer)
        lane.live += 1
        if self._alarm is None or deadline_s < self._alarm_s:
            self._set_alarm(deadline_s, now_s)
        return timer

    def emptied(self, lane: _Lane) -> None:
        """`lane` holds no live timer any more (its last one was cancelled)."""
        if self._lanes.get(lane.delay_s) is lane:
            del self._lanes[lane.delay_s]
        if not self._lanes and self._alarm is not None:
            # Nothing left to ring for: leave the loop without a pending timer.
            self._alarm.cancel()
            self._alarm = None

    def close(self) -> None:
        """Call off every timer (a stopping or crashed node)."""
        for lane in self._lanes.values():
            for timer in lane.entries:
                timer.live = False
        self._lanes.clear()
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None

    def _set_alarm(self, deadline_s: float, now_s: float) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm_s = deadline_s
        self._alarm = self._services.call_later(max(0.0, deadline_s - now_s), self._ring)

    def _ring(self) -> None:
        self._alarm = None
        now_s = self._services.clock.now()
        due: list[Timer] = []
        for delay_s, lane in list(self._lanes.items()):
            entries = lane.entries
            while entries:
                timer = entries[0]
                if timer.live:
                    if timer.deadline_s > now_s + _DEADLINE_SLACK_S:
                        break
                    timer.live = False
                    lane.live -= 1
                    due.append(timer)
                entries.popleft()
            if not entries:
                del self._lanes[delay_s]
        if len(due) > 1:
            due.sort(key=_timer_order)
        for timer in due:
            self._fire(timer)
        self._rearm(now_s)

    def _rearm(self, now_s: float) -> None:
        """Set the loop timer for the earliest live deadline (fired timers may have armed some)."""
        earliest: float | None = None
        for lane in self._lanes.values():
            if lane.entries:
                deadline_s = lane.entries[0].deadline_s
                if earliest is None or deadline_s < earliest:
                    earliest = deadline_s
        if earliest is not None and (self._alarm is None or earliest < self._alarm_s):
            self._set_alarm(earliest, now_s)


def _timer_order(timer: Timer) -> tuple[float, int]:
    return timer.deadline_s, timer.seq
