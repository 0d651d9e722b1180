"""One self-contained ``index.html``: figures as data URIs, tables, no network.

A Content-Security-Policy meta tag makes "no request leaves the file" a property the
browser enforces, not a hope: ``default-src 'none'`` blocks every fetch, images may only
be ``data:`` URIs, styles only inline, and the one inline script is allowed by its
SHA-256 hash (CSP Level 2 hash-source). That script records, in the DOM, how many images
loaded and how many CSP violations fired, so a headless browser test can read both.
Every string that comes from results (labels, configs, paths, notes) is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html

from bench.report.figures import RenderedFigure

# Records image loading, blocked requests and whether the page is wider than the window
# (horizontal overflow) as data-* attributes on #render-check.
CHECK_SCRIPT = """(function () {
  var violations = 0;
  function mark() {
    var imgs = document.images, loaded = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].complete && imgs[i].naturalWidth > 0) loaded++;
    }
    var m = document.getElementById("render-check");
    m.setAttribute("data-images", String(imgs.length));
    m.setAttribute("data-images-loaded", String(loaded));
    m.setAttribute("data-csp-violations", String(violations));
    m.setAttribute("data-scroll-width", String(document.documentElement.scrollWidth));
    m.setAttribute("data-inner-width", String(window.innerWidth));
    m.setAttribute("data-ready", "1");
  }
  document.addEventListener("securitypolicyviolation", function () { violations++; mark(); });
  window.addEventListener("load", mark);
})();"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
p, li, h1, h2, figcaption { overflow-wrap: anywhere; }
/* A wide table scrolls inside its own box; the page never gets wider than the window. */
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem;
        display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #555; }
.meta { font-size: 0.9rem; color: #444; } .notes li { font-size: 0.85rem; }
"""


def script_hash() -> str:
    return base64.b64encode(hashlib.sha256(CHECK_SCRIPT.encode()).digest()).decode()


CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{script_hash()}'; base-uri 'none'; form-action 'none'"
)


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def table_html(headers: list[str], rows: list[list[object]], align: list[str]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="num">{esc(v)}</td>' if a == "r" else f"<td>{esc(v)}</td>"
            for v, a in zip(r, align, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(
    *,
    title: str,
    meta: list[str],
    figures: list[RenderedFigure],
    tables: list[tuple[str, str, list[str], list[list[object]], list[str]]],
    notes: list[str],
) -> str:
    """``tables``: (title, intro, headers, rows, align)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        '<div class="meta"><ul>' + "".join(f"<li>{esc(m)}</li>" for m in meta) + "</ul></div>",
    ]
    for t_title, intro, headers, rows, align in tables:
        parts.append(f"<h2>{esc(t_title)}</h2>")
        if intro:
            parts.append(f"<p>{esc(intro)}</p>")
        parts.append(table_html(headers, rows, align))
    for f in figures:
        data = base64.b64encode(f.png).decode()
        parts.append(
            f"<h2>{esc(f.title)}</h2><figure>"
            f'<img alt="{esc(f.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(f.caption)}</figcaption></figure>"
        )
    if notes:
        parts.append(
            '<h2>Notes</h2><ul class="notes">'
            + "".join(f"<li>{esc(n)}</li>" for n in notes)
            + "</ul>"
        )
    parts.append('<div id="render-check" hidden></div>')
    parts.append(f"<script>{CHECK_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
