"""``kudos report``: one self-contained HTML file about a training run.

It holds the run's curves (PNG charts from its TensorBoard scalars), the reward-hacking
diagnostics, the top captions by intrinsic reward earned, the label browser (every caption the run
saw, with its label-store label and run statistics, searched, sorted and paged in the browser) and
a replay viewer for episodes recorded with ``kudos eval RUN_DIR --record DIR``. Big payloads are
gzip-compressed JSON in base64, unpacked by the browser's ``DecompressionStream``; nothing is
fetched from the network. What does not fit the caps is left out with a visible note.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kudos.errors import KudosError
from kudos.fsutil import atomic_write

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
EPISODES_DIR = "episodes"  # where the report looks for recorded episodes by default
TOP_CAPTIONS = 20


@dataclass
class ReportLimits:
    """Caps on what is embedded (each visible in the report when reached)."""

    max_captions: int = 100_000  # label-browser rows (the most seen captions are kept)
    max_rescored: int = 5_000  # captions scored with the final reward model (the most seen)
    max_reply_chars: int = 300  # LLM replies are cut to this many characters
    max_episodes: int = 10  # recorded episodes in the replay viewer
    max_episode_steps: int = 5_000  # steps per recorded episode


@dataclass
class Report:
    """A built report: where it is, its size in bytes, the caps that were reached."""

    path: Path
    size: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# (title, y label, [tag prefixes/suffix patterns]) of each chart; a tag "a/*/b" matches a/<any>/b.
CHARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Extrinsic episode return (last 100)", "return", ("episode/return",)),
    ("Intrinsic reward per step", "mean", ("intrinsic/mean",)),
    ("Intrinsic reward sparsity", "fraction of steps rewarded", ("intrinsic/nonzero_fraction",)),
    ("Env steps per second", "steps/s", ("throughput/env_steps_per_s",)),
    ("Labels over time", "labels", ("llm/*/labels",)),
    ("LLM queue depth", "captions waiting", ("llm/*/queue_depth",)),
    ("LLM labels per second", "labels/s", ("llm/*/labels_per_s",)),
    ("Reward-model validation accuracy", "accuracy", ("reward_model/*/validation_accuracy",)),
    ("Return correlation (intrinsic vs extrinsic)", "Pearson r", ("diagnostics/return_correlation",)),
    ("Top-10 caption share of intrinsic reward", "share", ("diagnostics/top10_share",)),
    ("Reward model vs LLM disagreement", "fraction", ("diagnostics/disagreement",)),
)


def _matches(tag: str, pattern: str) -> bool:
    head, _, tail = pattern.partition("/*/")
    if not tail:
        return tag == pattern
    return tag.startswith(head + "/") and tag.endswith("/" + tail) and tag.count("/") == 2


def _pack(obj: Any) -> str:
    """JSON -> gzip -> base64 (the browser reverses it)."""
    return base64.b64encode(gzip.compress(json.dumps(obj, separators=(",", ":")).encode(), compresslevel=6)).decode()


def _charts(scalars: dict[str, Any]) -> list[str]:
    from kudos.eval.plots import line_chart

    out = []
    for title, ylabel, patterns in CHARTS:
        lines = {tag: (s.steps, s.values) for tag, s in sorted(scalars.items()) if any(_matches(tag, p) for p in patterns)}
        if not lines:
            out.append(f'<div class="chart empty"><b>{html.escape(title)}</b><br>not logged in this run</div>')
            continue
        if len(lines) == 1:
            lines = {"": next(iter(lines.values()))}
        png = line_chart(lines, title=title, ylabel=ylabel)
        out.append(f'<img class="chart" alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    return out


def _store_labels(config: Any, label_key: tuple[str, str] | None, captions: list[str]) -> tuple[dict[str, Any], str | None]:
    """The store's records for ``captions`` under the run's prompt version and model, or a note."""
    from kudos.feedback.store import StoreError, default_store_path, open_store

    if label_key is None:
        return {}, "this run asked the LLM no classification questions (or predates run statistics): no labels shown"
    location = config.llm.store or default_store_path()
    if "://" not in location and not Path(location).expanduser().is_file():
        return {}, f"label store {location} not found: no labels shown"
    try:
        with open_store(location) as store:
            return store.get_many(label_key[0], label_key[1], captions), None
    except StoreError as exc:
        return {}, f"cannot read the label store ({exc}): no labels shown"


def _episodes(directory: Path, limits: ReportLimits, notes: list[str]) -> list[dict[str, Any]]:
    files = sorted(directory.glob("episode_*.jsonl"), key=lambda p: (len(p.name), p.name)) if directory.is_dir() else []
    if len(files) > limits.max_episodes:
        notes.append(f"replay viewer: {limits.max_episodes} of {len(files)} recorded episodes embedded")
        files = files[: limits.max_episodes]
    episodes = []
    for path in files:
        header, end, steps = {}, {}, []
        cut = False
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise KudosError(f"{path}:{number} is not JSON: re-record it with `kudos eval RUN_DIR --record DIR`") from None
                kind = row.get("type")
                if kind == "episode":
                    header = row
                elif kind == "end":
                    end = row
                elif len(steps) < limits.max_episode_steps:
                    steps.append([row["t"], row["caption"], row["reward"], row.get("r_int"), row["rows"]])
                else:
                    cut = True
        if cut:
            notes.append(f"replay viewer: {path.name} cut to its first {limits.max_episode_steps:,} steps")
        episodes.append({"name": path.stem, "header": header, "end": end, "steps": steps})
    return episodes


def build_report(
    run_dir: str | Path,
    output: str | Path | None = None,
    *,
    episodes_dir: str | Path | None = None,
    limits: ReportLimits | None = None,
) -> Report:
    """Write the HTML report of the run in ``run_dir`` (default ``run_dir/report.html``).

    Raises:
        KudosError: no TensorBoard events, no or a corrupt checkpoint, a malformed recording.
    """
    from kudos.rl.experiment import load_config
    from kudos.eval.scalars import read_scalars
    from kudos.rl.checkpoint import load_checkpoint
    from kudos.rl.experiment import CONFIG_NAME
    from kudos.rl.runstats import diagnose, disagreement

    started = time.perf_counter()
    run_dir = Path(run_dir)
    limits = limits or ReportLimits()
    scalars = read_scalars(run_dir)
    state = load_checkpoint(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise KudosError(f"{config_path} not found: is {run_dir} a `kudos train` output directory?")
    config = load_config(config_path)
    notes: list[str] = []

    stats = state.get("run_stats")
    if stats is None:
        notes.append("the checkpoint predates per-caption run statistics: the label browser is empty")
        stats = {"captions": [], "seen": [], "episodes": [], "earned": [], "last_reward": [],
                 "recent_episodes": [], "recent_labels": [], "label_key": None}
    captions = list(stats["captions"])
    seen = np.asarray(stats["seen"], dtype=np.int64)
    episodes = np.asarray(stats["episodes"], dtype=np.int64)
    earned = np.asarray(stats["earned"], dtype=np.float64)
    last = np.asarray(stats["last_reward"], dtype=np.float64)

    # Diagnostics as in training; the recent labels are judged by each caption's last reward.
    index = {c: i for i, c in enumerate(captions)}
    judged = [(index[c], label) for c, label in stats["recent_labels"] if c in index]
    rate = disagreement([label for _, label in judged], last[[i for i, _ in judged]]) if judged else math.nan
    diagnostics = diagnose(captions, seen, episodes, earned, stats["recent_episodes"], rate, config.diagnostics)

    order = np.argsort(-seen, kind="stable")
    if len(order) > limits.max_captions:
        notes.append(f"label browser: the {limits.max_captions:,} most seen of {len(order):,} captions embedded")
        order = order[: limits.max_captions]
    kept = [captions[i] for i in order]
    records, label_note = _store_labels(config, stats.get("label_key"), kept)
    if label_note:
        notes.append(label_note)
    replies_cut = 0
    labels, soft, replies = [], [], []
    for caption in kept:
        record = records.get(caption)
        reply = "" if record is None else record.reply
        if len(reply) > limits.max_reply_chars:
            reply, replies_cut = reply[: limits.max_reply_chars] + "…", replies_cut + 1
        labels.append(None if record is None else record.label)
        soft.append(None if record is None or record.soft_label is None else round(record.soft_label, 4))
        replies.append(reply)
    if replies_cut:
        notes.append(f"label browser: {replies_cut:,} LLM replies cut to {limits.max_reply_chars} characters")
    table = {
        "caption": kept,
        "seen": seen[order].tolist(),
        "episodes": episodes[order].tolist(),
        "earned": [round(v, 4) for v in earned[order].tolist()],
        "reward": [round(v, 4) for v in last[order].tolist()],
        "final": _final_rewards(config, state, kept, limits.max_rescored, notes),
        "label": labels,
        "soft": soft,
        "reply": replies,
    }
    recorded = _episodes(Path(episodes_dir) if episodes_dir is not None else run_dir / EPISODES_DIR, limits, notes)

    top = np.argsort(-earned, kind="stable")[:TOP_CAPTIONS]
    page = _PAGE.format(
        title=html.escape(f"kudos report: {run_dir.name}"),
        summary=_summary(run_dir, config, state, len(captions), len(records)),
        notes="".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>nothing was capped</li>",
        diagnostics=_diagnostics_html(diagnostics, config.diagnostics),
        charts="\n".join(_charts(scalars)),
        top=_top_html([(captions[i], int(seen[i]), int(episodes[i]), float(earned[i]), float(last[i])) for i in top]),
        captions_data=_pack(table),
        episodes_data=_pack(recorded),
        config=html.escape(config_path.read_text()),
        script=_SCRIPT,
        style=_STYLE,
    )
    path = Path(output) if output is not None else run_dir / REPORT_NAME
    atomic_write(path, page)
    log.info("report of %s built in %.1f s", run_dir, time.perf_counter() - started)
    return Report(path, path.stat().st_size, notes, diagnostics.warnings)


def _final_rewards(config: Any, state: dict[str, Any], captions: list[str], limit: int, notes: list[str]) -> list[float | None]:
    """The checkpointed reward model's raw reward for the first ``limit`` of ``captions`` (the
    most seen; None for the rest and for runs without an intrinsic reward)."""
    from kudos.envs import get_task
    from kudos.rewards.intrinsic import scoring_model

    if config.reward.type == "none" or not state.get("reward") or not captions:
        return [None] * len(captions)
    model = scoring_model(config.reward, get_task(config.env.task).goal)
    model.load_state_dict(state["reward"]["model"])
    scored = captions[:limit]
    if len(captions) > limit:
        notes.append(f"label browser: the final reward model scored the {limit:,} most seen of {len(captions):,} captions")
    rewards = [round(float(r), 4) for r in np.asarray(model(scored), dtype=np.float64)]
    return rewards + [None] * (len(captions) - len(scored))


def _summary(run_dir: Path, config: Any, state: dict[str, Any], num_captions: int, num_labels: int) -> str:
    progress = state.get("progress", {})
    rows = [
        ("run", str(run_dir)),
        ("task", config.env.task),
        ("intrinsic reward", config.reward.type),
        ("LLM", config.llm.backend),
        ("env steps", f"{progress.get('env_steps', 0):,}"),
        ("updates", f"{progress.get('updates', 0):,}"),
        ("episodes", f"{progress.get('episodes', 0):,}"),
        ("distinct captions seen", f"{num_captions:,}"),
        ("of them labelled in the store", f"{num_labels:,}"),
    ]
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)


def _fmt(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _diagnostics_html(d: Any, config: Any) -> str:
    rows = [
        ("intrinsic vs extrinsic episode return correlation", _fmt(d.return_correlation, "+.2f"),
         f"warn below {config.min_return_correlation:+.2f}"),
        ("share of intrinsic reward earned by the top 10 captions", _fmt(d.top10_share, ".1%"),
         f"warn above {config.max_top10_share:.0%}"),
        ("farmed captions", str(len(d.farmed)),
         f"seen >= {config.farm_min_count:g} times per episode for >= {config.farm_min_reward:g} reward per episode above the median caption's"),
        ("reward model vs LLM disagreement (recent labels)", _fmt(d.disagreement, ".1%"),
         f"warn above {config.max_disagreement:.0%}"),
    ]
    body = "".join(f"<tr><td>{html.escape(a)}</td><td class=num>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in rows)
    warnings = "".join(f'<p class="warning">⚠ {html.escape(w)}</p>' for w in d.warnings) or '<p class="ok">no diagnostic crossed its threshold</p>'
    farmed = ""
    if d.farmed:
        shown = f" (the {TOP_CAPTIONS} most rewarding of {len(d.farmed)})" if len(d.farmed) > TOP_CAPTIONS else ""
        farmed = (f"<h3>Farmed captions{shown}</h3><table class=grid><tr><th>caption</th><th>seen per episode</th>"
                  "<th>excess intrinsic reward per episode</th></tr>"
                  + "".join(f"<tr><td>{html.escape(c)}</td><td class=num>{n:.1f}</td><td class=num>{r:.2f}</td></tr>"
                            for c, n, r in d.farmed[:TOP_CAPTIONS]) + "</table>")
    return f'<div id="warnings">{warnings}</div><table class=grid>{body}</table>{farmed}'


def _top_html(rows: list[tuple[str, int, int, float, float]]) -> str:
    if not rows:
        return "<p>no captions recorded</p>"
    head = "<tr><th>#</th><th>caption</th><th>times seen</th><th>episodes</th><th>intrinsic reward earned</th><th>reward when last seen</th></tr>"
    body = "".join(f"<tr><td class=num>{i}</td><td>{html.escape(c)}</td><td class=num>{s:,}</td><td class=num>{e:,}</td>"
                   f"<td class=num>{r:.2f}</td><td class=num>{f:.3f}</td></tr>" for i, (c, s, e, r, f) in enumerate(rows, 1))
    return f'<table class=grid id="top-captions">{head}{body}</table>'


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table.grid{border-collapse:collapse}table.grid td,table.grid th{border:1px solid #ddd;padding:2px 6px;vertical-align:top}
table.grid th{background:#f4f4f4;text-align:left}.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart{border:1px solid #eee}
.chart.empty{width:414px;height:206px;display:flex;flex-direction:column;align-items:center;justify-content:center;text-align:center;color:#888}
.warning{color:#a15c00;font-weight:bold;margin:2px 0}.ok{color:#2a7a2a}
#browser th{cursor:pointer;user-select:none}#browser th.sorted-asc::after{content:" ▲"}#browser th.sorted-desc::after{content:" ▼"}
#browser td.reply{max-width:380px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;color:#555}
#browser td.caption{max-width:520px}.controls{margin:6px 0}.controls input{width:320px}
pre#frame{background:#111;color:#ddd;padding:8px;font:13px/1.15 monospace;display:inline-block;min-width:80ch;min-height:27.6em;margin:6px 0}
#step-info{font-family:monospace}.notes li{color:#555}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
<h1>{title}</h1>
<table class=grid id="summary">{summary}</table>
<ul class="notes" id="notes">{notes}</ul>
<h2>Reward-hacking diagnostics</h2>
{diagnostics}
<h2>Curves</h2>
<div class="charts">{charts}</div>
<h2>Top captions by intrinsic reward earned</h2>
<p>Raw intrinsic reward (the reward model's, before shaping and the count exponent) summed over every step that showed the caption.</p>
{top}
<h2>Label browser</h2>
<p>Every caption this run saw, with the label store's answer for this run's prompt version and model (1 helpful, 0 not, blank: not labelled), the soft label P(helpful), the raw reply, the run's statistics, the reward the caption got when the run last saw it and the reward the final (checkpointed) reward model gives it. Click a column to sort.</p>
<div class="controls"><input id="search" type="search" placeholder="search captions and replies"> <span id="match-count"></span>
<button id="prev-page">&lt; prev</button> <span id="page-info"></span> <button id="next-page">next &gt;</button></div>
<table class=grid id="browser"><thead><tr>
<th data-key="caption">caption</th><th data-key="seen">times seen</th><th data-key="episodes">episodes</th>
<th data-key="earned">intrinsic reward earned</th><th data-key="reward">reward when last seen</th><th data-key="final">final model's reward</th><th data-key="label">LLM label</th>
<th data-key="soft">soft label</th><th data-key="reply">LLM reply</th></tr></thead><tbody></tbody></table>
<h2>Episode replay</h2>
<div id="replay"><div class="controls"><select id="episode-select"></select>
<button id="step-back">&lt; step</button> <input id="step-slider" type="range" min="0" value="0"> <button id="step-forward">step &gt;</button>
<span id="step-info"></span></div>
<div id="episode-summary"></div><pre id="frame"></pre></div>
<h2>Config</h2><details><summary>config.yaml</summary><pre>{config}</pre></details>
<script type="application/octet-stream" id="captions-data">{captions_data}</script>
<script type="application/octet-stream" id="episodes-data">{episodes_data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
"use strict";
async function unpack(id) {
  const b64 = document.getElementById(id).textContent.trim();
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}
const PAGE = 100;
const COLUMNS = ["caption", "seen", "episodes", "earned", "reward", "final", "label", "soft", "reply"];
const NUMERIC = new Set(["seen", "episodes", "earned", "reward", "final", "label", "soft"]);
let table, view = [], page = 0, sortKey = "seen", sortDir = -1;

function cell(row, key, value) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "" : value;
  if (NUMERIC.has(key)) td.className = "num";
  else td.className = key;
  if (key === "reply") td.title = value || "";
}
function render() {
  const body = document.querySelector("#browser tbody");
  body.replaceChildren();
  const pages = Math.max(1, Math.ceil(view.length / PAGE));
  page = Math.min(page, pages - 1);
  for (const i of view.slice(page * PAGE, (page + 1) * PAGE)) {
    const row = body.insertRow();
    for (const key of COLUMNS) cell(row, key, table[key][i]);
  }
  document.getElementById("match-count").textContent = `${view.length.toLocaleString("en")} of ${table.caption.length.toLocaleString("en")} captions`;
  document.getElementById("page-info").textContent = `page ${page + 1} of ${pages}`;
  document.querySelectorAll("#browser th").forEach(th => {
    th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir === 1);
    th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir === -1);
  });
}
function refresh() {
  const query = document.getElementById("search").value.toLowerCase();
  const n = table.caption.length;
  view = [];
  for (let i = 0; i < n; i++) {
    if (!query || table.caption[i].toLowerCase().includes(query) || table.reply[i].toLowerCase().includes(query)) view.push(i);
  }
  const column = table[sortKey];
  const numeric = NUMERIC.has(sortKey);
  view.sort((a, b) => {
    let x = column[a], y = column[b];
    if (x === null) return 1; if (y === null) return -1;  // unlabelled rows last either way
    const c = numeric ? x - y : (x < y ? -1 : x > y ? 1 : 0);  // text by code point, as Python sorts
    return c * sortDir || a - b;
  });
  page = 0;
  render();
}
async function setupBrowser() {
  table = await unpack("captions-data");
  let timer;
  document.getElementById("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 150); });
  document.querySelectorAll("#browser th").forEach(th => th.addEventListener("click", () => {
    const key = th.dataset.key;
    if (key === sortKey) sortDir = -sortDir; else { sortKey = key; sortDir = NUMERIC.has(key) ? -1 : 1; }
    refresh();
  }));
  document.getElementById("prev-page").addEventListener("click", () => { page = Math.max(0, page - 1); render(); });
  document.getElementById("next-page").addEventListener("click", () => { page += 1; render(); });
  refresh();
}

let episodes = [], frames = [], current = null;
function loadEpisode(k) {
  current = episodes[k];
  frames = [];
  let rows = new Array(24).fill("");
  for (const step of current.steps) {
    rows = rows.slice();
    for (const [i, text] of Object.entries(step[4])) rows[Number(i)] = text;
    frames.push(rows.join("\n"));
  }
  const slider = document.getElementById("step-slider");
  slider.max = Math.max(0, frames.length - 1);
  const end = current.end || {};
  document.getElementById("episode-summary").textContent = end.ret === undefined ? "" :
    `return ${end.ret.toFixed(2)}, score ${end.score}, depth ${end.max_depth}, gold ${end.gold}, level ${end.level}, turns ${end.turns}, ${end.length} steps; ${end.death}`;
  show(0);
}
function show(t) {
  if (!current || frames.length === 0) return;
  t = Math.max(0, Math.min(frames.length - 1, t));
  const slider = document.getElementById("step-slider");
  slider.value = t;
  const step = current.steps[t];
  document.getElementById("frame").textContent = frames[t];
  const rInt = step[3] === null || step[3] === undefined ? "n/a" : Number(step[3]).toFixed(3);
  document.getElementById("step-info").textContent =
    `step ${step[0]} / ${current.steps[current.steps.length - 1][0]}  reward ${Number(step[2]).toFixed(2)}  intrinsic ${rInt}  caption: ${step[1] || "(none)"}`;
}
async function setupReplay() {
  episodes = await unpack("episodes-data");
  const select = document.getElementById("episode-select");
  if (episodes.length === 0) {
    document.getElementById("replay").replaceChildren(Object.assign(document.createElement("p"), {
      id: "no-episodes", textContent: "No recorded episodes: run `kudos eval RUN_DIR --record RUN_DIR/episodes`, then rebuild the report."}));
    return;
  }
  episodes.forEach((e, k) => select.add(new Option(e.name, k)));
  select.addEventListener("change", () => loadEpisode(Number(select.value)));
  const slider = document.getElementById("step-slider");
  slider.addEventListener("input", () => show(Number(slider.value)));
  document.getElementById("step-back").addEventListener("click", () => show(Number(slider.value) - 1));
  document.getElementById("step-forward").addEventListener("click", () => show(Number(slider.value) + 1));
  document.addEventListener("keydown", e => {
    if (e.target.tagName === "INPUT" && e.target.type === "search") return;
    if (e.key === "ArrowRight") show(Number(slider.value) + 1);
    if (e.key === "ArrowLeft") show(Number(slider.value) - 1);
  });
  loadEpisode(0);
}
Promise.all([setupBrowser(), setupReplay()]).then(() => { document.body.dataset.ready = "1"; },
  err => { document.body.dataset.ready = "error"; document.body.prepend(Object.assign(document.createElement("p"), {className: "warning", textContent: "report failed to load: " + err})); });
"""
