"""A self-contained HTML page drawing one trajectory tree (no scripts or styles from outside).

Depth runs left to right, leaves top to bottom. Node colour is the node's value (red 0 to
green 1), node size grows with visits, divergence points carry an orange ring, and the
MCTS path e* is drawn in thick blue. Clicking a node shows its observation, thought and
action in the side panel.
"""

from __future__ import annotations

import html
import json
import math

from tratree.method.tree import Tree

_DX, _DY, _PAD = 190, 34, 30


def _layout(tree: Tree) -> tuple[list[float], list[float]]:
    kids = tree.children
    depth = tree.depth()
    y = [0.0] * len(tree)
    next_leaf = 0
    order: list[int] = []
    stack = [0]
    while stack:  # preorder; positions are filled in reverse (children before parents)
        v = stack.pop()
        order.append(v)
        stack.extend(reversed(kids[v]))
    for v in order:
        if not kids[v]:
            y[v] = next_leaf
            next_leaf += 1
    for v in reversed(order):
        if kids[v]:
            y[v] = (y[kids[v][0]] + y[kids[v][-1]]) / 2
    return [_PAD + d * _DX for d in depth], [_PAD + yy * _DY for yy in y]


def _colour(value: float) -> str:
    return f"hsl({round(120 * max(0.0, min(1.0, value)))},70%,45%)"


def _short(text: str, n: int = 26) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_html(tree: Tree, path: list[int] | None = None, title: str | None = None) -> str:
    """The HTML page of a tree, with ``path`` (node ids below the root) marked as e*."""
    xs, ys = _layout(tree)
    kids = tree.children
    on_path = set(path or [])
    on_path_edge = on_path | {0}
    width = max(xs) + _DX + 2 * _PAD
    height = max(ys) + 2 * _PAD
    parts: list[str] = []
    for v in range(1, len(tree)):
        p = tree.parent[v]
        cls = "edge epath" if v in on_path and p in on_path_edge else "edge"
        mx = (xs[p] + xs[v]) / 2
        parts.append(f'<path class="{cls}" d="M{xs[p]:.0f},{ys[p]:.0f} C{mx:.0f},{ys[p]:.0f} {mx:.0f},{ys[v]:.0f} {xs[v]:.0f},{ys[v]:.0f}"/>')
    for v in range(len(tree)):
        value, visits = tree.value(v), tree.visits[v]
        r = 5 + 3 * math.log2(1 + visits)
        cls = ["node"]
        if len(kids[v]) >= 2:
            cls.append("div")
        if v in on_path or v == 0:
            cls.append("npath" if v in on_path else "root")
        label = "ROOT" if v == 0 else _short(tree.action[v])
        tip = f"value {value:.3f} · visits {visits}" + ("" if v == 0 else f"\n{tree.action[v]}")
        parts.append(
            f'<g class="{" ".join(cls)}" data-id="{v}"><title>{html.escape(tip)}</title>'
            f'<circle cx="{xs[v]:.0f}" cy="{ys[v]:.0f}" r="{r:.1f}" fill="{_colour(value)}"/>'
            f'<text x="{xs[v] + r + 3:.0f}" y="{ys[v] - 3:.0f}">{html.escape(label)}</text>'
            f'<text class="stat" x="{xs[v] + r + 3:.0f}" y="{ys[v] + 10:.0f}">{value:.2f} · n={visits}</text></g>'
        )
    data = [
        {
            "id": v,
            "action": tree.action[v],
            "thought": tree.thought[v],
            "observation": tree.observation[v] if v else tree.instruction,
            "value": round(tree.value(v), 4),
            "visits": tree.visits[v],
            "ends": tree.ends[v],
            "children": len(kids[v]),
            "parent": tree.parent[v] if v else -1,
        }
        for v in range(len(tree))
    ]
    s = tree.stats()
    heading = html.escape(title or f"Trajectory tree · {tree.task_id}")
    summary = (
        f"{s.trajectories} trajectories · {s.nodes} nodes · {s.leaves} leaves · depth {s.max_depth} · "
        f"{s.divergence_points} divergence points · root value {tree.value(0):.3f}"
    )
    if path:
        summary += f" · e* value {tree.value(path[-1]):.3f}"
    # "</" would end the script element early; JSON allows escaping the slash.
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{heading}</title>
<style>
body{{margin:0;font:13px system-ui,sans-serif;color:#222;display:flex;height:100vh}}
#main{{flex:1;overflow:auto}} #side{{width:360px;border-left:1px solid #ccc;padding:12px;overflow:auto;background:#fafafa}}
header{{padding:10px 14px;border-bottom:1px solid #ddd;position:sticky;top:0;left:0;background:#fff;z-index:1}}
#zoom button{{font:12px system-ui;margin-right:4px}} #path{{color:#555}} h1{{font-size:16px;margin:0 0 4px}}
.legend span{{margin-right:14px}} .sw{{display:inline-block;width:12px;height:12px;border-radius:6px;vertical-align:middle;margin-right:4px}}
.edge{{fill:none;stroke:#aaa;stroke-width:1.2}} .epath{{stroke:#1f5fd6;stroke-width:4}}
.node circle{{stroke:#fff;stroke-width:1.5;cursor:pointer}} .div circle{{stroke:#f39c12;stroke-width:3.5}}
.npath circle{{stroke:#1f5fd6;stroke-width:3.5}} .root circle{{stroke:#333}}
.node text{{font-size:11px;fill:#222;pointer-events:none;paint-order:stroke;stroke:#fff;stroke-width:3px}} .node text.stat{{fill:#777;font-size:10px}}
.sel circle{{stroke:#000!important;stroke-width:4!important}}
pre{{white-space:pre-wrap;background:#fff;border:1px solid #e3e3e3;padding:6px;margin:4px 0 10px}}
</style></head><body>
<div id="main"><header><h1>{heading}</h1><div>{html.escape(summary)}</div>
<div class="legend"><span><span class="sw" style="background:hsl(0,70%,45%)"></span>value 0</span>
<span><span class="sw" style="background:hsl(120,70%,45%)"></span>value 1</span>
<span><span class="sw" style="border:3px solid #f39c12"></span>divergence point</span>
<span><span class="sw" style="background:#1f5fd6"></span>MCTS path e*</span></div>
<div><b>Instruction:</b> {html.escape(_short(tree.instruction, 400))}</div>
<div id="zoom">Zoom <button data-z="0.8">−</button><button data-z="1.25">+</button><button data-z="fit">fit</button><button data-z="1">100%</button></div></header>
<svg id="tree" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}">{"".join(parts)}</svg></div>
<div id="side"><b>Click a node</b> to see its step.<div id="detail"></div></div>
<script>
const NODES = {payload};
const esc = s => String(s).replace(/[&<>]/g, c => ({{"&":"&amp;","<":"&lt;",">":"&gt;"}})[c]);
const svg = document.getElementById("tree"), W = {width:.0f}, H = {height:.0f};
let scale = 1;
// zoom by resizing the drawing (its viewBox keeps the picture); "fit" shows the whole tree at once
document.querySelectorAll("#zoom button").forEach(b => b.addEventListener("click", () => {{
  const main = document.getElementById("main"), z = b.dataset.z;
  scale = z === "fit" ? Math.min(main.clientWidth / W, (main.clientHeight - 120) / H, 1) : z === "1" ? 1 : scale * +z;
  svg.setAttribute("width", W * scale); svg.setAttribute("height", H * scale);
}}));
const pathTo = n => {{ const out = []; for (let v = n.id; v > 0; v = NODES[v].parent) out.unshift(NODES[v].action); return out; }};
document.querySelectorAll("g.node").forEach(g => g.addEventListener("click", () => {{
  document.querySelectorAll("g.sel").forEach(x => x.classList.remove("sel"));
  g.classList.add("sel");
  const n = NODES[+g.dataset.id];
  document.getElementById("detail").innerHTML =
    `<p>node ${{n.id}} · value ${{n.value}} · visits ${{n.visits}} · ends here ${{n.ends}} · children ${{n.children}}</p>` +
    `<p id="path">${{n.id ? "Path: " + pathTo(n).map(esc).join(" › ") : "The task"}}</p>` +
    `<b>${{n.id ? "Observation the action answered" : "Task"}}</b><pre>${{esc(n.observation)}}</pre><b>Thought</b><pre>${{esc(n.thought)}}</pre>` +
    `<b>Action</b><pre>${{esc(n.action)}}</pre>`;
}}));
</script></body></html>
"""
