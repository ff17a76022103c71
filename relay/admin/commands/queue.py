"""Queue control for the admin (``relay queue`` over HTTP): queue.list, queue.retry, queue.hold,
queue.release, queue.delete. A message's headers, recipients and events (``relay queue show``)
are emailgateway.getmessage.

Every command works on a selection of live recipients (waiting for delivery, scheduled, or
held): those of one or more messages (``MessageID``, queue ids), or with ``All`` every one,
narrowed by the filters ``SenderDomain``, ``RecipientDomain``, ``State`` and ``OlderThan``
(filters alone select too). The changes run in short transactions of their own
(relay/queue/control.py) beside the running delivery workers, and never take a recipient from
under a delivery in progress (``InDelivery`` says how many were). Each change is logged, one line
per message with its queue id, saying it was the admin key.
"""

from __future__ import annotations

from typing import Any

from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.queue import control
from relay.queue.control import Selection, SelectionError
from relay.queue.model import SHOWN_STATES

MAX_PAGE = 1000
DEFAULT_PAGE = 100


def _message_ids(call: Call) -> tuple[str, ...]:
    """``MessageID``: one queue id, several comma-separated, or a JSON array of them."""
    raw = call.params.raw("MessageID")
    items = raw if isinstance(raw, list) else (call.params.str("MessageID") or "").split(",")
    ids = [item.strip() for item in items if isinstance(item, str) and item.strip()]
    return tuple(dict.fromkeys(ids))


def _selection(call: Call, *, everything: bool) -> Selection:
    state = call.params.str("State")
    if state is not None and state.lower() not in SHOWN_STATES:
        raise ApiError(3, "Invalid State")
    try:
        older = call.params.int("OlderThan", lo=0)
    except ValueError:
        raise ApiError(4, "Invalid OlderThan") from None
    try:
        return Selection(
            message_ids=_message_ids(call),
            sender_domain=call.params.str("SenderDomain") or None,
            recipient_domain=call.params.str("RecipientDomain") or None,
            state=state.lower() if state else None,
            older_than=None if older is None else float(older),
            everything=everything or call.params.truthy("All"),
        )
    except SelectionError:  # pragma: no cover (the checks above come first)
        raise ApiError(3, "Invalid State") from None


@command("queue.list", auth="admin")
async def queue_list(call: Call) -> dict[str, Any]:
    """List the recipients waiting in the queue (like ``postqueue -p``): pending ones in the
    order of their next attempt, then the held ones, each with its message's queue id, its
    state (queued, scheduled, deferred, held), the delivery attempts so far, the next attempt
    (Unix time; null while held), the last reply, and whether a delivery holds it right now
    (``InDelivery``). Filters narrow the list. Pages of ``RetrieveCount``; ``Next`` is the
    ``After`` of the next page, null on the last.

    Parameters:
        SenderDomain (String): only messages sent for this sender domain (any account's).
        RecipientDomain (String): only recipients at this domain.
        State (String): only recipients in this state: queued, scheduled, deferred or held.
        OlderThan (Integer): only messages accepted more than this many seconds ago.
        RetrieveCount (Integer): recipients per page, 1 to 1000 (default 100).
        After (String): the ``Next`` of the previous page.

    Errors:
        0: Success
        3: Invalid State
        4: Invalid OlderThan
        5: Invalid RetrieveCount
        6: Invalid After
    """
    sel = _selection(call, everything=True)
    try:
        limit = call.params.int("RetrieveCount", lo=1, hi=MAX_PAGE) or DEFAULT_PAGE
    except ValueError:
        raise ApiError(5, "Invalid RetrieveCount") from None
    after = call.params.str("After")
    if call.params.has("After") and after is None:
        raise ApiError(6, "Invalid After")
    try:
        page = await control.list_queue(call.services.db, sel, after=after or None, limit=limit)
    except SelectionError:
        raise ApiError(6, "Invalid After") from None
    return ok(Recipients=[e.view() for e in page.entries], Next=page.after)


async def _change(call: Call, action: str) -> dict[str, Any]:
    sel = _selection(call, everything=False)
    if not sel.names_something:
        raise ApiError(1, "Missing required parameter (MessageID, All or a filter)")
    db = call.services.db
    if action == "retry":
        changed = await control.retry(db, sel)
    elif action == "hold":
        changed = await control.hold(db, sel)
    elif action == "release":
        changed = await control.release(db, sel)
    else:
        changed = await control.delete(db, sel, actor="admin")
    control.log_change(action, changed, sel, by="admin", via="api", client=call.request.remote)
    if changed.unknown and not changed.messages and not changed.in_delivery:
        raise ApiError(2, "Message not found")
    if action in ("retry", "release") and changed.messages:
        # This node's delivery workers, at once (other nodes: the NOTIFY, on PostgreSQL).
        call.services.notify_enqueued()
    return ok(**changed.view())


_SELECTION_DOC = """
    Parameters:
        MessageID (String, conditional): queue ids (one, several comma-separated, or a JSON
            array); else ``All`` or a filter is required.
        All (Boolean, conditional): every recipient the filters select (all of them without
            one).
        SenderDomain (String): only messages sent for this sender domain (any account's).
        RecipientDomain (String): only recipients at this domain.
        State (String): only recipients in this state: queued, scheduled, deferred or held.
        OlderThan (Integer): only messages accepted more than this many seconds ago.

    Errors:
        0: Success
        1: Missing required parameter (MessageID, All or a filter)
        2: Message not found
        3: Invalid State
        4: Invalid OlderThan
"""
_RESULT_DOC = """
    The answer counts the recipients changed (``Recipients``), their messages (``Messages``,
    ``QueueIDs``), those a delivery held at that moment (``InDelivery``), and names the queue
    ids that are no message (``Unknown``).
"""


@command("queue.retry", auth="admin")
async def queue_retry(call: Call) -> dict[str, Any]:
    return await _change(call, "retry")


queue_retry.__doc__ = (
    """Make deferred recipients due now (like ``postqueue -f``, or ``-i`` for one message):
    the delivery workers try them at once. A recipient being delivered right now is left to
    that attempt; scheduled messages keep their time; held ones stay held.
    """
    + _RESULT_DOC
    + _SELECTION_DOC
)


@command("queue.hold", auth="admin")
async def queue_hold(call: Call) -> dict[str, Any]:
    return await _change(call, "hold")


queue_hold.__doc__ = (
    """Put recipients on hold (like ``postsuper -h``): they are not delivered until released,
    across restarts; with ``SenderDomain``, a whole sender domain's queue. A recipient being
    delivered right now finishes that attempt: delivered or bounced, it is final; deferred,
    it stays held. Mail accepted later is not held (to stop a sender, disable its domain).
    """
    + _RESULT_DOC
    + _SELECTION_DOC
)


@command("queue.release", auth="admin")
async def queue_release(call: Call) -> dict[str, Any]:
    return await _change(call, "release")


queue_release.__doc__ = (
    """Release held recipients (like ``postsuper -H``): tried before, they are due now; never
    tried, they are due at once (a scheduled message at its time).
    """
    + _RESULT_DOC
    + _SELECTION_DOC
)


@command("queue.delete", auth="admin")
async def queue_delete(call: Call) -> dict[str, Any]:
    return await _change(call, "delete")


queue_delete.__doc__ = (
    """Delete recipients from the queue (like ``postsuper -d``): each becomes ``failed`` with a
    ``failed`` event (reply "Deleted from the queue by an operator", data reason ``deleted``
    and who deleted it), and the message content goes once no recipient needs it. A
    recipient being delivered right now is never taken from that delivery: it is held
    instead (``InDelivery``), so it is not tried again; delete again once its attempt is
    over.
    """
    + _RESULT_DOC
    + _SELECTION_DOC
)
