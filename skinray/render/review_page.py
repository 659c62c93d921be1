"""Pages a person opens: one self-contained HTML file per scoring run (and per evaluation), no CDN, no internet.

Images are embedded as small JPEG/PNG data URIs, charts are inline SVG, and a few lines of script only check the
page itself (every image decoded, no script error) and write the result into ``<body data-...>`` attributes, so a
headless browser test — or a person's dev tools — can see at once that nothing is broken. This module only
renders; :mod:`skinray.scoring.report` and :mod:`skinray.inference.evaluate` gather what goes in.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

STYLE = """
body{font:14px/1.45 -apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:20px}
header .sub{color:#b9c0cc;font-size:13px}main{padding:18px 28px;max-width:1280px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;margin:0 0 18px;padding:14px 18px}
h2{font-size:16px;margin:0 0 10px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e1e4ea;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}.ok{color:#17803d}.bad{color:#c0262d}.warn{color:#b86e00}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#e3f4e8}.badge.bad{background:#fbe4e5}.badge.warn{background:#fdf0dc}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #edf0f4;padding:4px 10px;text-align:left}
th{background:#f3f5f8}.grid{display:flex;flex-wrap:wrap;gap:12px}
.lesion{border:1px solid #e1e4ea;border-radius:6px;padding:6px;width:268px;font-size:12px}
.lesion img{width:128px;height:128px;border-radius:4px}.lesion .cap{margin-top:4px}
.lesion.malignant{border-color:#c0262d}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
.plots img{max-width:400px;margin:0 12px 12px 0}.muted{color:#6a7383}
.intended{background:#eef3fb;border:1px solid #c9d7ef;border-radius:8px;padding:10px 14px;margin:0 0 18px}
.scroll{max-height:70vh;overflow:auto;border:1px solid #edf0f4}.scroll th{position:sticky;top:0}
code.uri{user-select:all;font-size:12px;word-break:break-all}footer{padding:0 28px 24px;max-width:1280px}
"""
CHECK_SCRIPT = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e.type)); }, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push(String(e.reason)); });
(function (original) {  // console.error counts as an error of the page too
  console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments); };
})(console.error);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  document.body.setAttribute('data-errors', String(window.__errors.length));
  document.body.setAttribute('data-checked', 'yes');
});
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg(image: np.ndarray, size: int = 128, quality: int = 82) -> str:
    """A thumbnail of a uint8 RGB array as a JPEG data URI."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return data_uri(buf.getvalue(), "image/jpeg")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(fmt(float(v), digits) for v in value) + "]"  # an interval
    return esc(value)


def counts(value: dict[str, Any] | None, key_chars: int = 12) -> str:
    """``{"per_image": 9951, "probing": 64}`` → ``per_image 9,951 · probing 64`` (long keys such as node ids cut)."""
    if not value:
        return "n/a"
    cut = (lambda k: k if len(k) <= key_chars else k[:key_chars] + "…")
    return " · ".join(f"{cut(str(k))} {v:,}" for k, v in sorted(value.items(), key=lambda kv: -kv[1]))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{esc(text)}</span>'


def card(label: str, value: Any, kind: str = "", element_id: str | None = None) -> str:
    ident = f' id="{element_id}"' if element_id else ""
    return f'<div class="card">{esc(label)}<b class="{kind}"{ident}>{fmt(value)}</b></div>'


def sparkline(values: Sequence[float | None], labels: Sequence[str], title: str, percent: bool = False,
              marks: Sequence[bool] | None = None) -> str:
    """A small inline SVG line chart (no library, no script); ``marks`` draws red dots (e.g. drift flags)."""
    w, h, pad = 360, 110, 28
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not pts:
        return f'<div><b>{esc(title)}</b><p class="muted">no data</p></div>'
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    hi = hi if hi > lo else lo + (abs(lo) * 0.1 or 1.0)
    n = max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * i / n, h - pad - (h - 2 * pad) * (v - lo) / (hi - lo)

    path = " ".join(f"{'M' if k == 0 else 'L'}{xy(i, v)[0]:.1f},{xy(i, v)[1]:.1f}" for k, (i, v) in enumerate(pts))
    show = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3f}")
    dots = "".join(f'<circle cx="{xy(i, v)[0]:.1f}" cy="{xy(i, v)[1]:.1f}" r="3" fill="'
                   f'{"#c0262d" if marks and marks[i] else "#2f6fd6"}"><title>{esc(labels[i])}: {show(v)}</title>'
                   f"</circle>" for i, v in pts)
    return (f'<div><b>{esc(title)}</b><br><svg width="{w}" height="{h}" role="img" aria-label="{esc(title)}">'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#ccd"/>'
            f'<path d="{path}" fill="none" stroke="#2f6fd6" stroke-width="2"/>{dots}'
            f'<text x="{pad}" y="{h - 8}" font-size="10" fill="#6a7383">{esc(labels[0])}</text>'
            + (f'<text x="{w - pad}" y="{h - 8}" font-size="10" fill="#6a7383" text-anchor="end">{esc(labels[-1])}'
               "</text>" if len(labels) > 1 else "") +
            f'<text x="2" y="{pad}" font-size="10" fill="#6a7383">{show(hi)}</text>'
            f'<text x="2" y="{h - pad}" font-size="10" fill="#6a7383">{show(lo)}</text></svg></div>')


INTENDED_USE = ("Intended use: triage support for a clinician reading dermoscopic images — this page orders the "
                "images a reviewer should look at first; it is not a diagnosis and does not replace a "
                "dermatologist's examination or histology.")
LINKS_NOTE = ("Full-size images: a local image is linked relative to this page's folder (the link keeps working "
              "while the run's output folder and the images stay where they were scored, or move together). An "
              "s3:// image is shown as its URI, selected with one click to copy (aws s3 cp, or the S3 console): a "
              "browser cannot open s3://, an https URL of a private bucket is refused, and a presigned link would "
              "expire and hand the image to whoever holds the page, so the page makes none.")


@dataclass
class Lesion:
    """One image card: the picture, its saliency overlay (when computed) and what the model said."""

    isic_id: str
    image: str  # data URI
    overlay: str | None
    prob: float
    predicted: str
    dx_pred: str | None = None
    note: str = ""
    uri: str | None = None  # the full-size image
    href: str | None = None  # its link from the page (None: not openable by a browser, the URI is shown)


@dataclass
class Flag:
    """One row of the worklist table: a flagged image, as text and a link (no thumbnail)."""

    rank: int
    isic_id: str
    prob: float
    dx_pred: str | None
    dx_prob: float | None
    uri: str
    href: str | None


class RunFacts(Protocol):
    """What the run page reads of a scoring run's record (:class:`skinray.scoring.record.RunRecord`)."""

    run_id: str
    scored_date: str
    status: str
    model_id: str
    rows: int
    scored: int
    failed: int
    metrics: dict[str, Any] | None


@dataclass
class RunPage:
    run: RunFacts
    flagged_count: int
    flagged: list[Lesion]
    borderline: list[Lesion]
    failures: dict[str, list[str]]
    drift: dict[str, Any]
    trend: list[dict[str, Any]]
    plots: dict[str, bytes] = field(default_factory=dict)  # name → PNG
    saliency_note: str = ""
    outside: list[Lesion] = field(default_factory=list)  # images the out-of-distribution guard flagged
    outside_count: int = 0
    guard_text: str = ""  # the guard in words, or that the model has none
    worklist: list[Flag] = field(default_factory=list)  # every flagged image, most suspicious first
    health: list[dict[str, Any]] = field(default_factory=list)  # the run-health table's rows: what, value


def full_size(uri: str | None, href: str | None, text: str) -> str:
    """A link to the full-size image, or its URI as copyable text where a browser cannot open it."""
    if href:
        return f'<a href="{esc(href)}">{esc(text)}</a>'
    return f'<code class="uri">{esc(uri)}</code>' if uri else ""


def _diagnosis(dx: str | None, prob: float | None) -> str:
    known = prob is not None and math.isfinite(prob)
    return "" if not isinstance(dx, str) else esc(dx) + (f" ({prob:.2f})" if known else "")


def _worklist(items: list[Flag], count: int) -> str:
    """Every flagged image as a scrollable table of text and links: thousands of rows, no thumbnails."""
    rows = "".join(f'<tr><td>{f.rank}</td><td class="mono">{esc(f.isic_id)}</td><td>{f.prob:.4f}</td>'
                   f"<td>{_diagnosis(f.dx_pred, f.dx_prob)}</td><td>"
                   f"{full_size(f.uri, f.href, f.uri.rsplit('/', 1)[-1])}</td></tr>" for f in items)
    table_html = ('<div class="scroll"><table><thead><tr><th>#</th><th>image id</th><th>P(malignant)</th>'
                  "<th>most likely diagnosis (probability)</th><th>full-size image</th></tr></thead>"
                  f"<tbody>{rows}</tbody></table></div>" if items else '<p class="muted">(none)</p>')
    return (f'<section id="worklist" data-count="{len(items)}"><h2>Worklist: all {count:,} flagged images, most '
            'suspicious first</h2><p class="muted">The cards above show the first of them; the same list, with the '
            "calibrated logit and the confidence, is <code>worklist.csv</code> beside this page. The images the "
            "out-of-distribution guard flagged are not in it: they are listed below.</p>" + table_html + "</section>")


def _lesions(items: list[Lesion]) -> str:
    if not items:
        return '<p class="muted">(none)</p>'
    cards = []
    for it in items:
        overlay = f'<img src="{it.overlay}" alt="saliency of {esc(it.isic_id)}">' if it.overlay else ""
        dx = f" · {esc(it.dx_pred)}" if it.dx_pred else ""
        link = f" · {full_size(it.uri, it.href, 'full size')}" if it.uri else ""
        cards.append(f'<div class="lesion {esc(it.predicted)}"><img src="{it.image}" alt="{esc(it.isic_id)}">'
                     f'{overlay}<div class="cap"><b class="mono">{esc(it.isic_id)}</b>{link}<br>P(malignant) '
                     f'{it.prob:.4f} · {esc(it.predicted)}{dx}{(" · " + esc(it.note)) if it.note else ""}</div></div>')
    return '<div class="grid">' + "".join(cards) + "</div>"


def _page(title: str, subtitle: str, sections: list[str], footer: str = "") -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style>'
            f"<script>{CHECK_SCRIPT}</script></head><body><header><h1>{esc(title)}</h1>"
            f'<div class="sub">{subtitle}</div></header><main>{"".join(sections)}</main>'
            + (f'<footer class="muted">{footer}</footer>' if footer else "") + "</body></html>\n")


def _drift_section(drift: dict[str, Any]) -> str:
    if not drift.get("reference"):
        return ('<section id="drift"><h2>Drift</h2><p class="muted" data-drift="unknown">The model directory has '
                "no validation reference (models trained before it was recorded): no drift check.</p></section>")
    state = "drifted" if drift["drifted"] else "stable"
    banner = (badge("drift: " + ", ".join(drift["flagged"]), "bad") if drift["drifted"]
              else badge("no drift against the validation reference", "ok"))
    rows = [{"column": r["column"], "n": r["n"], "PSI": r["psi"], "KS D": r.get("ks_statistic"),
             "KS p": None if r.get("ks_pvalue") is None else f"{r['ks_pvalue']:.1e}",
             "mean": r.get("mean"), "reference mean": r.get("reference_mean"),
             "flag": "DRIFT" if r["flag"] else "", "why": r.get("reason", "")} for r in drift["columns"]]
    t = drift["thresholds"]
    return (f'<section id="drift" data-drift="{state}"><h2>Drift against the validation reference</h2>{banner}'
            f'<p class="muted">Flag: PSI ≥ {t["psi"]} or KS p &lt; {t["ks_alpha"]} with D ≥ {t["ks_min_statistic"]}'
            f' (at least {t["min_rows"]} rows).</p>{table(rows)}</section>')


def _trend_section(trend: list[dict[str, Any]]) -> str:
    if not trend:
        return '<section id="trend"><h2>Trend</h2><p class="muted">No earlier runs.</p></section>'
    labels = [f"{r['scored_date']} {r['run_id']}" for r in trend]
    marks = [bool(r.get("drifted")) for r in trend]
    charts = [sparkline([r.get("flag_rate") for r in trend], labels, "flagged malignant (share of scored)", True,
                        marks),
              sparkline([r.get("failure_rate") for r in trend], labels, "failed images (share)", True, marks),
              sparkline([r.get("mean_prob") for r in trend], labels, "mean P(malignant)", False, marks)]
    runs_word = "run" if len(trend) == 1 else "runs"
    return (f'<section id="trend"><h2>Trend of the last {len(trend)} {runs_word}</h2><div class="grid">'
            f'{"".join(charts)}</div><p class="muted">Red dots: runs with drift.</p></section>')


def _metrics_section(page: RunPage) -> str:
    metrics = page.run.metrics or {}
    at = metrics.get("at_threshold") or {}
    imgs = "".join(f'<img src="{data_uri(png, "image/png")}" alt="{esc(name)}">' for name, png in page.plots.items())
    ci = metrics.get("roc_auc_ci95") or [None, None]
    rk = metrics.get("ranking") or {}
    return (f'<section id="metrics"><h2>With labels: ROC-AUC {fmt(rk.get("roc_auc"))} [{fmt(ci[0])}, {fmt(ci[1])}], '
            f'sensitivity {fmt(at.get("sensitivity"))}, specificity {fmt(at.get("specificity"))} at the stored '
            f'threshold, ECE {fmt(rk.get("ece"))}</h2><div class="plots">{imgs}</div></section>')


def run_page(page: RunPage) -> str:
    """The review page of one scoring run."""
    r = page.run
    status = r.status or "?"
    kind = {"succeeded": "ok", "failed": "bad"}.get(status, "warn")
    drifted = page.drift.get("drifted")
    cards = "".join([
        card("inputs", r.rows), card("scored", r.scored), card("failed", r.failed, "bad" if r.failed else ""),
        card("flagged malignant", page.flagged_count, "bad" if page.flagged_count else "", "flagged-count"),
        card("not like the training images", page.outside_count, "warn" if page.outside_count else "",
             "outside-count"),
        card("drift", "yes" if drifted else ("no" if page.drift.get("reference") else "n/a"),
             "bad" if drifted else "ok"),
    ])
    failures = "".join(f"<p><b>{esc(reason)}</b> ({len(ids)}): <span class='mono'>"
                       f"{esc(', '.join(ids[:50]))}{' …' if len(ids) > 50 else ''}</span></p>"
                       for reason, ids in sorted(page.failures.items()))
    sections = [
        f'<p class="intended" id="intended-use">{esc(INTENDED_USE)}</p>',
        f'<section id="summary"><h2>Summary {badge(status, kind)}</h2><div class="cards">{cards}</div></section>',
        f'<section id="flagged"><h2>Flagged lesions, most suspicious first</h2><p class="muted">{esc(page.saliency_note)}'
        f"</p>{_lesions(page.flagged)}</section>",
        _worklist(page.worklist, page.flagged_count),
        f'<section id="borderline"><h2>Borderline: closest to the threshold</h2>{_lesions(page.borderline)}</section>',
        f'<section id="out-of-distribution" data-count="{page.outside_count}"><h2>Not like the training images: '
        f'review the image</h2><p class="muted">No benign/malignant call is made for these images (their '
        f"probability is kept in the table for audit): {esc(page.guard_text)}.</p>"
        f"{_lesions(page.outside)}</section>",
        _drift_section(page.drift),
        _trend_section(page.trend),
        f'<section id="health"><h2>Run health</h2>{table(page.health)}<h2 style="margin-top:14px">Failures by '
        f"reason</h2>{failures or '<p class=muted>(none)</p>'}</section>",
    ]
    if page.plots:
        sections.append(_metrics_section(page))
    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _page(f"skinray run {r.run_id}", f"{esc(r.scored_date)} · model {esc(r.model_id)}"
                 f" · generated {made}", sections, esc(LINKS_NOTE))


def evaluation_page(report: dict[str, Any], title: str, description: str, plots: dict[str, bytes]) -> str:
    """The evaluation report as a page: the numbers of ``report.md``, the plots embedded."""
    r, at, a5 = report["ranking"], report["at_threshold"], report["at_0.5"]
    ci = report.get("roc_auc_ci95") or [None, None]
    rows = [{"metric": k, "at 0.5": a5.get(k), "at the stored threshold": at.get(k)}
            for k in ("accuracy", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy", "npv")]
    sections = [
        f'<section id="summary"><h2>Summary</h2><p>{esc(description)}</p><div class="cards">'
        f'{card("images", report["n"])}{card("malignant", report["n_pos"])}{card("ROC-AUC", r.get("roc_auc"))}'
        f'{card("95% CI", f"{fmt(ci[0])}–{fmt(ci[1])}")}{card("ECE", r.get("ece"))}</div></section>',
        f'<section id="threshold"><h2>At the thresholds</h2>{table(rows)}</section>',
    ]
    dx = report.get("diagnosis")
    if dx and dx.get("n"):
        dx_rows = [{"diagnosis": c, "n": dx["support"][c], "recall": dx["recall"][c]} for c in dx["classes"]]
        sections.append(f'<section id="diagnoses"><h2>Diagnoses: balanced accuracy {fmt(dx["balanced_accuracy"])}'
                        f"</h2>{table(dx_rows)}</section>")
    for name, groups in report.get("groups", {}).items():
        sections.append(f'<section><h2>By {esc(name)}</h2>{table(groups)}</section>')
    imgs = "".join(f'<img src="{data_uri(png, "image/png")}" alt="{esc(n)}">' for n, png in plots.items())
    sections.append(f'<section id="plots"><h2>Plots</h2><div class="plots">{imgs}</div></section>')
    return _page(title, esc(report.get("model_id", "")), sections)
