"""ray_runtime.retried_blocks: what the Ray engines do when an actor of their pool dies, on a
stand-in pipeline that loses its actor at chosen rows (no Ray needed: the Ray tests kill real
actors, tests/stage_one/test_ray_engine.py and tests/catalogue/test_ray_predict.py)."""

import pytest

from wav2genre_cache.errors import RayEngineError
from wav2genre_cache.stage_one import ray_runtime
from wav2genre_cache.stage_one.ray_runtime import ActorDied, retried_blocks


def dying_pipeline(monkeypatch, deaths: list[int]) -> list[list[int]]:
    """Make pipeline_rows give its items back, its actor dying once each run has given
    deaths[run] rows (while deaths last); returns the items each run was given."""
    runs: list[list[int]] = []

    def pipeline_rows(ray, items, decode, then, resume_hint):
        runs.append([item["i"] for item in items])
        for n, item in enumerate(items):
            if len(runs) <= len(deaths) and n == deaths[len(runs) - 1]:
                raise ActorDied("its process ended between batches")
            yield {"i": item["i"]}

    monkeypatch.setattr(ray_runtime, "pipeline_rows", pipeline_rows)
    return runs


def blocks_of(n: int, size: int) -> list[list[dict]]:
    return [[{"i": i} for i in range(k, min(n, k + size))] for k in range(0, n, size)]


def test_a_dead_actor_costs_only_the_blocks_not_yet_written(monkeypatch):
    runs = dying_pipeline(monkeypatch, [5])  # the first run dies inside the second block
    said: list[str] = []
    got = [
        [row["i"] for row in block]
        for block in retried_blocks(None, blocks_of(10, 4), None, None, "R", said.append)
    ]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # each row once, in order
    assert runs == [list(range(10)), list(range(4, 10))]  # the second run: blocks left only
    assert said == [
        "an encoder actor died (its process ended between batches); "
        "embedding the 2 blocks left again, attempt 2 of 3"
    ]


def test_actors_dying_on_every_run_fail_it_after_three_naming_what_was_kept(monkeypatch):
    runs = dying_pipeline(monkeypatch, [4, 1, 1])
    said: list[str] = []
    written = []
    with pytest.raises(RayEngineError) as error:
        for block in retried_blocks(
            None, blocks_of(12, 4), None, None, "re-run to resume", said.append,
            "a predictor actor", "labelling",
        ):  # fmt: skip
            written.append([row["i"] for row in block])
    assert written == [[0, 1, 2, 3]]
    assert len(runs) == 3 and [s.split("; ")[1] for s in said] == [
        "labelling the 2 blocks left again, attempt 2 of 3",
        "labelling the 2 blocks left again, attempt 3 of 3",
    ]
    assert str(error.value) == (
        "a predictor actor died in each of 3 pipelines (the last: its process ended between "
        "batches); "
        "1 of 3 blocks were written; re-run to resume"
    )


def test_a_pipeline_that_ends_short_of_a_block_fails_instead_of_writing_part_of_it(monkeypatch):
    def pipeline_rows(ray, items, decode, then, resume_hint):
        yield from ({"i": item["i"]} for item in items[:6])  # two rows lost, no error raised

    monkeypatch.setattr(ray_runtime, "pipeline_rows", pipeline_rows)
    written = []
    with pytest.raises(RayEngineError, match="ended 2 rows short of block 2 of 2; R"):
        for block in retried_blocks(None, blocks_of(8, 4), None, None, "R", print):
            written.append(block)
    assert len(written) == 1
