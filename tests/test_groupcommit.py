"""The group-commit primitive every batched writer uses."""

from __future__ import annotations

import asyncio

import pytest

from relay.queue.groupcommit import GroupCommit
from relay.store.db import StorageUnavailable


async def test_concurrent_submissions_share_one_commit_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    async def commit(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(commit, name="t")
    group.start()
    results = await asyncio.gather(*(group.submit([i, i + 100]) for i in range(20)))
    await group.stop()
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    assert len(calls) < 20  # batched
    assert sorted(x for c in calls for x in c) == sorted([*range(20), *range(100, 120)])


async def test_a_bad_submission_does_not_cost_the_others_their_commit() -> None:
    async def commit(items: list[int]) -> list[None]:
        if 13 in items:
            raise ValueError("poison")
        return [None] * len(items)

    group: GroupCommit[int, None] = GroupCommit(commit, name="t", retry_delays=(0.01,))
    group.start()
    results = await asyncio.gather(
        *(group.submit([i]) for i in range(10, 16)), return_exceptions=True
    )
    await group.stop()
    assert [isinstance(r, StorageUnavailable) for r in results] == [
        False, False, False, True, False, False,
    ]  # fmt: skip


async def test_a_transient_failure_is_retried() -> None:
    failures = [1]

    async def commit(items: list[int]) -> list[None]:
        if failures:
            failures.pop()
            raise StorageUnavailable("blip")
        return [None] * len(items)

    group: GroupCommit[int, None] = GroupCommit(commit, name="t", retry_delays=(0.01,))
    group.start()
    assert await group.submit([1]) == [None]
    await group.stop()


async def test_stop_commits_what_was_enqueued_and_then_refuses() -> None:
    seen: list[int] = []

    async def commit(items: list[int]) -> list[None]:
        seen.extend(items)
        return [None] * len(items)

    group: GroupCommit[int, None] = GroupCommit(commit, name="t")
    group.start()
    group.enqueue([1, 2])
    group.enqueue([3])
    await group.stop()
    assert seen == [1, 2, 3]
    with pytest.raises(StorageUnavailable):
        group.enqueue([4])


async def test_the_after_commit_step_runs_before_the_waiters_and_never_undoes_the_commit() -> None:
    seen: list[str] = []

    async def commit(items: list[int]) -> list[int]:
        seen.append("commit")
        return [-i for i in items]

    async def after(items: list[int], results: list[int]) -> None:
        await asyncio.sleep(0)
        seen.append(f"after {items} {results}")
        raise RuntimeError("the bus is down")  # logged; the commit stands

    group: GroupCommit[int, int] = GroupCommit(commit, name="t", on_commit=after)
    group.start()
    assert await group.submit([1, 2]) == [-1, -2]
    seen.append("waiter")
    await group.stop()
    assert seen == ["commit", "after [1, 2] [-1, -2]", "waiter"]
