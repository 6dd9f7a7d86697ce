"""What the teaching panel shows: its words, the profile plot, the top-entry tables (no model, no Gradio state)."""
from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..records import name

TEACH_HELP = ("Fix a false alarm or a miss **on the spot**, without training: **This is normal** adds the image "
              "on screen to the memory as normal; **Mark the defect** opens it in the brush editor: the painted region "
              "becomes anomalous memory, the rest normal. You can also upload a defect image into the editor (paint "
              "it, or give its mask) or add normal images from files. Each change makes a new bank (*My bank*) and "
              "re-scores the image at once; **Undo** goes back to the earlier bank, with exactly its results.")
CALIBRATE_HELP = ("Give 5–50 **known-good** images of one product. Per variant, the image threshold is set so that "
                  "at most the chosen share of normal images would be flagged, and the pixel threshold the same way "
                  "over their pixels. The sliders move to the profile's thresholds and the *calibrated* view uses "
                  "it: 0 = a typical normal pixel, 1 = the pixel threshold, for every variant.")
WHY_HELP = ("The image-level retrieval's most-weighted memory entries per variant (softmax weights; MRAD-CLIP's "
            "image probability comes from MRAD-FT's retrieval). Click a point of the map for that patch's "
            "retrieval.")
NO_IMAGE = "no image: press **Detect anomalies** on an image first"


def profile_figure(profile, analysis=None) -> Figure:
    """One small panel per variant: the normal scores (dots and a histogram), the image threshold and, when an
    image is on screen, its score."""
    variants = list(profile.variants)
    fig = Figure(figsize=(3.2 * len(variants), 2.4), dpi=90, layout="constrained")
    for ax, v in zip(fig.subplots(1, len(variants), squeeze=False)[0], variants):
        p = profile.variants[v]
        scores = np.asarray(p.normal_scores)
        ax.hist(scores, bins=min(12, max(3, len(scores) // 2)), color="#9bb7d4", alpha=0.8)
        ax.plot(scores, np.zeros_like(scores), "|", color="#1f4e79", markersize=14, label="normal images")
        ax.axvline(p.image_threshold, color="#c0392b", linestyle="--", label=f"threshold {p.image_threshold:.3f}")
        out = analysis.outputs.get(v) if analysis is not None else None
        if out is not None:
            ax.axvline(out.score, color="#111111", linewidth=2, label=f"this image {out.score:.3f}")
        ax.set_title(name(v), fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    return fig


def profile_md(profile, follow: str) -> str:
    rows = "".join(f"| {name(v)} | {p.image_threshold:.4f} | {p.pixel_threshold:.4f} | {len(p.normal_scores)} |\n"
                   for v, p in profile.variants.items())
    return (f"**Profile '{html.escape(profile.name or 'unnamed')}'** (false-alarm rate {100 * profile.rate:g} %): "
            f"the image-threshold slider follows {name(follow)}; the pixel threshold is 1 on the calibrated scale.\n\n"
            "| variant | image threshold | pixel threshold (raw) | normal images |\n|---|---|---|---|\n" + rows)


def _thumb(arr) -> str:
    if arr is None:
        return ""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, "PNG")
    return (f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}' width='40' "
            "height='40' style='image-rendering:pixelated'>")


def _row(e, image_col: bool) -> str:
    ident = html.escape(str(e["id"])) if e.get("id") is not None else "—"
    cells = [str(e["index"]), ident, e["label"], f"{e['weight']:.4f}"]
    if image_col:
        cells.append(_thumb(e.get("thumbnail")))
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def entries_html(data: dict) -> str:
    """explain_image's result -> one table per variant (index, id, label, weight, thumbnail)."""
    parts = [f"<p class='mrad-note'><i>{html.escape(data['note'])}</i></p>"] if data.get("note") else []
    for v, rows in data["entries"].items():
        image_col = any(r.get("thumbnail") is not None for r in rows)
        head = "<th>index</th><th>id</th><th>label</th><th>weight</th>" + ("<th>image</th>" if image_col else "")
        parts.append(f"<div id='why-{v}'><b>{name(v)}</b><table><tr>{head}</tr>"
                     + "".join(_row(r, image_col) for r in rows) + "</table></div>")
    return "".join(parts)


def point_md(p: dict, variant: str) -> str:
    rows = "".join(f"| {e['index']} | {e['id'] if e['id'] is not None else '—'} | {e['label']} | "
                   f"{e['weight']:.4f} |\n" for e in p["top_entries"])
    note = f"\n\n*{p['note']}*" if p.get("note") else ""
    return (f"**{name(variant)}, patch (row {p['row']}, column {p['col']})**: normal {p['normal']:.3f}, anomalous "
            f"{p['anomalous']:.3f}\n\n| patch entry | from image | label | weight |\n|---|---|---|---|\n" + rows + note)
