"""Delivery statistics: what each message contributes to the rollup, and how rollup counts
become the figures the stats API answers with (rates, time-to-deliver percentiles). No I/O.

The database keeps ``stats_rollup`` up to date by trigger (migrations 0004, 0005 and 0010,
through ``stats_deltas``, see app.db.stats): every change of a ``messages`` or ``mos`` row
subtracts the row's old contribution and adds its new one, so the rollup always equals the
current, order-independent merge, and retries or
out-of-order events are never counted twice. The SQL twin of ``LATENCY_BUCKETS_S`` lives in
migration 0004, that of ``CARRIERS_WITHOUT_DLR`` in 0005; tests hold them together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

# Carriers that never send DLRs (Wavy's documentation): their messages stop at the callback,
# so "waiting for a DLR" means something else for them. Compared upper-cased, trimmed.
CARRIERS_WITHOUT_DLR = frozenset({"OI", "SERCOMTEL"})

# Upper bounds (seconds) of the time-to-deliver histogram; a last, open bucket holds the rest.
LATENCY_BUCKETS_S = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800,
)  # fmt: skip
OPEN_BUCKET = 2_147_483_647  # the "more than the last bound" bucket's value in the rollup
NO_STATUS = -1  # the code recorded for a stage that has not happened (no callback / no DLR)

# subAccount: the cost centres (Wavy's reports break down by sub-account); users see their own.
GroupBy = Literal["hour", "day", "carrier", "campaign", "subAccount"]

# Rollup metrics (the ``metric`` column) and what their ``value`` holds.
MESSAGES = "messages"  # value 0
SENT = "sent"  # value: sent status code, or NO_STATUS
DELIVERED = "delivered"  # value: delivered status code, or NO_STATUS
LATENCY = "latency"  # value: bucket upper bound (s) of delivered_at - sent_at, DLR code 4 only
WAITING = "waiting"  # value 1: the carrier sends DLRs, 0: it never does (sent 2, no DLR yet)
REPLIED = "replied"  # value 0: messages with at least one reply
REPLIES = "replies"  # value 0: replies to messages (weight = reply count)
MOS_RECEIVED = "mos_received"  # value 0: MOs received, grouped by their own time and carrier
# value 0: replies that opted out (app.db.stats.optout_counts; not kept in the rollup)
OPTOUTS = "optouts"


def carrier_sends_dlr(carrier_name: str | None) -> bool:
    return (carrier_name or "").strip().upper() not in CARRIERS_WITHOUT_DLR


@dataclass
class GroupCounts:
    """Everything the rollup holds for one group, summed."""

    messages: int = 0
    sent: dict[int, int] = field(default_factory=dict)
    delivered: dict[int, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)
    waiting_dlr_carrier: int = 0
    waiting_no_dlr_carrier: int = 0
    replied: int = 0
    replies: int = 0
    mos_received: int = 0
    optouts: int = 0

    def add(self, metric: str, value: int, count: int) -> None:
        if metric == MESSAGES:
            self.messages += count
        elif metric == SENT:
            self.sent[value] = self.sent.get(value, 0) + count
        elif metric == DELIVERED:
            self.delivered[value] = self.delivered.get(value, 0) + count
        elif metric == LATENCY:
            self.latency[value] = self.latency.get(value, 0) + count
        elif metric == WAITING:
            if value:
                self.waiting_dlr_carrier += count
            else:
                self.waiting_no_dlr_carrier += count
        elif metric == REPLIED:
            self.replied += count
        elif metric == REPLIES:
            self.replies += count
        elif metric == MOS_RECEIVED:
            self.mos_received += count
        elif metric == OPTOUTS:
            self.optouts += count


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def latency_percentile(histogram: Mapping[int, int], quantile: float) -> float | None:
    """The ``quantile`` of time-to-deliver in seconds, interpolated linearly inside the bucket
    where it falls (the rollup keeps buckets, not single times). In the open last bucket the
    answer is its lower bound: "at least this long"."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = quantile * total
    seen = 0
    lower = 0
    for upper in (*LATENCY_BUCKETS_S, OPEN_BUCKET):
        count = histogram.get(upper, 0)
        if count and seen + count >= rank:
            if upper == OPEN_BUCKET:
                return float(lower)
            return round(lower + (upper - lower) * (rank - seen) / count, 1)
        seen += count
        lower = upper
    return float(lower)


def code_counts(counts: Mapping[int, int]) -> dict[str, int]:
    """Status codes as JSON keys; the stage not reached yet is "none"."""
    return {
        ("none" if code == NO_STATUS else str(code)): n for code, n in sorted(counts.items()) if n
    }


# The campaign group of opt-outs replied to no known message (the API's key null): counted
# under "" (no campaign) they were a share of messages they never answered, a rate of 300 %.
# Internal only, after every campaign id in sort order; the API shows it as null.
NO_MESSAGE_KEY = "\U0010ffff"


def shown_key(key: str) -> str | None:
    return None if key == NO_MESSAGE_KEY else key


def group_figures(counts: GroupCounts, *, histogram: bool = False) -> dict[str, object]:
    """One group of the stats API's answer; the time-to-deliver histogram only when asked
    (the totals carry it: per group it would multiply the answer's size for a chart nobody
    draws per hour)."""
    accepted = counts.sent.get(2, 0)
    time_to_deliver: dict[str, object] = {
        "count": sum(counts.latency.values()),
        "p50": latency_percentile(counts.latency, 0.50),
        "p90": latency_percentile(counts.latency, 0.90),
        "p99": latency_percentile(counts.latency, 0.99),
    }
    if histogram:
        time_to_deliver["histogram"] = [
            {"le": None if bound == OPEN_BUCKET else bound, "count": counts.latency.get(bound, 0)}
            for bound in (*LATENCY_BUCKETS_S, OPEN_BUCKET)
        ]
    delivered_ok = counts.delivered.get(4, 0)
    return {
        "messages": counts.messages,
        "sentStatusCodes": code_counts(counts.sent),
        "deliveredStatusCodes": code_counts(counts.delivered),
        "deliveryRate": ratio(delivered_ok, accepted),
        "timeToDeliver": time_to_deliver,
        "waitingForDlr": {
            "carrierSendsDlr": counts.waiting_dlr_carrier,
            "carrierWithoutDlr": counts.waiting_no_dlr_carrier,
        },
        "mosReceived": counts.mos_received,
        "replies": counts.replies,
        "repliedMessages": counts.replied,
        "replyRate": ratio(counts.replied, counts.messages),
        "optOuts": counts.optouts,
        "optOutRate": ratio(counts.optouts, counts.messages),
    }


def sum_groups(
    rows: Iterable[tuple[str, str, int, int]],
) -> tuple[dict[str, GroupCounts], GroupCounts]:
    """(group key, metric, value, count) rows -> counts per group, and the totals."""
    groups: dict[str, GroupCounts] = {}
    totals = GroupCounts()
    for key, metric, value, count in rows:
        groups.setdefault(key, GroupCounts()).add(metric, value, count)
        totals.add(metric, value, count)
    return groups, totals


def within_the_calendar(last_hour: datetime, time_zone: str) -> bool:
    """False when the window's last hour, in the reader's zone, falls past year 9999 (east of
    UTC, the last hours of 9999 do): no date there can be written or read back."""
    try:
        last_hour.astimezone(ZoneInfo(time_zone))
    except OverflowError:
        return False
    return True
