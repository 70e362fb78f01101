"""The report's blocks written out twice, as Markdown and as a self-contained HTML page (CSS inline, figures as inline
SVG), so both always say the same. A block is a tuple: ("h2", title, anchor), ("h3", title), ("p", text),
("note", text), ("box", ok|warn|bad, title, text), ("figure", name, caption), ("pre", text),
("details", summary, blocks) or ("table", header, rows); a table cell is a string or a C."""
from __future__ import annotations

import html
import re
from typing import NamedTuple

from edgekit.results import Results


class C(NamedTuple):
    """A table cell: text, a CSS class (pass/fail/warn/muted/txt), columns spanned, a smaller second line."""
    text: str
    cls: str = ""
    span: int = 1
    sub: str = ""


_MARK = {"pass": "✅ ", "ok": "✅ ", "fail": "❌ ", "bad": "❌ ", "warn": "⚠️ "}


# What a Markdown renderer would not show as written: HTML (`<`, an entity), a link (`](`), emphasis (`*`, `~`, a `_` at a
# word's edge: GFM leaves snake_case alone), a table cell's end (`|`), a backslash escape; at a line's start, a block.
_MD = re.compile(r"<|&(?=#?\w+;)|\](?=\()|[\\*~|]|(?<!\w)_|_(?!\w)")
_MD_LINE_START = re.compile(r"^([#+\->=]|\d+[.)])")


def md(text, starts_line: bool = False) -> str:
    """Text as it reads, in Markdown: the names in a report (variants, targets, the recipe's) come from the user's
    files, and a renderer must show `<script>`, `[x](javascript:...)` or `**` as the characters they are, not as HTML,
    a link or bold. Control characters (a newline would start a new block) become spaces; the rest reads unchanged."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    text = _MD.sub(lambda m: {"<": "&lt;", "&": "&amp;"}.get(m[0], "\\" + m[0]), text)
    return _MD_LINE_START.sub(r"\\\1", text) if starts_line else text


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so the text cannot close it."""
    return "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))


def _md_cells(row) -> list[str]:
    out = []
    for c in map(lambda c: c if isinstance(c, C) else C(c), row):
        out += [_MARK.get(c.cls.split(" ")[0], "") + md(c.text) + (f" ({md(c.sub)})" if c.sub else "")] + [""] * (c.span - 1)
    return out


def _md_blocks(blocks) -> list[str]:
    out = []
    for kind, *a in blocks:
        out += {"h2": lambda: [f"## {md(a[0])}"], "h3": lambda: [f"### {md(a[0])}"], "p": lambda: [md(a[0], starts_line=True)], "note": lambda: [f"_{md(a[0])}_"],
                "box": lambda: [f"> {_MARK.get(a[0], '')}**{md(a[1])}**: {md(a[2])}"], "figure": lambda: [f"![{md(a[1])}]({a[0]}.png)"],
                "pre": lambda: [_fence(a[0]), a[0], _fence(a[0])],
                "details": lambda: [f"<details><summary>{html.escape(' '.join(str(a[0]).split()))}</summary>", "", *_md_blocks(a[1]), "</details>"],
                "table": lambda: ["| " + " | ".join(_md_cells(a[0])) + " |", "|" + "---|" * len(a[0]), *("| " + " | ".join(_md_cells(r)) + " |" for r in a[1])],
                }[kind]() + [""]
    return out


def _meta(res: Results) -> str:
    return " · ".join(x for x in (res.run.created and f"created {res.run.created}", res.run.edgekit_version and f"edgekit {res.run.edgekit_version}",
                                  f"{len(res.variants)} variants × {len(res.targets)} targets", f"schema {res.schema_id}") if x)


def _html_cell(c, tag="td") -> str:
    c = c if isinstance(c, C) else C(c)
    attrs = (f' class="{c.cls}"' if c.cls else "") + (f' colspan="{c.span}"' if c.span > 1 else "")
    return f"<{tag}{attrs}>{html.escape(c.text)}" + (f"<small>{html.escape(c.sub)}</small>" if c.sub else "") + f"</{tag}>"


def _th(h, rows, i) -> C:
    """A header aligned like its column (text left, numbers right)."""
    first = rows[0][i] if rows and i < len(rows[0]) else None
    h = h if isinstance(h, C) else C(h)
    return h._replace(cls="txt") if isinstance(first, C) and "txt" in first.cls.split() else h


def _html_blocks(blocks, svgs) -> str:
    e, out = html.escape, []
    for kind, *a in blocks:
        out.append({"h2": lambda: f'<h2 id="{a[1]}">{e(a[0])}</h2>', "h3": lambda: f"<h3>{e(a[0])}</h3>",
                    "p": lambda: f"<p>{e(a[0])}</p>", "note": lambda: f'<p class="note">{e(a[0])}</p>',
                    "box": lambda: f'<div class="box {a[0]}"><b>{e(a[1])}</b><span>{e(a[2])}</span></div>',
                    "figure": lambda: f'<figure id="fig-{a[0]}">{svgs[a[0]]}<figcaption>{e(a[1])}</figcaption></figure>',
                    "pre": lambda: f"<pre>{e(a[0])}</pre>", "details": lambda: f"<details><summary>{e(a[0])}</summary>{_html_blocks(a[1], svgs)}</details>",
                    "table": lambda: '<div class="scroll"><table><thead><tr>' + "".join(_html_cell(_th(h, a[1], i), "th") for i, h in enumerate(a[0])) + "</tr></thead><tbody>"
                                     + "".join("<tr>" + "".join(map(_html_cell, r)) + "</tr>" for r in a[1]) + "</tbody></table></div>",
                    }[kind]())
    return "\n".join(out)


CSS = """
:root{--ok:#1a7f37;--okbg:#dafbe1;--bad:#cf222e;--badbg:#ffebe9;--warn:#9a6700;--warnbg:#fff8c5;--line:#d0d7de;--muted:#57606a}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1280px;margin:0 auto;padding:24px 28px 64px;background:#fff;min-height:100vh;box-sizing:border-box}
h1{margin:0 0 4px;font-size:26px} h2{margin:34px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line);font-size:20px}
h3{margin:22px 0 8px;font-size:15px} .meta,.note{color:var(--muted)} .note{font-size:12.5px}
nav{margin:10px 0 18px;font-size:13px} nav a{margin-right:14px;color:#0969da;text-decoration:none}
.box{border-left:5px solid;border-radius:6px;padding:9px 14px;margin:8px 0;display:flex;flex-direction:column;gap:2px}
.box b{font-size:13px} .box span{font-size:15px}
.box.ok{border-color:var(--ok);background:var(--okbg)} .box.bad{border-color:var(--bad);background:var(--badbg)} .box.warn{border-color:var(--warn);background:var(--warnbg)}
.scroll{overflow-x:auto;margin:6px 0} table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);white-space:nowrap;text-align:right;vertical-align:top}
th{background:#f6f8fa;font-weight:600} th:first-child,.txt{text-align:left} tbody tr:hover{background:#f6f8fa}
td small,th small{display:block;color:var(--muted);font-size:11px;font-weight:400}
td.pass{color:var(--ok);font-weight:600} td.fail{color:var(--bad);font-weight:600} td.warn{color:var(--warn);font-weight:600;background:var(--warnbg)}
td.muted{color:var(--muted)} td.fail.txt,td.warn.txt{white-space:normal}
figure{margin:10px 1% 10px 0;display:inline-block;width:48.5%;min-width:min(460px,100%);max-width:100%;vertical-align:top;box-sizing:border-box}
figure svg{display:block;width:100%;max-width:100%;height:auto} p,.box span,td.txt{overflow-wrap:anywhere}
@media (max-width:700px){main{padding:16px 12px 48px} figure{width:100%;margin:10px 0}}
figcaption{color:var(--muted);font-size:12.5px;text-align:center}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:10px 12px;overflow-x:auto;font-size:12.5px}
details{margin:6px 0} summary{cursor:pointer;color:#0969da}
"""


def to_markdown(res: Results, blocks: list) -> str:
    return "\n".join([f"# edgekit report: {md(res.run.name or 'run')}", "", md(_meta(res)), "", *_md_blocks(blocks)])


def to_html(res: Results, blocks: list, svgs: dict) -> str:
    title, e = f"edgekit report: {res.run.name or 'run'}", html.escape
    nav = "".join(f'<a href="#{b[2]}">{e(b[1])}</a>' for b in blocks if b[0] == "h2")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body><main>\n<h1>{e(title)}</h1><div class=\"meta\">{e(_meta(res))}</div>"
            f"<nav>{nav}</nav>\n{_html_blocks(blocks, svgs)}\n</main></body></html>\n")
