"""The Detect tab: one image, three variants side by side, live controls that re-draw without the model, the CSV
on demand, and the /predict API."""
from __future__ import annotations

import base64
import csv
from pathlib import Path

import gradio as gr

from .. import batch, records, teaching, viz
from ..config import VARIANTS
from ..errors import MRADError
from ..images import ImageError, load_image
from .gpu import user_errors
from .sessions import remember_levels
from . import text

EXAMPLES = sorted(str(p) for p in (Path(__file__).resolve().parents[2] / "assets" / "examples").glob("*.png"))
REFUSED = "⚠️ **Image refused:**"
# On a narrow screen (a phone) the Detect tab stacks: the image, the button, the results, then the controls and the
# examples (the inputs column is dissolved into the stacked row so that its parts can be ordered around the
# results). Wide screens keep the two columns side by side.
NARROW = 767  # px: the widest screen treated as narrow
NARROW_CSS = f"""@media (max-width: {NARROW}px) {{
  #detect-row {{ flex-direction: column; flex-wrap: nowrap; }}
  #detect-inputs {{ display: contents; }}
  #detect-row > *, #detect-inputs > * {{ flex: none; width: 100%; min-width: 0; }}
  #input-image {{ order: 1; }}
  #run {{ order: 2; }}
  #detect-results {{ order: 3; }}
  #detect-controls {{ order: 4; }}
}}"""
CONTROLS = ("image_threshold", "pixel_threshold", "opacity", "colormap", "contours", "binary", "normalisation")


def image_input(**kwargs) -> gr.Image:
    """gr.Image that passes the uploaded file on undecoded: mrad_core.images reads it and explains every problem
    (corrupt, empty, huge, 16-bit, CMYK, animated …) instead of Gradio's decoder failing first.
    (Overridden on the instance: a gr.Image subclass would make Gradio write a .pyi stub.)"""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.split(",", 1)[1])
        return payload.path

    image.preprocess = preprocess
    return image


def split_profile(values) -> tuple:
    """(the CONTROLS values, the inspection profile or None) of a handler's trailing arguments."""
    return tuple(values[:len(CONTROLS)]), (values[len(CONTROLS)] if len(values) > len(CONTROLS) else None)


def view_of(pixel_threshold, opacity, colormap, contours, binary, normalisation) -> viz.View:
    return viz.View(float(pixel_threshold), float(opacity), colormap, normalisation, bool(contours), bool(binary))


class DetectTab:
    """Components (by name: sliders/cards/columns per variant, controls by CONTROLS name) and handlers."""

    def __init__(self, page):
        self.page = page
        self.columns, self.sliders, self.cards, self.controls = {}, {}, {}, {}

    def build(self):
        d = self
        with gr.Row(elem_id="detect-row"):  # a narrow screen shows the results right after the button (NARROW_CSS)
            with gr.Column(scale=1, min_width=280, elem_id="detect-inputs"):
                d.image = image_input(label="Image (drop, paste or click an example)", sources=["upload", "clipboard"],
                                      elem_id="input-image", height=220)
                d.run = gr.Button("Detect anomalies", variant="primary", elem_id="run")
                with gr.Column(elem_id="detect-controls"):
                    self._build_controls()
            with gr.Column(scale=3, elem_id="detect-results"):
                self._build_results()

    def _build_controls(self):
        c = self.controls  # next to the results they re-draw (no model call)
        c["image_threshold"] = gr.Slider(0, 1, 0.5, step=0.01, label="Image threshold (score → verdict)",
                                         elem_id="image-threshold")
        c["pixel_threshold"] = gr.Slider(0, 1, 0.5, step=0.01, label="Pixel threshold (area, contours)",
                                         elem_id="pixel-threshold")
        c["normalisation"] = gr.Radio([("raw", "raw"), ("min–max", "minmax"), ("calibrated", "calibrated")],
                                      value="raw", label="Map normalisation", elem_id="normalisation")
        with gr.Accordion("Overlay style", open=False):
            c["opacity"] = gr.Slider(0, 1, 0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
            c["colormap"] = gr.Dropdown(list(viz.COLORMAPS), value="turbo", label="Colormap", elem_id="colormap")
            with gr.Row():
                c["contours"] = gr.Checkbox(True, label="Contours", elem_id="contours")
                c["binary"] = gr.Checkbox(False, label="Binary mask", elem_id="binary")
        gr.Examples([[p] for p in EXAMPLES], [self.image], label="Synthetic examples (procedural)",
                    examples_per_page=8)

    def _build_results(self):
        d = self
        d.summary = gr.Markdown("Results appear here.", elem_id="summary")
        with gr.Row():
            for v in VARIANTS:
                with gr.Column(min_width=220, elem_id=f"result-{v}") as d.columns[v]:
                    d.sliders[v] = gr.ImageSlider(label=f"{records.name(v)}: input | map", elem_id=f"overlay-{v}",
                                                  slider_position=5, max_height=300)
                    d.cards[v] = gr.HTML(f"<div id='card-{v}'></div>")
        d.legend = gr.HTML()
        with gr.Row():
            d.export = gr.Button("Export CSV", size="sm", elem_id="export")
            d.csv = gr.File(label="CSV (one row per variant)", elem_id="csv", interactive=False, visible=False)
        with gr.Accordion("JSON (as /predict returns it)", open=False):
            d.json = gr.JSON()

    @property
    def control_inputs(self) -> list:
        """The live controls in `render`'s argument order."""
        return [self.controls[k] for k in CONTROLS]

    @property
    def outputs(self) -> list:
        """Every component `render` re-draws."""
        return [self.summary, self.legend, self.json, *self.sliders.values(), *self.cards.values(),
                *self.columns.values()]

    def wire(self):
        p, d = self.page, self
        live = dict(concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")
        controls, results = self.control_inputs, self.outputs
        profile = p.teach.profile  # the inspection profile of the Make it yours panel (None: the slider judges)
        d.run.click(self.start, [p.analysis], [d.summary, d.run, *d.columns.values()], queue=False,
                    api_visibility="private"
                    ).then(self.detect_image, [d.image, p.variants, p.source, p.bank_id, p.levels, *controls,
                                               profile],
                           [p.analysis, p.levels, d.run, p.notice, *results], api_visibility="private",
                           show_progress="full",
                           show_progress_on=[d.summary], **p.model_events)
        for c in controls:
            c.input(self.render, [p.analysis, *controls, profile], results, api_visibility="private", **live)
        d.controls["normalisation"].input(self.calibrate, [p.analysis, p.bank_id, p.levels, *controls, profile],
                                          [p.analysis, p.levels, *results], api_visibility="private",
                                          show_progress="full", show_progress_on=[d.summary], **p.model_events)
        # a profile calibrated or loaded in the Make it yours panel: each card at its variant's threshold
        profile.change(self.render, [p.analysis, *controls, profile], results, api_visibility="private",
                       show_progress="hidden", queue=False)
        d.image.upload(self.check_upload, [d.image, d.summary], [d.image, d.summary], api_visibility="private",
                       concurrency_limit=None, show_progress="hidden")
        d.export.click(lambda *a: gr.File(self.export_csv(*a), visible=True), [p.analysis, *controls], d.csv,
                       api_visibility="private")
        gr.on([p.source.change, p.variants.change], self.mark_stale, [p.analysis, p.source, p.variants], d.summary,
              api_visibility="private", show_progress="hidden")
        gr.api(self.predict, api_name="predict", **p.model_events)

    def start(self, analysis):
        """Before the model runs: say so, grey out the old results, no second click."""
        note = "⏳ **Working…** loading, encoding and scoring (progress below)."
        if analysis is not None:
            note += f" The results below are still those of *{analysis.name}*."
        return {self.summary: note, self.run: gr.Button(interactive=False),
                **{c: gr.Column(elem_classes=["stale"]) for c in self.columns.values()}}

    def detect_image(self, image, variants, source, bank_id, levels, *controls, progress=gr.Progress()):
        """Detect pressed: the results, or (any error) the earlier results kept, the error said in the summary and
        in a toast; the button comes back either way. `controls`: the CONTROLS values, then optionally the
        inspection profile."""
        controls, profile = split_profile(controls)
        try:
            out = self._detect(image, variants, source, bank_id, levels, profile, *controls, progress=progress)
        except gr.Error as e:
            return {**self.failed("Detect", e), self.page.notice: text.startup_notice(self.page.service, e.message)}
        return {**out, self.run: gr.Button(interactive=True), self.page.notice: text.startup_notice(self.page.service)}

    def failed(self, what: str, error: gr.Error) -> dict:
        """The outputs after a failed model call: the reason in the summary and a toast, the button back, the
        earlier results as they were (not greyed)."""
        gr.Warning(f"{what} failed: {error.message}", duration=None)
        return {self.summary: f"❌ **{what} failed:** {error.message}  \n_The results below (if any) are the earlier "
                              "ones._", self.run: gr.Button(interactive=True),
                **{c: gr.Column(elem_classes=[]) for c in self.columns.values()}}

    @user_errors
    def _detect(self, image, variants, source, bank_id, levels, profile, *controls, progress=None):
        if image is None:
            raise MRADError("no image: upload one, paste one or click an example")
        source = self.page.source_of(source)
        self.page.service.tidy()
        view = view_of(*controls[1:])
        key = self.page.calibration_key(source, bank_id)
        progress(0, desc="starting")
        a = self.page.gpu_analyze(image, variants, source, bank_id, calibrate=view.normalisation == "calibrated",
                                  calibrations=(levels or {}).get(key), progress=self.page.reporter(progress))
        for note in a.notes:
            gr.Info(f"{a.name}: {note}")
        levels = remember_levels(levels, a.source, bank_id, a)
        if profile is not None:  # shown on the profile's scale (as the Make it yours panel does)
            a = teaching.with_levels(a, teaching.profile_levels(profile))
        return {self.page.analysis: a, self.page.levels: levels, **self.render(a, *controls, profile=profile)}

    def render(self, a, image_threshold, pixel_threshold, opacity, colormap, contours, binary, normalisation,
               profile=None):
        """Re-draw the three columns, the summary and the JSON from the cached maps: no model call, no file.
        With an inspection `profile`, each variant it has thresholds for is judged by its own threshold."""
        d = self
        if a is None:
            return {d.summary: "Results appear here.", **{c: gr.Column(elem_classes=[]) for c in d.columns.values()}}
        view = view_of(pixel_threshold, opacity, colormap, contours, binary, normalisation)
        judge = text.Thresholds(float(image_threshold), profile)
        parts = viz.folds(a.image.shape)  # a panorama (or a very tall image) is shown folded into strips
        out = {d.summary: text.summary_md(a, judge, view),
               d.legend: text.legend_html(colormap, pixel_threshold, normalisation) + text.fold_note(a.image.shape,
                                                                                                  parts),
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
            out.update({d.sliders[v]: (viz.fold(a.image, parts), viz.fold(overlay, parts)),
                        d.cards[v]: text.card_html(o, area, judge, view)})
        return out

    def calibrate(self, a, bank_id, levels, *controls, progress=gr.Progress()):
        """The calibrated scale was chosen: compute its levels once (a model call) if this result lacks them; any
        other choice changes nothing here (`render` re-draws). `controls` as for `detect_image`."""
        controls, profile = split_profile(controls)
        if a is None or controls[-1] != "calibrated" or a.calibrated:
            return gr.skip()
        try:
            return self._calibrate(a, bank_id, levels, profile, *controls, progress=progress)
        except gr.Error as e:
            out = self.failed("Computing the calibrated scale", e)
            out.pop(self.run)
            return out

    @user_errors
    def _calibrate(self, a, bank_id, levels, profile, *controls, progress=None):
        key = self.page.calibration_key(a.source, bank_id)
        progress(0, desc="calibrating the map scale on the normal reference images")
        a = self.page.gpu_calibrate(a, bank_id, (levels or {}).get(key), progress=self.page.reporter(progress))
        levels = remember_levels(levels, a.source, bank_id, a)
        return {self.page.analysis: a, self.page.levels: levels, **self.render(a, *controls, profile=profile)}

    def check_upload(self, image, summary=None):
        """Refuse a bad image at upload, with the reason on the page (summary) and in a toast; the page keeps
        working."""
        refused = str(summary or "").startswith(REFUSED)
        if image is None:
            return gr.skip(), gr.skip()
        try:
            load_image(image, self.page.settings.max_pixels)
        except ImageError as e:
            gr.Warning(f"Image refused: {e}", duration=None)
            return None, f"{REFUSED} {e}. Choose another image."
        return gr.skip(), ("Image ready: press **Detect anomalies**." if refused else gr.skip())

    def export_csv(self, a, image_threshold, *controls):
        if a is None:
            raise gr.Error("nothing to export yet: press Detect first", print_exception=False)
        folder = self.page.service.workdir / f"csv-{id(a):x}"
        folder.mkdir(exist_ok=True)
        path = folder / f"{batch.safe_stem(a.name)}_mrad.csv"
        rows = a.rows(float(image_threshold), view_of(*controls))
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

    @user_errors
    def predict(self, image: gr.FileData, variants: list[str] = list(VARIANTS), source: str | None = None,
                image_threshold: float = 0.5, pixel_threshold: float = 0.5, normalisation: str = "raw",
                bank_id: str | None = None) -> dict:
        """Score one image with the chosen variants (all by default) -> the result as JSON: per variant the
        score, verdict, image probability, map top 1 %, defect area % and latency."""
        path = image.get("path") if isinstance(image, dict) else getattr(image, "path", image)
        if not path:
            raise MRADError("no image: upload one and pass it as a file")
        source = self.page.source_of(source)
        view = viz.View(float(pixel_threshold), normalisation=normalisation)
        a = self.page.gpu_analyze(path, variants, source, bank_id, calibrate=normalisation == "calibrated")
        return a.summary(float(image_threshold), view)
