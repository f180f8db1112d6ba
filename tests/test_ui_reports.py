"""What a user sees of reports: charts that read on a phone, counts written as on other pages,
a job page that follows its job to the end, and the list of one's exports (issue 18, items 11 and 15)."""

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse
from matplotlib.backends.backend_agg import FigureCanvasAgg
from playwright.sync_api import expect

from accounts.models import User
from reports import insights
from reports.jobs import start_export, start_insights
from reports.live import job_frame
from reports.models import Job
from tasks.progress import snapshot_of
from tests.test_browser_chat import browser, signed_up_page  # noqa: F401 (fixture)
from tests.test_reports import make_room, post, run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def drawn(draw, data: dict):
    figure = insights.new_figure()
    draw(figure, data)
    FigureCanvasAgg(figure).draw()
    return figure


def ticks_in_view(axis) -> list[float]:
    low, high = sorted(axis.get_view_interval())
    return [t for t in axis.get_majorticklocs() if low <= t <= high]


def assert_whole(values: list[float]) -> None:
    assert values and all(float(v).is_integer() for v in values), values


def test_a_room_active_on_one_day_gets_day_ticks_and_whole_counts():
    figure = drawn(insights.draw_per_day, {"per_day": [["2026-03-02", 3]]})
    axes = figure.axes[0]
    ticks = ticks_in_view(axes.xaxis)
    assert_whole(ticks)  # midnight of whole days: no hour ticks
    assert 5 <= len(ticks) <= 8
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert not any(":" in label for label in labels), labels
    assert "02" in labels and axes.xaxis.get_major_formatter().get_offset() == "2026-Mar"
    assert_whole(ticks_in_view(axes.yaxis))  # 0, 1, 2, 3: never 2.5
    # The bar is one day among the week shown, not the whole chart.
    (bar,) = axes.patches
    low, high = axes.get_xlim()
    assert bar.get_width() / (high - low) < 0.2


def test_a_room_years_old_gets_year_ticks():
    start = date(2023, 1, 1)
    per_day = [[(start + timedelta(days=i)).isoformat(), 1 + i % 3] for i in range(0, 1200, 3)]
    axes = drawn(insights.draw_per_day, {"per_day": per_day}).axes[0]
    ticks = ticks_in_view(axes.xaxis)
    assert 3 <= len(ticks) <= 8
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert {"2024", "2025", "2026"} <= set(labels), labels
    assert_whole(ticks_in_view(axes.yaxis))


def test_count_axes_of_the_other_charts_are_whole():
    heatmap = [[0] * 24 for _ in range(7)]
    heatmap[0][9] = 1
    colorbar = drawn(insights.draw_heatmap, {"heatmap": heatmap}).axes[1]
    assert_whole(ticks_in_view(colorbar.yaxis))
    for draw, key in ((insights.draw_top_posters, "top_posters"), (insights.draw_mentions, "mentions")):
        axes = drawn(draw, {key: [["ann", 3], ["bob", 1]]}).axes[0]
        assert_whole(ticks_in_view(axes.xaxis))


def test_charts_are_phone_sized_and_sharp():
    width, height = insights.CHART_SIZE
    # At most a phone's width in CSS pixels, rendered at twice the pixels.
    assert width * insights.CHART_DPI <= 480 and insights.CHART_SCALE >= 2


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice")


def finished_insights(room, user, messages: int) -> Job:
    now = datetime.now(UTC)
    result = {
        "messages": messages, "per_day": [], "heatmap": [[0] * 24 for _ in range(7)],
        "top_posters": [["alice", 123456]], "mentions": [["alice", 2345]],
        "threads": [{"first_id": 1, "start": now.isoformat(), "end": now.isoformat(), "messages": 4321,
                     "participants": 2, "minutes": 3.5}],
        "charts": {},
    }  # fmt: skip
    return Job.objects.create(kind=Job.Kind.INSIGHTS, room=room, requested_by=user, result=result,
                              finished_at=now, expires_at=now + timedelta(days=1))  # fmt: skip


def test_insights_page_writes_counts_with_thousands_separators(client, alice):
    room = make_room(members=[alice])
    job = finished_insights(room, alice, 300000)
    client.force_login(alice)
    page = client.get(reverse("reports:insights", args=[room.label]) + f"?job={job.pk}").content.decode()
    assert "300,000 messages" in page and "300000" not in page
    assert "123,456" in page and "2,345" in page and "4,321" in page
    # The <img> size is the chart's own (CSS pixels), so the page reserves the right space.
    width, height = (round(x * insights.CHART_DPI) for x in insights.CHART_SIZE)
    assert f'width="{width}" height="{height}"' in page


def test_a_finished_export_no_longer_says_what_it_was_doing(alice):
    room = make_room(members=[alice])
    post(room, alice, "hello")
    job, _ = start_export(alice, room, "csv")
    run_jobs()
    job = Job.objects.select_related("room").get(pk=job.pk)
    snapshot = snapshot_of(job.task_id)
    assert snapshot["note"] == "joining the parts"  # the task's last word, while it ran
    frame = job_frame(job, snapshot, None)
    assert frame["status"] == "done" and frame["note"] == ""
    running = {"status": "RUNNING", "done": 1, "total": 2, "note": "1 of 2 messages", "attempts": 1}
    assert job_frame(Job.objects.create(kind="export", format="csv", room=room, requested_by=alice),
                     running, None)["note"] == "1 of 2 messages"  # fmt: skip


def test_the_refusal_at_the_limit_links_to_the_running_jobs(client, alice):
    room = make_room(members=[alice])
    running = [start_export(alice, room, fmt)[0] for fmt in ("jsonl", "csv")] + [start_insights(alice, room)[0]]
    client.force_login(alice)
    response = client.post(reverse("reports:export", args=[room.label]), {"format": "html"})
    assert response.status_code == 429
    page = response.content.decode()
    for job in running:
        assert f'href="{job.get_absolute_url()}"' in page
    assert "JSON Lines export of #lobby" in page and "Insights of #lobby" in page
    assert f'href="{reverse("reports:mine")}"' in page


def test_my_exports_lists_my_jobs_with_status_and_download_links(client, alice, settings):
    bob = User.objects.create_user("bob")
    room = make_room(members=[alice, bob])
    hidden = make_room("secret", members=[alice])
    post(room, alice, "hello")
    done, _ = start_export(alice, room, "csv")
    run_jobs()
    queued, _ = start_export(alice, room, "html")
    start_export(bob, room, "jsonl")  # bob's: not on alice's page
    gone, _ = start_export(alice, hidden, "jsonl")
    hidden.memberships.filter(user=alice).delete()  # she left: the room and its jobs are out of sight
    client.force_login(alice)
    page = client.get(reverse("reports:mine")).content.decode()
    rows = page.split('<li class="job-row"')[1:]
    assert len(rows) == 2  # newest first
    assert 'data-status="queued"' in rows[0] and "HTML page export of #lobby" in rows[0] and "Download" not in rows[0]
    assert 'data-status="done"' in rows[1] and f'href="{reverse("reports:download", args=[done.pk])}"' in rows[1]
    assert gone.get_absolute_url() not in page and "JSON Lines" not in page
    assert f'href="{reverse("reports:mine")}"' in page  # the nav links here

    # Paginated: the 21st job is on page 2.
    Job.objects.bulk_create(Job(kind="export", format="csv", room=room, requested_by=alice) for _ in range(20))
    first = client.get(reverse("reports:mine")).content.decode()
    second = client.get(reverse("reports:mine") + "?page=2").content.decode()
    assert first.count('<li class="job-row"') == 20 and second.count('<li class="job-row"') == 2
    assert 'href="?page=2"' in first


SEED_ROOM = """
from accounts.models import User
from chat.models import Message, Room
user = User.objects.create_user("archivist")
room = Room.objects.create(label="archive")
Message.objects.bulk_create(Message(room=room, user=user, text=f"old {i:03}", client_id=str(i)) for i in range(50))
"""


@pytest.mark.e2e
def test_an_export_page_follows_the_job_to_done_and_my_exports_lists_it(stack, browser):  # noqa: F811
    stack.manage("shell", "-c", SEED_ROOM)
    _, port = stack.daphne()
    stack.runworker("compute")
    _, ann = signed_up_page(browser, f"http://127.0.0.1:{port}", "ann")
    ann.goto("/archive/")
    ann.get_by_text("Room menu").click()
    ann.get_by_role("link", name="Export chosen dates…").click()
    ann.get_by_role("button", name="Export").click()  # the form posts: the job's page
    expect(ann.locator("#job-status")).to_have_text("Done", timeout=30_000)
    expect(ann.locator("#job-link")).to_be_visible()
    expect(ann.locator("#job-note")).to_have_text("")  # not "joining the parts"
    ann.reload()  # a page opened after the end says the same
    expect(ann.locator("#job-status")).to_have_text("Done")
    expect(ann.locator("#job-note")).to_have_text("")

    ann.get_by_role("link", name="Exports", exact=True).click()  # the nav
    expect(ann.get_by_role("heading", name="My exports")).to_be_visible()
    row = ann.locator(".job-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("JSON Lines export of #archive")
    expect(row.locator(".job-row-status")).to_have_text("Done")
    expect(row.get_by_role("link", name="Download")).to_have_attribute("href", re.compile(r"^/reports/\d+/download/$"))
