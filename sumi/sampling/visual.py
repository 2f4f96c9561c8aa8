"""Seeing generation: a self-contained HTML replay, an animated GIF, and a live terminal view of a canvas.

All three take a :class:`~sumi.sampling.loop.Trajectory` (or, for the live view, each
:class:`~sumi.sampling.loop.StepInfo`) plus a tokenizer with ``decode(ids)``. The replays show one row's whole
canvas, the tail after the anchor included (greyed), and count where each step's writes went (the answer or the
tail), so a canvas wider than the request shows what it cost.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from sumi.sampling.loop import StepInfo, Trajectory

MAX_GIF_FRAMES = 120
"""GIFs subsample long runs to at most this many frames (plus the last)."""


class TokenPieces:
    """id → display string, decoded one token at a time and cached."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = self.tokenizer.decode([token_id])
        return self.cache[token_id]


def visible_span(trajectory: Trajectory, row: int) -> int:
    """Canvas positions shown for ``row``: all of them (prompt, budget, anchor and tail)."""
    return trajectory.frames[0].canvas.shape[1]


def tail_start(trajectory: Trajectory, row: int) -> int:
    """First canvas position after ``row``'s budget and its EOS, BOS anchor (the canvas width if none)."""
    width = trajectory.frames[0].canvas.shape[1]
    return min(width, trajectory.prompt_lengths[row] + trajectory.budgets[row] + 2)


def writes_by_region(trajectory: Trajectory, row: int = 0) -> dict[str, int]:
    """Positions written over the whole run (summed over steps) in ``row``'s answer (its budget) and its tail."""
    p, budget = trajectory.prompt_lengths[row], trajectory.budgets[row]
    answer = tail = 0
    for frame in trajectory.frames[1:]:
        committed = frame.committed[row]
        answer += int(committed[p:p + budget].sum())
        tail += int(committed[tail_start(trajectory, row):].sum())
    return {"answer": answer, "tail": tail}


def final_text(trajectory: Trajectory, tokenizer, row: int = 0, eos_id: int | None = None) -> str:
    """The new text of ``row`` in the last frame (cut at the first EOS when ``eos_id`` is given)."""
    p, budget = trajectory.prompt_lengths[row], trajectory.budgets[row]
    ids = trajectory.frames[-1].canvas[row, p:p + budget].tolist()
    if eos_id is not None and eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------- HTML
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
#canvas{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;border:1px solid #ccc;padding:1em;
  border-radius:6px;min-height:6em}
#canvas span{border-radius:3px;padding:1px 0}
.prompt{color:#888}.frozen{text-decoration:underline}.anchor{color:#b00;font-weight:bold}
.tail{color:#aaa;font-style:italic}
.committed{background:#ffe066}.changed{background:#cde7ff}
.controls{margin:1em 0;display:flex;gap:1em;align-items:center}
#final{white-space:pre-wrap;border-left:4px solid #2a7;padding-left:1em}
.legend span{padding:2px 6px;margin-right:6px;border-radius:3px}
</style></head><body>
<h1>__TITLE__</h1>
<p class="meta">__META__</p>
<div class="controls"><button id="play">&#9654; play</button>
<input id="slider" type="range" min="0" max="0" value="0" style="flex:1">
<span id="label"></span></div>
<p class="legend"><span class="prompt">prompt</span><span class="committed">committed this step</span>
<span class="changed">changed this step</span><span class="anchor">anchor</span><span class="frozen">frozen</span>
<span class="tail">tail after the anchor</span></p>
<p id="where">__WHERE__</p>
<div id="canvas" data-rendered="0"></div>
<h2>Final text</h2>
<div id="final">__FINAL__</div>
<script id="trajectory-data" type="application/json">__DATA__</script>
<script>
const D = JSON.parse(document.getElementById('trajectory-data').textContent);
const canvasEl = document.getElementById('canvas'), slider = document.getElementById('slider');
const label = document.getElementById('label'), play = document.getElementById('play');
slider.max = D.frames.length - 1;
function render(i) {
  const f = D.frames[i], prev = D.frames[Math.max(0, i - 1)];
  canvasEl.textContent = '';
  f.ids.forEach((id, pos) => {
    const s = document.createElement('span');
    s.textContent = D.pieces[id];
    const cls = [];
    if (pos < D.prompt_length) cls.push('prompt');
    else if (D.anchor.includes(pos)) cls.push('anchor');
    else if (pos >= D.tail_start) cls.push('tail');
    if (D.frozen.includes(pos)) cls.push('frozen');
    if (i > 0 && f.committed.includes(pos)) cls.push('committed');
    else if (i > 0 && prev.ids[pos] !== id) cls.push('changed');
    s.className = cls.join(' ');
    s.title = 'position ' + pos + ', id ' + id + (f.prob ? ', p(argmax)=' + f.prob[pos].toFixed(3) : '');
    canvasEl.appendChild(s);
  });
  slider.value = i;
  label.textContent = (f.step < 0 ? 'start' : 'step ' + (f.step + 1) + '/' + D.num_steps) +
    '  \\u03bb ' + f.lam_t.toFixed(2) + ' \\u2192 ' + f.lam_s.toFixed(2) +
    (i > 0 ? '  writes: ' + f.in_answer + ' in the answer, ' + f.in_tail + ' in the tail' : '');
  canvasEl.dataset.rendered = '1';
  canvasEl.dataset.frame = String(i);
}
let timer = null;
function stop() { clearInterval(timer); timer = null; play.innerHTML = '&#9654; play'; }
play.onclick = () => {
  if (timer) { stop(); return; }
  if (+slider.value >= D.frames.length - 1) render(0);
  play.innerHTML = '&#10074;&#10074; pause';
  timer = setInterval(() => { const i = +slider.value + 1; if (i >= D.frames.length) stop(); else render(i); },
                      Math.max(30, 4000 / D.frames.length));
};
slider.oninput = () => { stop(); render(+slider.value); };
render(location.hash === '#start' ? 0 : D.frames.length - 1);
</script></body></html>
"""


def trajectory_html(trajectory: Trajectory, tokenizer, *, row: int = 0, title: str = "sumi: denoising trajectory",
                    meta: str = "", eos_id: int | None = None) -> str:
    """A self-contained page (no network) replaying ``row``'s denoising step by step.

    Opens on the final canvas (``#start`` in the URL opens on the first); ▶ replays it. Committed positions of
    each step are highlighted, other changed positions shaded. The final new text is also written as plain HTML.
    """
    span = visible_span(trajectory, row)
    pieces = TokenPieces(tokenizer)
    p, budget = trajectory.prompt_lengths[row], trajectory.budgets[row]
    frozen = trajectory.frozen_mask[row, :span] if trajectory.frozen_mask is not None else torch.zeros(span)
    tail = tail_start(trajectory, row)
    frames = []
    for frame in trajectory.frames:
        ids = frame.canvas[row, :span].tolist()
        for token_id in ids:
            pieces(token_id)
        committed = frame.committed[row, :span]
        frames.append({
            "step": frame.step, "lam_t": frame.log_snr_t, "lam_s": frame.log_snr_s, "ids": ids,
            "committed": committed.nonzero().squeeze(-1).tolist(),
            "in_answer": int(committed[p:p + budget].sum()), "in_tail": int(committed[tail:].sum()),
            "prob": None if frame.argmax_prob is None else [round(float(v), 4) for v in frame.argmax_prob[row, :span]],
        })
    anchor = [pos for pos in (p + budget, p + budget + 1) if pos < span]
    data = {
        "frames": frames, "pieces": {str(k): v for k, v in pieces.cache.items()}, "prompt_length": p,
        "anchor": anchor, "frozen": [i for i in frozen.nonzero().squeeze(-1).tolist() if i >= p and i not in anchor],
        "num_steps": max(1, len(frames) - 1), "tail_start": tail,
    }
    writes = writes_by_region(trajectory, row)
    total = writes["answer"] + writes["tail"]
    where = (f"{len(frames) - 1} steps wrote {writes['answer']} tokens into the answer and {writes['tail']} into the "
             f"{span - tail}-position tail after the anchor"
             + (f" ({100 * writes['tail'] / total:.0f}% of the writes)" if total else ""))
    # "</" inside the JSON would end the script element early.
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    text = final_text(trajectory, tokenizer, row, eos_id)
    return (_PAGE.replace("__DATA__", payload).replace("__FINAL__", html.escape(text))
            .replace("__TITLE__", html.escape(title)).replace("__META__", html.escape(meta))
            .replace("__WHERE__", html.escape(where)))


def write_trajectory_html(path: str | Path, trajectory: Trajectory, tokenizer, **kwargs) -> Path:
    path = Path(path)
    path.write_text(trajectory_html(trajectory, tokenizer, **kwargs), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- GIF
def write_trajectory_gif(path: str | Path, trajectory: Trajectory, tokenizer, *, row: int = 0, width: int = 720,
                         font_size: int = 16, frame_ms: int = 80) -> Path:
    """An animated GIF of ``row``'s canvas settling (committed tokens on yellow, prompt in grey)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    span = visible_span(trajectory, row)
    tail = tail_start(trajectory, row)
    pieces = TokenPieces(tokenizer)
    p, budget = trajectory.prompt_lengths[row], trajectory.budgets[row]
    frames = trajectory.frames
    if len(frames) > MAX_GIF_FRAMES:
        stride = -(-len(frames) // MAX_GIF_FRAMES)
        frames = frames[::stride] + ([frames[-1]] if (len(frames) - 1) % stride else [])
    line_h, margin = font_size + 8, 12

    def layout(ids):
        x, y, boxes = margin, margin + line_h, []
        for token_id in ids:
            piece = pieces(token_id).replace("\n", "⏎")
            w = max(1, int(font.getlength(piece)))
            if x + w > width - margin:
                x, y = margin, y + line_h
            boxes.append((x, y, w, piece))
            x += w
        return boxes, y + line_h + margin

    height = max(layout(f.canvas[row, :span].tolist())[1] for f in frames)
    images = []
    for frame in frames:
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        committed = frame.committed[row, :span]
        label = "start" if frame.step < 0 else \
            (f"step {frame.step + 1}   log-SNR {frame.log_snr_t:+.2f} -> {frame.log_snr_s:+.2f}   writes: "
             f"{int(committed[p:p + budget].sum())} answer, {int(committed[tail:].sum())} tail")
        draw.text((margin, margin // 2), label, fill=(90, 90, 90), font=font)
        boxes, _ = layout(frame.canvas[row, :span].tolist())
        for pos, (x, y, w, piece) in enumerate(boxes):
            if frame.step >= 0 and bool(committed[pos]):
                draw.rectangle((x, y, x + w, y + line_h - 4), fill=(255, 224, 102))
            elif pos >= tail:  # the tail after the anchor: shaded, so steps spent there are visible
                draw.rectangle((x, y, x + w, y + line_h - 4), fill=(232, 232, 232))
            colour = (140, 140, 140) if pos < p or pos >= tail else (20, 20, 20)
            draw.text((x, y), piece, fill=colour, font=font)
        images.append(img)
    path = Path(path)
    durations = [frame_ms] * (len(images) - 1) + [max(frame_ms, 2000)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


# ----------------------------------------------------------------------------------------------- terminal
class LiveView:
    """A ``rich`` live view of row 0 (or ``row``): use as a context manager and pass :meth:`update` as callback."""

    def __init__(self, tokenizer, *, row: int = 0, console=None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.pieces = TokenPieces(tokenizer)
        self.row = row
        self.console = console or Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=12, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def render(self, info: StepInfo):
        from rich.panel import Panel
        from rich.text import Text

        prompt_length, budget = info.prompt_lengths[self.row], info.budgets[self.row]
        end = min(info.canvas.shape[1], prompt_length + budget + 2)
        ids = info.canvas[self.row, :end].tolist()
        committed = info.committed[self.row, :end].tolist()
        changed = info.changed[self.row, :end].tolist()
        text = Text()
        for pos, token_id in enumerate(ids):
            style = "dim" if pos < prompt_length else ""
            if pos >= prompt_length + budget:
                style = "bold red"
            if committed[pos]:
                style = "bold black on yellow"
            elif changed[pos]:
                style = "black on cyan"
            text.append(self.pieces(token_id), style=style)
        title = (f"step {info.step + 1}/{info.num_steps}  λ {info.log_snr_t:+.2f} → {info.log_snr_s:+.2f}  "
                 f"nfe {info.nfe}")
        return Panel(text, title=title, border_style="blue")

    def update(self, info: StepInfo) -> None:
        self.live.update(self.render(info))
