"""Restarts, crashes and races: nothing queued is lost, no task runs twice, a cancel and a claim never
both win."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import pytest

from audio_middleware.jobs import worker
from audio_middleware.jobs.store import Store

try:  # works whether or not tests/ is a package
    from tests import media
    from tests.test_jobs_support import Api, install_gate, new_app, wait_for
except ImportError:  # pragma: no cover
    import media
    from test_jobs_support import Api, install_gate, new_app, wait_for


@pytest.fixture
def video(media_dir):
    return media.make_media("flv_aac", media_dir)


def statuses(store: Store) -> dict[str, str]:
    with store._connect() as db:
        return {row["audio_asset_id"]: row["status"] for row in db.execute("SELECT * FROM tasks")}


def event_counts(store: Store) -> dict[str, int]:
    with store._connect() as db:
        rows = db.execute("SELECT audio_asset_id, COUNT(*) FROM events GROUP BY audio_asset_id").fetchall()
    return {row[0]: row[1] for row in rows}


def test_restart_resumes_queued_tasks(tmp_path, video, apps):
    data = tmp_path / "data"
    first = new_app(data, workers=0)
    apps.append(first)
    api = Api(first)
    assets = [api.upload(video) for _ in range(4)]
    ids = [api.extract(asset).json["audio_asset_id"] for asset in assets]
    first.close()
    assert set(statuses(first.store).values()) == {"QUEUED"}

    second = new_app(data, workers=2)
    apps.append(second)
    api = Api(second)
    for asset in assets:
        assert api.wait(asset)["status"] == "SUCCEEDED"
    assert event_counts(second.store) == {audio_id: 1 for audio_id in ids}


def test_stopping_mid_queue_gives_running_tasks_back(tmp_path, video, apps, monkeypatch):
    gate = install_gate(monkeypatch)
    data = tmp_path / "data"
    first = new_app(data, workers=1)
    apps.append(first)
    api = Api(first)
    assets = [api.upload(video) for _ in range(3)]
    for asset in assets:
        api.extract(asset)
    wait_for(lambda: gate.started() == 1, what="the first extraction")
    assert sorted(statuses(first.store).values()) == ["QUEUED", "QUEUED", "RUNNING"]
    first.close()  # aborts the running extraction at its next progress tick
    assert set(statuses(first.store).values()) == {"QUEUED"}
    assert not first.pool.running
    assert not list((first.store.root / "tmp").iterdir())

    gate.open.set()
    second = new_app(data, workers=2)
    apps.append(second)
    api = Api(second)
    for asset in assets:
        assert api.wait(asset)["status"] == "SUCCEEDED"
    assert sorted(event_counts(second.store).values()) == [1, 1, 1]
    assert sum(gate.finished.values()) == 3  # the aborted run never finished; each task completed once


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_tasks_left_running_by_a_dead_process_are_requeued(tmp_path, video, apps):
    data = tmp_path / "data"
    first = new_app(data, workers=0)
    apps.append(first)
    api = Api(first)
    asset = api.upload(video)
    audio_id = api.extract(asset).json["audio_asset_id"]
    crashed = f"{worker.HOST}:{dead_pid()}:deadbeef"
    assert first.store.claim(crashed, lease=3600)["audio_asset_id"] == audio_id
    first.close()

    second = new_app(data, workers=1)
    apps.append(second)
    assert Api(second).wait(asset)["status"] == "SUCCEEDED"


def test_foreign_owners_keep_their_lease_until_it_expires(tmp_path, video, apps):
    data = tmp_path / "data"
    setup = new_app(data, workers=0)
    apps.append(setup)
    api = Api(setup)
    live, expired = api.upload(video), api.upload(video)
    api.extract(live)
    api.extract(expired)
    setup.store.claim("other-host:123:a", lease=3600)
    setup.store.claim("other-host:123:b", lease=-1)
    setup.close()

    app = new_app(data, workers=1)
    apps.append(app)
    api = Api(app)
    assert api.wait(expired)["status"] == "SUCCEEDED"
    assert api.task(live).json["status"] == "RUNNING"  # another host may still be working on it


def test_a_stopped_pool_in_this_process_is_an_orphan_owner(tmp_path, video, apps):
    data = tmp_path / "data"
    app = new_app(data, workers=0)
    apps.append(app)
    api = Api(app)
    asset = api.upload(video)
    api.extract(asset)
    ghost = f"{worker.HOST}:{os.getpid()}:not-live"
    app.store.claim(ghost, lease=3600)
    assert worker.owner_gone(ghost)
    assert not worker.owner_gone(app.pool.owner)
    assert not worker.owner_gone(f"elsewhere:{os.getpid()}:x")
    resumed = new_app(data, workers=1)
    apps.append(resumed)
    assert Api(resumed).wait(asset)["status"] == "SUCCEEDED"


def test_two_apps_on_one_directory_never_run_a_task_twice(tmp_path, video, apps, monkeypatch):
    gate = install_gate(monkeypatch, opened=True)
    data = tmp_path / "data"
    one = new_app(data, workers=4)
    two = new_app(data, workers=4)
    apps += [one, two]
    api_one, api_two = Api(one), Api(two)
    assets = [api_one.upload(video, name=f"v{n}.flv") for n in range(16)]

    def post(asset: str) -> str:
        return (api_one if hash(asset) % 2 else api_two).extract(asset).json["audio_asset_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(post, assets))
    for asset in assets:
        assert api_two.wait(asset)["status"] == "SUCCEEDED"
    assert len(gate.runs) == 16 and set(gate.runs.values()) == {1}
    assert sorted(event_counts(one.store).values()) == [1] * 16


def test_concurrent_posts_for_one_asset_make_one_task(tmp_path, video, apps, monkeypatch):
    gate = install_gate(monkeypatch, opened=True)
    app = new_app(tmp_path / "data", workers=3)
    apps.append(app)
    api = Api(app)
    asset = api.upload(video)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: api.extract(asset), range(32)))
    assert {response.status_code for response in responses} == {202}
    assert len({response.json["audio_asset_id"] for response in responses}) == 1
    assert api.wait(asset)["status"] == "SUCCEEDED"
    assert list(gate.runs.values()) == [1]
    assert len(statuses(app.store)) == 1


def test_concurrent_cancels_one_wins(tmp_path, video, apps):
    app = new_app(tmp_path / "data", workers=0)
    apps.append(app)
    api = Api(app)
    asset = api.upload(video)
    api.extract(asset)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = sorted(response.status_code for response in pool.map(lambda _: api.cancel(asset), range(24)))
    assert codes == [204] + [400] * 23
    assert api.task(asset).json["status"] == "CANCELLED"


def test_cancel_racing_the_workers(tmp_path, video, apps, monkeypatch):
    """Each task is either cancelled (204, never extracted) or run (400 VOD.10083, SUCCEEDED) - never both."""
    gate = install_gate(monkeypatch, opened=True)
    app = new_app(tmp_path / "data", workers=3)
    apps.append(app)
    api = Api(app)
    assets = [api.upload(video, name=f"r{n}.flv") for n in range(20)]
    app.pool.stop()  # hold the queue while the tasks are posted, then release workers and cancels together
    for asset in assets:
        api.extract(asset)
    app.pool.start()
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = dict(zip(assets, pool.map(api.cancel, assets), strict=True))
    for asset, response in answers.items():
        final = api.wait(asset)
        source = str(app.store.path(app.store.asset("project-a", asset)["path"]))
        if response.status_code == 204:
            assert final["status"] == "CANCELLED" and source not in gate.runs
        else:
            assert response.json["error_code"] == "VOD.10083"
            assert final["status"] == "SUCCEEDED" and gate.runs[source] == 1
    assert sum(1 for r in answers.values() if r.status_code == 204) + len(gate.runs) == 20


def test_uploads_and_results_survive_a_restart(tmp_path, video, apps):
    data = tmp_path / "data"
    first = new_app(data, workers=1)
    apps.append(first)
    api = Api(first)
    asset = api.upload(video)
    audio_id = api.extract(asset).json["audio_asset_id"]
    api.wait(asset)
    body = api.content(audio_id).data
    events = api.events().json
    first.close()

    second = new_app(data, workers=1)
    apps.append(second)
    api = Api(second)
    assert api.content(audio_id).data == body
    assert api.events().json == events
    assert api.extract(asset).json["audio_asset_id"] == audio_id  # the finished task is reused
    assert json.loads(json.dumps(api.task(asset).json))["status"] == "SUCCEEDED"


def test_lease_is_renewed_and_lost_leases_drop_the_result(tmp_path, video, apps, monkeypatch):
    gate = install_gate(monkeypatch)
    app = new_app(tmp_path / "data", workers=1, lease=0.3)
    apps.append(app)
    api = Api(app)
    asset = api.upload(video)
    audio_id = api.extract(asset).json["audio_asset_id"]
    wait_for(lambda: gate.started() == 1, what="the extraction")
    time.sleep(0.5)  # longer than the lease: the heartbeat must have renewed it
    assert app.pool.sweep() == 0
    assert api.task(asset).json["status"] == "RUNNING"
    with app.store.transaction() as db:  # someone else takes the task over (with a long lease)
        db.execute("UPDATE tasks SET owner = 'thief:1:x', lease_until = ? WHERE audio_asset_id = ?",
                   (time.time() + 3600, audio_id))
    gate.open.set()
    wait_for(lambda: not list((app.store.root / "tmp").iterdir()), what="our worker to drop the task")
    time.sleep(0.1)
    task = api.task(asset).json
    assert task["status"] == "RUNNING"  # our worker did not record over the thief's claim
    assert event_counts(app.store) == {}
    assert not list((app.store.root / "audio").rglob("*.aac"))


def test_lazy_start_and_restart_after_a_fork(tmp_path, video, apps):
    app = new_app(tmp_path / "data", workers=1, start=False)
    apps.append(app)
    assert not app.pool.running  # built in a parent that will fork: no threads yet
    api = Api(app)
    asset = api.upload(video)  # the first request starts them
    assert app.pool.running
    api.extract(asset)
    assert api.wait(asset)["status"] == "SUCCEEDED"
    # a process forked after start inherits the app but none of its threads
    app.pool.stop()
    app._started_pid = -1
    owner = app.pool.owner
    api.task(asset)
    assert app.pool.running and app.pool.owner != owner
    second = api.upload(video)
    api.extract(second)
    assert api.wait(second)["status"] == "SUCCEEDED"
