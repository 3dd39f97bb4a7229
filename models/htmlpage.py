"""Self-contained HTML for reports that must open offline: one stylesheet, safe markdown, no external asset.

Used by the registry UI (services/ui), the validation report (expectations/report.py) and the run report that
the retrain flow writes next to its Prefect artifact. Standard library + the ``markdown`` package (a Prefect
dependency), imported inside the function.
"""

from __future__ import annotations

import html
import re

# One stylesheet for every page we render: the UI serves it at /static/style.css, standalone files inline it.
STYLE = """
:root { --fg:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f7f8fa; --card:#fff; --accent:#2563eb;
        --ok:#0f7b3f; --okbg:#e3f6ea; --warn:#8a5a00; --warnbg:#fff4d6; --bad:#b42318; --badbg:#fde8e6; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--fg); background:var(--bg); }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
header.top { background:#111827; color:#fff; padding:10px 24px; display:flex; align-items:center; gap:18px; }
header.top a { color:#fff; font-weight:600; } header.top .muted { color:#9ca3af; }
main { max-width:1200px; margin:0 auto; padding:20px 24px 48px; }
h1 { font-size:22px; margin:4px 0 14px; } h2 { font-size:17px; margin:26px 0 10px; }
h3 { font-size:14px; margin:16px 0 8px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.crumbs { color:var(--muted); font-size:13px; margin-bottom:4px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 18px; margin:12px 0; overflow-x:auto; }
.card > h3:first-child { margin-top:0; }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(320px,1fr)); gap:14px; }
table { border-collapse:collapse; width:100%; background:var(--card); font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f1f3f6; font-weight:600; font-size:12px; color:#3e4c59; white-space:nowrap; }
td.num, th.num { text-align:right; } tr:hover td { background:#fafbfc; }
table.kv th { width:34%; background:transparent; font-size:13px; } table.kv td { overflow-wrap:anywhere; }
code, pre { font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace; font-size:12px; }
code { background:#f1f3f6; padding:1px 4px; border-radius:4px; word-break:break-all; }
pre { background:#f1f3f6; padding:10px; border-radius:6px; overflow:auto; max-height:420px; }
.pill { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600;
        background:#e0e7ff; color:#3730a3; margin:0 3px 2px 0; }
.pass, .ok { background:var(--okbg); color:var(--ok); } .warn { background:var(--warnbg); color:var(--warn); }
.fail, .bad { background:var(--badbg); color:var(--bad); } .muted { color:var(--muted); }
.archived { background:#eceff3; color:var(--muted); }
.delta-up { color:var(--ok); } .delta-down { color:var(--bad); }
.plots { display:grid; grid-template-columns:repeat(auto-fit,minmax(340px,1fr)); gap:14px; }
.plots figure { margin:0; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px; }
.plots img { width:100%; height:auto; display:block; } figcaption { font-size:12px; color:var(--muted); }
.markdown table { width:auto; } .markdown h1 { font-size:19px; } .markdown h2 { font-size:16px; }
form.inline { display:flex; gap:8px; flex-wrap:wrap; align-items:end; }
form.inline label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); }
input, select, button { font:inherit; padding:5px 8px; border:1px solid #cbd2d9; border-radius:6px; }
button { background:var(--accent); color:#fff; border-color:var(--accent); cursor:pointer; }
.flash { padding:10px 14px; border-radius:6px; margin:10px 0; }
"""

_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')


def markdown_to_html(text: str, image_prefix: str | None = None) -> str:
    """Markdown (tables, fenced code) to HTML with raw HTML escaped, not passed through: the text may quote
    data. ``image_prefix`` rewrites relative image paths (e.g. ``reports/x.png``) to ``prefix + path``."""
    import markdown

    converter = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert(text)
    if image_prefix is not None:

        def rewrite(match: re.Match) -> str:
            src = match.group(2)
            if src.startswith(("data:", "/", "#")) or "://" in src:
                return match.group(0)
            return match.group(1) + image_prefix + src.lstrip("./") + match.group(3)

        body = _IMG_SRC.sub(rewrite, body)
    return body


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML metadata block, body) of a Hugging Face style card; the block is '' when there is none."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[4:end].strip(), text[end + 4 :].lstrip("\n")
    return "", text


def standalone_page(title: str, body_html: str) -> str:
    """A complete HTML document with the stylesheet inlined: opens from disk with no network."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body_html}</main></body></html>\n"
    )
