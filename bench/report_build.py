"""Build time and size of `kudos report` for a big run (targets: < 10 s, < 5 MB).

Builds a synthetic run directory the size the issue names, then times build_report on it:
  - TensorBoard scalars of 1,000,000 env steps (every figure of the live display, one point per
    2,000 steps, as a run logging every 2 s at 1,000 steps/s writes them);
  - a checkpoint whose run statistics hold 20,000 distinct captions (1,000,000 sightings);
  - a SQLite label store with an LLM label, soft label and a reasoning-length reply (~400
    characters, ONI's long format) for each of the 20,000 captions;
  - 10 recorded episodes of 5,000 steps each, in the format `kudos eval --record` writes (the
    report's default cap): real NetHack frames of random play, whose games die after ~100 steps,
    so each recording is stitched from consecutive recorded games.
The report is built --repeat times (default 2); each build's seconds and the HTML size are printed.
With --browser the last report is opened in headless chromium (Debian's /usr/bin/chromium through
Playwright) and the seconds to load and unpack it, and the milliseconds of one label-browser
search and of sorting all captions by caption text and by reward earned, are printed.

With --profile one more build runs under cProfile and the seconds of its main parts are printed.

    python bench/report_build.py [--captions 20000] [--steps 1000000] [--repeat 2] [--keep DIR] [--browser] [--profile]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from kudos.eval.episodes import RandomPolicy, run_episodes
from kudos.eval.report import build_report
from kudos.rl.experiment import load_config, save_config
from kudos.feedback.store import LabelRecord, open_store
from kudos.rewards.intrinsic import scoring_model
from kudos.rl.checkpoint import save_checkpoint
from kudos.rl.runstats import RunStats

MONSTERS = ["newt", "jackal", "grid bug", "kobold", "sewer rat", "gnome lord", "hill orc", "floating eye", "lichen"]
ITEMS = ["a dagger", "2 food rations", "a scroll labeled ELAM EBOW", "an uncursed +0 leather armor", "a blue potion"]
FORMS = ["You kill the {m}!", "The {m} bites!", "You hit the {m}.", "You see here {i}.", "The {m} misses!",
         "You hear some noises in the distance.", "There is a staircase down here. You see here {i}."]
TAGS = ["episode/return", "episode/length", "intrinsic/mean", "intrinsic/nonzero_fraction", "throughput/env_steps_per_s",
        "llm/classify/labels", "llm/classify/queue_depth", "llm/classify/labels_per_s", "reward_model/0/validation_accuracy",
        "learner/policy_loss", "learner/entropy", "diagnostics/return_correlation", "diagnostics/top10_share",
        "diagnostics/disagreement"]
PROMPT_HASH, MODEL_ID = "bench-prompt", "bench-model"
EPISODES, EPISODE_STEPS = 10, 5_000


def captions(n: int) -> list[str]:
    """n distinct NetHack-like messages."""
    return [FORMS[i % len(FORMS)].format(m=MONSTERS[i % len(MONSTERS)], i=ITEMS[i % len(ITEMS)]) + f" ({i})" for i in range(n)]


def build_run(directory: Path, n_captions: int, steps: int, seed: int = 0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(seed)
    store_path = directory / "labels.sqlite"
    config = load_config(None, [f"run.output_dir={directory}", f"llm.store={store_path}", f"run.steps={steps}"])
    save_config(config, directory)
    with SummaryWriter(str(directory / "tensorboard")) as writer:
        for step in range(0, steps + 1, 2000):
            for k, tag in enumerate(TAGS):
                writer.add_scalar(tag, float(np.sin(step / 1e5 + k) + rng.normal(0, 0.1)), step)

    texts = captions(n_captions)
    stats = RunStats(config.diagnostics, config.env.num_envs)
    seen = 1 + rng.multinomial(steps - n_captions, rng.dirichlet(np.full(n_captions, 0.3)))
    stats.load_state_dict({
        "captions": texts,
        "seen": seen,
        "episodes": np.minimum(seen, rng.integers(1, 500, n_captions)),
        "earned": seen * rng.random(n_captions),
        "last_reward": rng.random(n_captions),
        "episode_ext": np.zeros(config.env.num_envs),
        "episode_int": np.zeros(config.env.num_envs),
        "recent_episodes": [tuple(v) for v in rng.normal(size=(100, 2))],
        "recent_labels": [(texts[i], int(i % 2)) for i in range(500)],
    })
    stats.label_key = (PROMPT_HASH, MODEL_ID)
    state = stats.state_dict()
    # An (untrained) classifier of the run's config: the report scores captions with it like a
    # trained one, so its cost is in the build time.
    model = scoring_model(config.reward, "score")
    save_checkpoint(directory, {"progress": {"env_steps": steps, "updates": steps // 256, "episodes": 2000},
                                "task": "Score", "reward_type": "classification", "run_stats": state,
                                "reward": {"model": model.state_dict(), "trainers": [], "annotators": {}}})

    reply = ("The message reports an event in the game. Considering the goal of descending and surviving, "
             "this kind of event {} progress: it changes the agent's situation in a way a player would "
             "want to see more often. Therefore, rating: {}")
    with open_store(store_path) as store:
        store.put_many([
            LabelRecord(PROMPT_HASH, MODEL_ID, "classify", text, None, i % 2, float(rng.random()),
                        reply.format("shows" if i % 2 else "does not show", "Yes" if i % 2 else "No"), 0.1, time.time())
            for i, text in enumerate(texts)
        ])
    record_episodes(directory / "episodes", dict(zip(texts, state["last_reward"].tolist())), seed)


def record_episodes(directory: Path, intrinsic: dict[str, float], seed: int) -> None:
    """EPISODES recordings of EPISODE_STEPS steps, stitched from recorded random-play games."""
    with tempfile.TemporaryDirectory() as tmp:
        steps: list[dict] = []
        while len(steps) < EPISODES * EPISODE_STEPS:
            games = Path(tmp) / str(len(steps))
            run_episodes("Score", lambda env: RandomPolicy(env.action_space, seed=seed + len(steps)), 50,
                         seed=seed + len(steps), record_dir=games, intrinsic=intrinsic)
            for path in sorted(games.glob("*.jsonl")):
                steps += [json.loads(line) for line in path.read_text().splitlines()[1:-1]]
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(EPISODES):
        with open(directory / f"episode_{k}.jsonl", "w") as f:
            f.write(json.dumps({"type": "episode", "task": "Score", "episode": k}) + "\n")
            for t, step in enumerate(steps[k * EPISODE_STEPS:(k + 1) * EPISODE_STEPS]):
                f.write(json.dumps({**step, "t": t}) + "\n")
            f.write(json.dumps({"type": "end", "ret": 0.0, "length": EPISODE_STEPS, "end_status": "ABORTED", "score": 0,
                                "max_depth": 1, "gold": 0, "level": 1, "turns": 0, "death": "stitched"}) + "\n")


def browser_timings(path: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        started = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready]")
        loaded = time.perf_counter() - started
        ms = page.evaluate("""() => {
          const time = f => { const t = performance.now(); f(); return performance.now() - t; };
          const search = document.getElementById("search");
          return {
            search: time(() => { search.value = "jackal"; refresh(); }),
            caption: time(() => { search.value = ""; sortKey = "caption"; sortDir = 1; refresh(); }),
            earned: time(() => { sortKey = "earned"; sortDir = -1; refresh(); }),
            rows: table.caption.length,
          };
        }""")
        browser.close()
    print(f"chromium: load and unpack {loaded:.2f} s; {ms['rows']:,} captions: search {ms['search']:.0f} ms, "
          f"sort by caption {ms['caption']:.0f} ms, by reward earned {ms['earned']:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", help="build the run directory here and keep it")
    parser.add_argument("--browser", action="store_true", help="time the report in headless chromium")
    parser.add_argument("--profile", action="store_true", help="print where one more build spends its time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.keep or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build_run(directory, args.captions, args.steps)
        print(f"synthetic run: {args.steps:,} env steps, {args.captions:,} labelled captions, {EPISODES} recorded "
              f"episodes of {EPISODE_STEPS:,} steps; built in {time.perf_counter() - started:.1f} s")
        for i in range(args.repeat):
            started = time.perf_counter()
            report = build_report(directory)
            seconds = time.perf_counter() - started
            print(f"build {i + 1}: {seconds:.2f} s (target < 10 s), HTML {report.size / 1e6:.2f} MB (target < 5 MB)")
        for note in report.notes:
            print(f"  note: {note}")
        if args.browser:
            browser_timings(report.path)
        if args.profile:
            profile(directory)


# (label, module file suffix, function) of the parts of a build the profile reports.
PARTS = [("label store get_many", "feedback/store.py", "get_many"), ("TensorBoard events", "eval/scalars.py", "read_scalars"),
         ("charts", "eval/report.py", "_charts"), ("checkpoint", "rl/checkpoint.py", "load_checkpoint"),
         ("compressing payloads", "eval/report.py", "_pack"), ("recorded episodes", "eval/report.py", "_episodes")]


def profile(directory: Path) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(build_report, directory)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[3] for (file, _, name), v in stats.items() if name == "build_report")
    parts = []
    for label, suffix, function in PARTS:
        seconds = sum(v[3] for (file, _, name), v in stats.items() if name == function and file.endswith(suffix))
        parts.append(f"{label} {seconds:.2f} s")
    print(f"profiled build {total:.2f} s: " + ", ".join(parts))


if __name__ == "__main__":
    main()
