"""MRAD Gradio app: compare MRAD-TF / FT / CLIP side by side on your images, explore with live sliders.

A thin front end over mrad_core: `Service` holds the model, `records` says what a result means, `viz` draws,
`batch` runs batches. Each tab has its builder; `MRADApp.wire` connects the events; handlers return
{component: value}. Model calls go through `gpu_call` (ZeroGPU-ready: plain data in, plain data out, no model
work outside a call). `python app.py [--host H] [--port P] [--share]`. Settings: mrad_core/settings.py.
API endpoints: /predict, /predict_batch, /build_bank, /status (see README).
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from mrad_core import batch, records, viz
from mrad_core.config import VARIANTS
from mrad_core.detector import torch_report
from mrad_core.errors import MRADError
from mrad_core.images import ImageError, load_image
from mrad_core.service import Service
from mrad_core.settings import Settings
from mrad_core.zerogpu import gpu_call, user_errors

log = logging.getLogger("mrad.app")
ROOT = Path(__file__).parent
EXAMPLES = sorted(str(p) for p in (ROOT / "assets" / "examples").glob("*.png"))
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
CONTROLS = ("image_threshold", "pixel_threshold", "opacity", "colormap", "contours", "binary", "normalisation")


def image_input(**kwargs) -> gr.Image:
    """gr.Image that passes the uploaded file on undecoded: mrad_core.images reads it and explains every problem
    (corrupt, empty, huge, 16-bit, CMYK, animated …) instead of Gradio's decoder failing first.
    (Overridden on the instance: a gr.Image subclass here would make Gradio write an app.pyi stub.)"""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.split(",", 1)[1])
        return payload.path

    image.preprocess = preprocess
    return image


# ---------------------------------------------------------------------- words and small HTML (UI text lives here)
def legend_html(colormap, threshold, normalisation) -> str:
    stops = ", ".join(f"rgb{tuple(int(c) for c in viz.lut(colormap)[i])} {i / 2.55:.0f}%" for i in range(0, 256, 32))
    return (f"<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>0<div style='flex:1;"
            f"max-width:320px;height:12px;border-radius:3px;background:linear-gradient(90deg,{stops});position:"
            f"relative'><div style='position:absolute;left:{threshold * 100:.0f}%;top:-3px;bottom:-3px;width:2px;"
            f"background:#fff;outline:1px solid #000'></div></div>1 <span>({normalisation}; marker = pixel "
            f"threshold)</span></div>")


def card_html(out: records.VariantOutput, area, image_threshold, view: viz.View) -> str:
    bad = out.anomalous(image_threshold)
    colour = "#c62828" if bad else "#2e7d32"
    scale = view.normalisation if view.normalisation != "calibrated" or out.calibration else "raw: not calibrated"
    return (f"<div id='card-{out.variant}' style='border:2px solid {colour};border-radius:8px;padding:8px 12px'>"
            f"<div style='font-weight:700;color:{colour};font-size:1.1em'>{'ANOMALOUS' if bad else 'normal'}</div>"
            f"<div><span class='mrad-score' style='font-size:1.8em;font-weight:700'>{out.score:.3f}</span>"
            f" score (threshold {image_threshold:.2f})</div><div style='height:6px;background:#ddd;"
            f"border-radius:3px;position:relative;margin:4px 0'><div style='width:{out.score * 100:.1f}%;height:6px;"
            f"background:{colour};border-radius:3px'></div><div style='position:absolute;left:"
            f"{image_threshold * 100:.0f}%;top:-3px;width:2px;height:12px;background:#000'></div></div>"
            f"<small>image probability {out.image_prob:.3f} · map top 1 % {out.map_top:.3f}<br>defect area "
            f"{area:.2f} % (pixels ≥ {view.pixel_threshold:.2f}, {scale}) · {out.latency_ms:.0f} ms</small></div>")


def summary_md(a: records.Analysis, image_threshold: float, view: viz.View) -> str:
    verdicts = " · ".join(f"{records.name(v)} **{'anomalous' if o.anomalous(image_threshold) else 'normal'}** "
                          f"({o.score:.3f})" for v, o in a.outputs.items())
    encoded = "encoding re-used (same image as before)" if a.reused else f"encoded once in {a.encode_ms:.0f} ms"
    note = " · calibrated scale not computed: showing raw" if view.normalisation == "calibrated" and \
        not a.calibrated else ""
    skipped = "".join(f"  \n_{records.name(v)} did not run: {why}_" for v, why in a.skipped.items())
    return (f"**{a.name}** — {verdicts} · {encoded} on {a.setup['device'].upper()} ({a.setup['precision']}) · "
            f"{a.source_label}{note}" + (f"  \n_{'; '.join(a.notes)}_" if a.notes else "") + skipped)


def facts_md(facts) -> str:
    return f"**{facts.label}**\n" + "\n".join(f"- {line}" for line in facts.lines)


def startup_notice(service: Service) -> str:
    """What stands between a visitor and a first result, said at start (nothing is loaded for it)."""
    problem = service.backbone_problem()
    if problem is None:
        return ""
    if service.settings.hub_offline:
        return ("⚠️ **The CLIP backbone is not on this machine and HF_HUB_OFFLINE=1 is set**, so Detect cannot run. "
                f"To fix: set `MRAD_BACKBONE` to a local ViT-L/14@336 file, or unset HF_HUB_OFFLINE once to let it "
                f"download (about 1.7 GB).  \n<small>{problem}</small>")
    return ("ℹ️ **First run:** the CLIP backbone (about 1.7 GB) is not downloaded yet; it downloads on the first "
            "Detect, which then takes a few minutes. Everything after that is fast.")


def variant_note(available) -> str:
    missing = [records.name(v) for v in VARIANTS if v not in available]
    return ("" if not missing else f"{', '.join(missing)} need trained heads (MRAD_HEADS, or the VisA/MVTec source); "
            "this memory bank runs " + ", ".join(records.name(v) for v in available))


# ---------------------------------------------------------------------- the UI
@dataclass
class DetectTab:
    image: gr.Image = None
    run: gr.Button = None
    summary: gr.Markdown = None
    legend: gr.HTML = None
    columns: dict = field(default_factory=dict)  # variant -> gr.Column
    sliders: dict = field(default_factory=dict)  # variant -> gr.ImageSlider
    cards: dict = field(default_factory=dict)  # variant -> gr.HTML
    controls: dict = field(default_factory=dict)  # CONTROLS name -> component
    json: gr.JSON = None
    export: gr.Button = None
    csv: gr.File = None


class MRADApp:
    """The page around one Service: builders per tab, handlers, and `wire` (tests build it with their Service)."""

    def __init__(self, service: Service):
        self.service = service
        self.settings = service.settings
        cuda = service.device.type == "cuda"
        self.concurrency = self.settings.concurrency or (2 if cuda else 1)
        self.detect = DetectTab()
        # model calls: plain data in, plain data out (ZeroGPU workers); user errors arrive as messages
        per_image, base = self.settings.gpu_seconds_per_image, self.settings.gpu_seconds_base
        gpu = lambda duration: gpu_call(self.settings, duration)  # noqa: E731
        self.gpu_analyze = gpu(lambda *a, calibrate=False, **k: base + per_image * (1 + 4 * calibrate))(
            service.analyze)
        self.gpu_calibrate = gpu(lambda *a, **k: base + 4 * per_image)(service.calibrate)
        self.gpu_chunk = gpu(lambda pixels, *a, **k: base + per_image * len(pixels))(
            lambda *a, **k: batch.score_chunk(service, *a, **k))
        self.gpu_build_bank = gpu(lambda normal, defects=(), *a, **k: base + per_image * (len(normal) + len(defects)))(
            service.build_bank)

    # ------------------------------------------------------------------ builders
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="MRAD: zero-shot anomaly detection", delete_cache=(3600, 7200)) as demo:
            gr.Markdown(INTRO)
            self.notice = gr.Markdown(elem_id="notice")
            self.status = gr.Markdown(self.service.status(), elem_id="status")
            with gr.Row(equal_height=True):
                self.source = gr.Dropdown(self.service.catalogue.choices(), value=self.service.catalogue.default(),
                                          label="Memory bank & heads", scale=3, elem_id="source")
                self.variants = gr.CheckboxGroup([(records.name(v), v) for v in VARIANTS], value=list(VARIANTS),
                                                 label="Variants", scale=2, elem_id="variants")
            with gr.Accordion("What is loaded / missing", open=False) as self.source_panel:
                self.source_info = gr.Markdown()
            self.analysis = gr.State(None)  # records.Analysis of the image on screen
            self.levels = gr.State({})  # calibration key -> {variant: viz.Calibration} computed in GPU calls
            self.bank_id = gr.State(None)  # the custom bank of this session (its files live on the server)
            with gr.Tabs():
                with gr.Tab("Detect", id="detect"):
                    self.build_detect()
                with gr.Tab("Batch", id="batch"):
                    self.build_batch()
                with gr.Tab("Memory bank", id="bank"):
                    self.build_bank()
            with gr.Accordion("What the numbers mean", open=False):
                gr.Markdown(HELP)
            gr.Markdown(FOOTER.format(paper=self.settings.paper_url))
            self.wire(demo)
        demo.queue(default_concurrency_limit=self.concurrency, max_size=self.settings.queue_size)
        demo.mrad = self  # tests address components by name through it
        return demo

    def build_detect(self):
        d = self.detect
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                d.image = image_input(label="Image (drop, paste or click an example)", sources=["upload", "clipboard"],
                                      elem_id="input-image", height=220)
                d.run = gr.Button("Detect anomalies", variant="primary", elem_id="run")
                c = d.controls  # next to the results they re-draw (no model call)
                c["image_threshold"] = gr.Slider(0, 1, 0.5, step=0.01, label="Image threshold (score → verdict)",
                                                 elem_id="image-threshold")
                c["pixel_threshold"] = gr.Slider(0, 1, 0.5, step=0.01, label="Pixel threshold (area, contours)",
                                                 elem_id="pixel-threshold")
                c["normalisation"] = gr.Radio([("raw", "raw"), ("min–max", "minmax"), ("calibrated", "calibrated")],
                                              value="raw", label="Map normalisation", elem_id="normalisation")
                with gr.Accordion("Overlay style", open=False):
                    c["opacity"] = gr.Slider(0, 1, 0.5, step=0.05, label="Overlay opacity")
                    c["colormap"] = gr.Dropdown(list(viz.COLORMAPS), value="turbo", label="Colormap")
                    with gr.Row():
                        c["contours"] = gr.Checkbox(True, label="Contours")
                        c["binary"] = gr.Checkbox(False, label="Binary mask")
                gr.Examples([[p] for p in EXAMPLES], [d.image], label="Synthetic examples (procedural)",
                            examples_per_page=8)
            with gr.Column(scale=3):
                d.summary = gr.Markdown("Results appear here.", elem_id="summary")
                with gr.Row():
                    for v in VARIANTS:
                        with gr.Column(min_width=220, elem_id=f"result-{v}") as d.columns[v]:
                            d.sliders[v] = gr.ImageSlider(label=f"{records.name(v)}: original | overlay",
                                                          elem_id=f"overlay-{v}", slider_position=5, max_height=300)
                            d.cards[v] = gr.HTML(f"<div id='card-{v}'></div>")
                d.legend = gr.HTML()
                with gr.Row():
                    d.export = gr.Button("Export CSV", size="sm", elem_id="export")
                    d.csv = gr.File(label="CSV (one row per variant)", elem_id="csv")
                with gr.Accordion("JSON (as /predict returns it)", open=False):
                    d.json = gr.JSON()

    def build_batch(self):
        gr.Markdown("Many images at once: files, ZIP archives or a folder. Each image is encoded once; bad files are "
                    "listed, the rest scored. Uses the memory bank and variants chosen above.")
        with gr.Row():
            self.files = gr.File(file_count="multiple", label="Images or ZIP archives")
            self.folder = gr.File(file_count="directory", label="…or a folder")
        with gr.Row():
            self.batch_threshold = gr.Slider(0, 1, 0.5, step=0.01, label="Image threshold (verdicts in the CSV)")
            self.batch_pixel = gr.Slider(0, 1, 0.5, step=0.01, label="Pixel threshold (area %, overlays)")
            self.batch_norm = gr.Radio([("raw", "raw"), ("min–max", "minmax"), ("calibrated", "calibrated")],
                                       value="raw", label="Map normalisation of the overlays")
        self.run_batch = gr.Button("Score all", variant="primary", elem_id="run-batch")
        self.batch_report = gr.Markdown()
        self.gallery = gr.Gallery(label="Sorted by mean score (highest first)", columns=4, height="auto")
        self.table = gr.Dataframe(label="Results", wrap=True)
        with gr.Row():
            self.batch_csv = gr.File(label="CSV")
            self.batch_zip = gr.File(label="ZIP: overlays (PNG), raw maps (.npy, 518×518 float32), CSV")

    def build_bank(self):
        gr.Markdown("Build a memory bank from **your** defect-free images (plus, optionally, defect images with masks "
                    "named `x_mask.png`). MRAD-TF needs only it and the CLIP backbone. Without defect images the "
                    "synthetic defects of `assets/bank` are used as the anomalous memories. The bank is kept for a "
                    "few hours; download its two files to keep it.")
        with gr.Row():
            self.normal_files = gr.File(file_count="multiple", label="Normal images")
            self.defect_files = gr.File(file_count="multiple", label="Defect images + masks (optional)")
        self.bank_name = gr.Textbox("my bank", label="Name")
        self.build_button = gr.Button("Build bank", variant="primary", elem_id="build-bank")
        self.bank_report = gr.Markdown()
        self.bank_files = gr.File(label="Bank files (safetensors: --image-bank / --patch-bank)")
        self.bank_id_box = gr.Textbox(label="Bank id (API: /predict with source='custom' and this bank_id)",
                                      interactive=False)

    # ------------------------------------------------------------------ wiring
    def wire(self, demo):
        d, model = self.detect, dict(concurrency_limit=self.concurrency, concurrency_id="model")
        live = dict(concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")
        controls = [d.controls[k] for k in CONTROLS]
        results = [d.summary, d.legend, d.json, *d.sliders.values(), *d.cards.values(), *d.columns.values()]
        d.run.click(self.start, [self.analysis], [d.summary, d.run, *d.columns.values()], queue=False,
                    api_visibility="private"
                    ).then(self.detect_image, [d.image, self.variants, self.source, self.bank_id, self.levels,
                                               *controls], [self.analysis, self.levels, *results],
                           api_visibility="private", show_progress="full", **model
                           ).then(lambda: gr.Button(interactive=True), None, d.run, queue=False,
                                  api_visibility="private")
        for c in controls:
            c.input(self.render, [self.analysis, *controls], results, api_visibility="private", **live)
        d.controls["normalisation"].input(self.calibrate, [self.analysis, self.bank_id, self.levels, *controls],
                                          [self.analysis, self.levels, *results], api_visibility="private",
                                          **model)
        d.image.upload(self.check_upload, d.image, d.image, api_visibility="private", queue=False)
        d.export.click(self.export_csv, [self.analysis, *controls], d.csv, api_visibility="private")
        gr.on([self.source.change, self.variants.change], self.mark_stale, [self.analysis, self.source,
                                                                             self.variants], d.summary,
              api_visibility="private", show_progress="hidden")
        gr.on([self.source.change, self.bank_id.change, demo.load], self.describe, [self.source, self.bank_id],
              [self.source_info, self.source_panel, self.variants, self.notice], api_visibility="private",
              show_progress="hidden")
        gr.Timer(2).tick(self.service.status, None, self.status, api_name="poll_status", api_visibility="private",
                         show_progress="hidden",
                         queue=False)
        self.run_batch.click(self.predict_batch, [self.files, self.folder, self.variants, self.source,
                                                  self.batch_threshold, self.batch_pixel, self.batch_norm,
                                                  self.bank_id], [self.gallery, self.table, self.batch_csv,
                                                                  self.batch_zip, self.batch_report],
                             api_name="predict_batch", **model)
        self.build_button.click(self.build_bank_files, [self.normal_files, self.defect_files, self.bank_name],
                                [self.bank_report, self.bank_files, self.bank_id_box, self.bank_id, self.source],
                                api_name="build_bank", **model)
        gr.api(self.predict, api_name="predict", concurrency_limit=self.concurrency, concurrency_id="model")
        gr.api(self.status_text, api_name="status", queue=False, concurrency_limit=None)

    # ------------------------------------------------------------------ handlers (thin)
    def view(self, pixel_threshold, opacity, colormap, contours, binary, normalisation) -> viz.View:
        return viz.View(float(pixel_threshold), float(opacity), colormap, normalisation, bool(contours), bool(binary))

    def reporter(self, progress):
        """progress(fraction, text) for the service; None on ZeroGPU (arguments of a GPU call are pickled)."""
        return None if self.settings.zero_gpu else (lambda fraction, text: progress(fraction, desc=text))

    def source_of(self, source) -> str:
        return self.service.catalogue.default() if source in (None, "") else self.service.catalogue.check(source)

    def start(self, analysis):
        """Before the model runs: say so, grey out the old results, no second click."""
        note = "⏳ **Working…** loading, encoding and scoring (progress below)."
        if analysis is not None:
            note += f" The results below are still those of *{analysis.name}*."
        return {self.detect.summary: note, self.detect.run: gr.Button(interactive=False),
                **{c: gr.Column(elem_classes=["stale"]) for c in self.detect.columns.values()}}

    @user_errors
    def detect_image(self, image, variants, source, bank_id, levels, *controls, progress=gr.Progress()):
        if image is None:
            raise MRADError("no image: upload one, paste one or click an example")
        source = self.source_of(source)
        self.service.tidy()
        view = self.view(*controls[1:])
        key = f"{source}:{bank_id}" if source == "custom" else source
        progress(0, desc="starting")
        a = self.gpu_analyze(image, variants, source, bank_id, calibrate=view.normalisation == "calibrated",
                             calibrations=(levels or {}).get(key), progress=self.reporter(progress))
        for note in a.notes:
            gr.Info(f"{a.name}: {note}")
        levels = {**(levels or {}), key: {v: o.calibration for v, o in a.outputs.items() if o.calibration}}
        return {self.analysis: a, self.levels: levels, **self.render(a, *controls)}

    def render(self, a, image_threshold, pixel_threshold, opacity, colormap, contours, binary, normalisation):
        """Re-draw the three columns, the summary and the JSON from the cached maps: no model call, no file."""
        d = self.detect
        if a is None:
            return {d.summary: "Results appear here.", **{c: gr.Column(elem_classes=[]) for c in d.columns.values()}}
        view = self.view(pixel_threshold, opacity, colormap, contours, binary, normalisation)
        out = {d.summary: summary_md(a, image_threshold, view), d.legend: legend_html(colormap, pixel_threshold,
                                                                                        normalisation),
               d.json: a.summary(float(image_threshold), view)}
        for v in VARIANTS:
            o = a.outputs.get(v)
            out[d.columns[v]] = gr.Column(visible=o is not None or v in a.skipped, elem_classes=[])
            if o is None:
                why = a.skipped.get(v, "not chosen")
                out.update({d.sliders[v]: None, d.cards[v]: f"<div id='card-{v}'><i>{records.name(v)} did not run: "
                                                           f"{why}</i></div>"})
                continue
            overlay, area = viz.render(a.image, o.map, view, o.calibration)
            out.update({d.sliders[v]: (a.image, overlay), d.cards[v]: card_html(o, area, image_threshold, view)})
        return out

    @user_errors
    def calibrate(self, a, bank_id, levels, *controls):
        """The calibrated scale was chosen: compute its levels once (a model call) if this result lacks them."""
        if a is None or controls[-1] != "calibrated" or a.calibrated:
            return {}
        key = f"{a.source}:{bank_id}" if a.source == "custom" else a.source
        a = self.gpu_calibrate(a, bank_id, (levels or {}).get(key))
        levels = {**(levels or {}), key: {v: o.calibration for v, o in a.outputs.items() if o.calibration}}
        return {self.analysis: a, self.levels: levels, **self.render(a, *controls)}

    def check_upload(self, image):
        """Refuse a bad image at upload, with the reason (the page keeps working)."""
        if image is None:
            return None
        try:
            load_image(image, self.settings.max_pixels)
        except ImageError as e:
            gr.Warning(str(e), duration=None)
            return None
        return gr.update()

    def export_csv(self, a, image_threshold, *controls):
        if a is None:
            raise gr.Error("nothing to export yet: press Detect first", print_exception=False)
        folder = self.service.workdir / f"csv-{id(a):x}"
        folder.mkdir(exist_ok=True)
        path = folder / f"{batch.safe_stem(a.name)}_mrad.csv"
        rows = a.rows(float(image_threshold), self.view(*controls))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "variant", *records.FIELDS])
            writer.writeheader()
            writer.writerows(rows)
        return str(path)

    def mark_stale(self, a, source, variants):
        if a is None:
            return gr.update()
        changed = a.source != source or set(a.outputs) | set(a.skipped) != set(variants or [])
        return ("⚠️ **The results below are for the earlier choice** (" + a.source_label + ", " +
                ", ".join(records.name(v) for v in a.outputs) + "): press **Detect** to update." if changed
                else gr.update())

    def describe(self, source, bank_id):
        facts = self.service.catalogue.facts(source, bank_id)
        available = self.service.catalogue.variants(source, bank_id)
        return {self.source_info: facts_md(facts), self.source_panel: gr.Accordion(open=facts.missing),
                self.variants: gr.CheckboxGroup(value=list(available), info=variant_note(available)),
                self.notice: startup_notice(self.service)}

    @user_errors
    def predict_batch(self, files, folder=None, variants=VARIANTS, source=None, image_threshold=0.5,
                      pixel_threshold=0.5, normalisation="raw", bank_id=None, progress=gr.Progress()):
        paths = [str(f) for f in (files or [])] + [str(f) for f in (folder or [])]
        if not paths:
            raise MRADError("no files: upload images, a ZIP of images or a folder")
        view = viz.View(float(pixel_threshold), normalisation=normalisation)
        self.service.tidy()
        r = batch.run_batch(self.service, paths, variants, self.source_of(source), bank_id, view,
                            float(image_threshold), lambda p, d: progress(p, desc=d), score=self.gpu_chunk)
        table = [[row.get(c, "") for c in r.columns] for row in r.rows]
        n_ok = len(r.rows) - len(r.errors)
        report = f"**{n_ok} image(s) scored** with {', '.join(records.name(v) for v in r.variants)}, sorted by mean " \
                 "score."
        if r.errors:
            report += f" **{len(r.errors)} skipped:** " + "; ".join(f"`{n}`: {m}" for n, m in r.errors[:20])
        return r.gallery, {"headers": r.columns, "data": table}, str(r.csv), str(r.zip), report

    @user_errors
    def build_bank_files(self, normal, defects=None, name="my bank", progress=gr.Progress()):
        if not normal:
            raise MRADError("upload at least one normal (defect-free) image")
        name = (name or "my bank").strip()[:60] or "my bank"
        progress(0, desc="encoding the bank images")
        bank_id, notes = self.gpu_build_bank([str(p) for p in normal], [str(p) for p in defects or []], name,
                                             progress=self.reporter(progress))
        report = f"**Bank ready:** {self.service.catalogue.bank_info(bank_id)}. Memory bank switched to *My bank*." + \
            "".join(f"\n- {n}" for n in notes)
        files = [str(p) for p in self.service.catalogue.bank_files(bank_id)]
        return report, files, bank_id, bank_id, "custom"

    @user_errors
    def predict(self, image: gr.FileData, variants: list[str] = list(VARIANTS), source: str | None = None,
                image_threshold: float = 0.5, pixel_threshold: float = 0.5, normalisation: str = "raw",
                bank_id: str | None = None) -> dict:
        """Score one image with the chosen variants (all by default) -> the result as JSON: per variant the
        score, verdict, image probability, map top 1 %, defect area % and latency."""
        path = image.get("path") if isinstance(image, dict) else getattr(image, "path", image)
        if not path:
            raise MRADError("no image: upload one and pass it as a file")
        source = self.source_of(source)
        view = viz.View(float(pixel_threshold), normalisation=normalisation)
        a = self.gpu_analyze(path, variants, source, bank_id, calibrate=normalisation == "calibrated")
        return a.summary(float(image_threshold), view)

    def status_text(self) -> str:
        """What the server is loading or doing, its device and precision."""
        return self.service.status()


def api_defaults_middleware(defaults: dict):
    """ASGI middleware: a POST to /gradio_api/call/<name> with fewer `data` items than the endpoint takes gets the
    endpoint's defaults appended (so `curl -d '{"data": [file]}'` works as documented)."""
    class PadInputs:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            name = scope.get("path", "").rsplit("/call/", 1)[-1] if scope["type"] == "http" else ""
            if scope.get("method") != "POST" or "/call/" not in scope.get("path", "") or name not in defaults:
                return await self.app(scope, receive, send)
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            try:
                payload = json.loads(body or b"{}")
                data = payload.get("data", [])
                if isinstance(data, list) and len(data) < len(defaults[name]) + 1:
                    payload["data"] = data + defaults[name][len(data) - 1:] if data else data
                    body = json.dumps(payload).encode()
            except (ValueError, AttributeError):
                pass  # gradio answers malformed requests itself
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, send)

    return PadInputs


def launch_kwargs(settings: Settings) -> dict:
    """What `demo.launch` needs beyond host/port (the tests launch the app the same way)."""
    from inspect import signature
    from starlette.middleware import Middleware

    params = list(signature(MRADApp.predict).parameters.values())[2:]
    return {"max_file_size": settings.max_file_size, "theme": gr.themes.Soft(),
            "app_kwargs": {"middleware": [Middleware(api_defaults_middleware({"predict": [p.default for p in params]}))]},
            "css": ".stale {opacity: 0.45}"}


def build_demo(service: Service) -> gr.Blocks:
    """The whole UI around one Service (tests pass their own)."""
    return MRADApp(service).build()


SETTINGS = Settings.from_env()
SERVICE = Service(SETTINGS)
if SETTINGS.zero_gpu:  # every GPU worker forks from this process: the model must be in memory before
    SERVICE.preload()
demo = build_demo(SERVICE)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="MRAD Gradio app")
    parser.add_argument("--host", default=None, help="interface to listen on (0.0.0.0 for all) [$GRADIO_SERVER_NAME, "
                                                     "default 127.0.0.1]")
    parser.add_argument("--port", type=int, default=None, help="port [$GRADIO_SERVER_PORT, default 7860]")
    parser.add_argument("--share", action="store_true", help="create a temporary public gradio.live link")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.info("%s; device %s, precision %s", torch_report(), SERVICE.device, SERVICE.precision)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(SETTINGS))
