"""The words and small HTML of the app's page (UI text lives here, not in the service)."""
from __future__ import annotations

from .. import records, viz
from ..config import VARIANTS

INTRO = """# MRAD — zero-shot anomaly detection, three ways side by side
Drop an image and press **Detect**: CLIP encodes it **once** and MRAD-TF, MRAD-FT and MRAD-CLIP score it by
retrieving what it resembles from a memory bank of normal and anomalous examples."""
HELP = """**Score** (all variants, same formula, 0–1): `0.3 × mean of the top 1 % of the anomaly map + 0.7 × image
probability`; at or above the **image threshold** the verdict is *anomalous*. **Image probability**: how much the
whole image resembles the bank's anomalous images rather than its normal ones (0.5 = equally). **Map top 1 %**: the
mean of the map's hottest 1 % pixels. **Defect area**: share of pixels at or above the **pixel threshold** in the
chosen normalisation. **Normalisation**: *raw* = the model's per-pixel probability of "anomalous"; *min–max* =
stretched per image (shows where, hides how much); *calibrated* = fixed per variant from normal reference images
(0.5 = the highest value any normal reference reached). **Latency**: scoring time of the variant; the CLIP encoding
is shared and shown once. **MRAD-TF** compares raw CLIP features (training-free), **MRAD-FT** compares them through
small trained projections, **MRAD-CLIP** turns the retrieved regions into text prompts for CLIP."""
FOOTER = """---
**MRAD** re-implements *MRAD: Zero-Shot Anomaly Detection with Memory-Driven Retrieval* (ICLR 2026,
[paper]({paper})) on open_clip. Licences: code MIT; banks built from MVTec AD are CC BY-NC-SA 4.0
(non-commercial), from VisA CC BY 4.0; the example images are synthetic (procedural, `assets/make_examples.py`).
Scores are research outputs: **this demo is not a medical device** and not a certified inspection system."""


def legend_html(colormap, threshold, normalisation) -> str:
    stops = ", ".join(f"rgb{tuple(int(c) for c in viz.lut(colormap)[i])} {i / 2.55:.0f}%" for i in range(0, 256, 32))
    return (f"<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>0<div style='flex:1;"
            f"max-width:320px;height:12px;border-radius:3px;background:linear-gradient(90deg,{stops});position:"
            f"relative'><div style='position:absolute;left:{threshold * 100:.0f}%;top:-3px;bottom:-3px;width:2px;"
            f"background:#fff;outline:1px solid #000'></div></div>1 <span>({normalisation}; marker = pixel "
            f"threshold)</span></div>")


def fold_note(shape, parts: int) -> str:
    """Says how a folded picture (viz.fold) reads; empty when it is shown as it is."""
    if parts <= 1:
        return ""
    tall = shape[0] > shape[1]
    how = "very tall image is shown cut top to bottom into {} strips, placed side by side" if tall else \
        "very wide image is shown cut left to right into {} strips, stacked top to bottom"
    return (f"<div id='fold-note' style='font-size:0.85em'>This {how.format(parts)}, so that the columns show it "
            "at a readable size; it was scored whole.</div>")


class Thresholds:
    """Which image threshold judges each variant: an inspection profile's own threshold for the variants it has,
    else the image-threshold slider."""

    def __init__(self, slider: float, profile=None):
        self.slider, self.profile = float(slider), profile

    def of(self, variant: str) -> float:
        p = self.profile
        return float(p.variants[variant].image_threshold) if p is not None and variant in p.variants else self.slider

    def text(self, variant: str) -> str:
        """The threshold as the card shows it (a profile's to 3 decimals, the slider's to its step)."""
        own = self.profile is not None and variant in self.profile.variants
        return f"{self.of(variant):.3f}" if own else f"{self.slider:.2f}"

    def source(self, variant: str) -> str:
        """Where the variant's threshold comes from, in words (for its card)."""
        if self.profile is not None and variant in self.profile.variants:
            return f"{records.name(variant)}'s threshold in profile '{self.profile.name}'"
        return "the image-threshold slider"

    def note(self) -> str:
        """The slider's role while a profile judges (empty without a profile)."""
        if self.profile is None:
            return ""
        own = [v for v in VARIANTS if v in self.profile.variants]
        return (f"  \n_Verdicts: each variant at its own threshold from profile '{self.profile.name}' ("
                + ", ".join(f"{records.name(v)} {self.of(v):.3f}" for v in own) + "); the image-threshold slider "
                "judges only variants the profile has no threshold for._")


def card_html(out: records.VariantOutput, area, judge: Thresholds, view: viz.View) -> str:
    threshold = judge.of(out.variant)
    bad = out.anomalous(threshold)
    colour = "#c62828" if bad else "#2e7d32"
    scale = view.normalisation if view.normalisation != "calibrated" or out.calibration else "raw: not calibrated"
    return (f"<div id='card-{out.variant}' style='border:2px solid {colour};border-radius:8px;padding:8px 12px'>"
            f"<div style='font-weight:700;color:{colour};font-size:1.1em' class='mrad-verdict'>"
            f"{'ANOMALOUS' if bad else 'normal'}</div>"
            f"<div><span class='mrad-score' style='font-size:1.8em;font-weight:700'>{out.score:.3f}</span>"
            f" score <span class='mrad-threshold' title='{judge.source(out.variant)}'>(threshold "
            f"{judge.text(out.variant)})</span></div><div style='height:6px;background:#ddd;"
            f"border-radius:3px;position:relative;margin:4px 0'><div style='width:{out.score * 100:.1f}%;height:6px;"
            f"background:{colour};border-radius:3px'></div><div style='position:absolute;left:"
            f"{threshold * 100:.0f}%;top:-3px;width:2px;height:12px;background:#000'></div></div>"
            + (f"<small class='mrad-judged'>judged by {judge.source(out.variant)}</small><br>" if judge.profile
               else "") +
            f"<small>image probability {out.image_prob:.3f} · map top 1 % {out.map_top:.3f}<br>defect area "
            f"{area:.2f} % (pixels ≥ {view.pixel_threshold:.2f}, {scale}) · {out.latency_ms:.0f} ms</small></div>")


def summary_md(a: records.Analysis, judge: Thresholds, view: viz.View) -> str:
    verdicts = " · ".join(f"{records.name(v)} **{'anomalous' if o.anomalous(judge.of(v)) else 'normal'}** "
                          f"({o.score:.3f})" for v, o in a.outputs.items())
    encoded = "encoding re-used (same image as before)" if a.reused else f"encoded once in {a.encode_ms:.0f} ms"
    note = " · calibrated scale not computed: showing raw" if view.normalisation == "calibrated" and \
        not a.calibrated else ""
    skipped = "".join(f"  \n_{records.name(v)} did not run: {why}_" for v, why in a.skipped.items())
    setup = f"{a.setup['device'].upper()} ({a.setup['engine']}, {a.setup['precision']})"
    return (f"**{a.name}** — {verdicts} · {encoded} on {setup} · "
            f"{a.source_label}{note}" + (f"  \n_{'; '.join(a.notes)}_" if a.notes else "") + skipped
            + judge.note())


def facts_md(facts, settings=None) -> str:
    """A source's facts as a list; with `settings`, the MRAD_* files that point at nothing first."""
    lines = [f"⚠️ {var} points at a file that does not exist: `{path}`"
             for var, path in (missing_files(settings) if settings is not None else [])] + list(facts.lines)
    return f"**{facts.label}**\n" + "\n".join(f"- {line}" for line in lines)


def missing_files(settings) -> list:
    """[(environment variable, path)] of the MRAD_* files that are set but do not exist."""
    from ..settings import FILE_ENV
    from pathlib import Path
    return [(FILE_ENV[k], v) for k, v in settings.files.items() if v and k in FILE_ENV and not Path(v).is_file()]


def missing_files_md(settings) -> str:
    """One warning line per MRAD_* variable that points at nothing ('' when all are there)."""
    return "  \n".join(f"⚠️ **{var} points at a file that does not exist:** `{path}` (check the path; relative "
                       "paths start from the folder the app was started in)" for var, path in missing_files(settings))


def startup_notice(service, failure: str | None = None) -> str:
    """What stands between a visitor and a first result: said at start (nothing is loaded for it) and again after
    a Detect that failed (`failure`: its message), so it never promises what already failed."""
    missing = missing_files_md(service.settings)
    problem = service.backbone_problem()
    if problem is None:
        return missing
    if failure:
        notice = ("⚠️ **The CLIP backbone could not be loaded, so Detect cannot run:** " + failure + "  \nTo fix: "
                  "set `MRAD_BACKBONE` to a local ViT-L/14@336 file, or give this machine access to the Hugging Face "
                  "Hub, then press Detect again.")
    elif service.settings.hub_offline:
        notice = ("⚠️ **The CLIP backbone is not on this machine and HF_HUB_OFFLINE=1 is set**, so Detect cannot run. "
                  f"To fix: set `MRAD_BACKBONE` to a local ViT-L/14@336 file, or unset HF_HUB_OFFLINE once to let it "
                  f"download (about 1.7 GB).  \n<small>{problem}</small>")
    else:
        notice = ("ℹ️ **First run:** the CLIP backbone (about 1.7 GB) is not downloaded yet; the first Detect "
                  "downloads it (if this machine can reach the Hugging Face Hub) and prepares it, which takes a few "
                  "minutes. Everything after that is fast.")
    return "  \n".join(x for x in (missing, notice) if x)


def variant_note(available) -> str:
    missing = [records.name(v) for v in VARIANTS if v not in available]
    return ("" if not missing else f"{', '.join(missing)} need trained heads (MRAD_HEADS, or the VisA/MVTec source); "
            "this memory bank runs " + ", ".join(records.name(v) for v in available))
