"""Make it yours, under the Detect results: calibrate an inspection profile on your normal images, teach the memory
bank ("This is normal", "Mark the defect"), and see why a score is high.

Session state: `taught` = {"before": {"source", "bank_id"} (what Detect used before teaching), "start": the same or
None (an empty bank), "stack": [{"bank_id", "added": [image ids]}] (one custom bank per edit, newest last)}; the
page's `source` / `bank_id` point at the newest taught bank, so Detect uses it too. `profile` = the profile.Profile in
use. Model work runs in `teaching` functions through gpu_call.
"""
from __future__ import annotations

import uuid

import gradio as gr
import numpy as np
from PIL import Image

from .. import teaching, viz
from ..catalogue import safe_name
from ..config import VARIANTS
from ..errors import MRADError
from ..profile import Profile
from ..records import name
from ..zerogpu import gpu_call, user_errors
from . import teach_views as words
from .detect import CONTROLS, view_of


class TeachPanel:
    def __init__(self, page):
        self.page = page
        s, service = page.settings, page.service
        base, per = s.gpu_seconds_base, s.gpu_seconds_per_image
        gpu = lambda duration: gpu_call(s, duration)  # noqa: E731
        calibrating = lambda *a, calibrate=False, **k: base + per * (2 + 4 * calibrate)  # noqa: E731
        self.gpu_add = gpu(calibrating)(lambda *a, **k: teaching.add_example(service, *a, **k))
        self.gpu_remove = gpu(calibrating)(lambda *a, **k: teaching.remove_examples(service, *a, **k))
        self.gpu_calibrate = gpu(lambda images, *a, **k: base + per * len(images or ()))(
            lambda *a, **k: teaching.calibrate(service, *a, **k))
        self.gpu_explain = gpu(base + per)(lambda *a, **k: teaching.explain_image(service, *a, **k))
        self.gpu_point = gpu(base + per)(lambda *a, **k: teaching.explain_point(service, *a, **k))

    # ------------------------------------------------------------------ layout
    def build(self):
        self.taught, self.profile = gr.State(None), gr.State(None)
        with gr.Accordion("Make it yours: teach the bank, calibrate on your normal images, see why", open=False,
                          elem_id="teach-panel"):
            with gr.Tabs():
                with gr.Tab("Teach the bank", id="teach-bank"):
                    self._build_teach()
                with gr.Tab("Calibrate (inspection profile)", id="teach-calibrate"):
                    self._build_calibrate()
                with gr.Tab("Why this score", id="teach-why"):
                    self._build_why()

    def _build_teach(self):
        gr.Markdown(words.TEACH_HELP)
        self.start = gr.Radio([("the memory bank in use", "current"), ("an empty bank", "empty")], value="current",
                              label="Teach starting from", info="read at the first edit of a bank not taught here")
        with gr.Row():
            self.normal_button = gr.Button("This is normal", elem_id="this-is-normal")
            self.mark_button = gr.Button("Mark the defect", elem_id="mark-defect")
            self.undo_button = gr.Button("Undo", elem_id="undo")
        self.editor = gr.ImageEditor(label="Paint the defect with the brush (or upload a defect image)", type="numpy",
                                     image_mode="RGBA", format="png", sources=["upload", "clipboard"],
                                     brush=gr.Brush(colors=["#ff0000"], color_mode="fixed", default_size=24),
                                     layers=False, transforms=(), height=420, elem_id="defect-editor")
        with gr.Row():
            self.mask_file = gr.File(label="…or its mask (white = defect; replaces the painting)",
                                     file_types=["image"], elem_id="defect-mask")
            self.add_defect_button = gr.Button("Add as defect", variant="primary", elem_id="add-defect")
        with gr.Accordion("Add normal images from files", open=False):
            self.normal_files = gr.File(file_count="multiple", file_types=["image"], label="Known-good images")
            self.add_normal_button = gr.Button("Add as normal", elem_id="add-normal")
        with gr.Row():
            self.entries = gr.Dropdown([], multiselect=True, label="Taught images", elem_id="taught-entries",
                                       scale=3)
            self.remove_button = gr.Button("Remove chosen", elem_id="remove-taught", scale=1)
        self.teach_report = gr.Markdown(elem_id="teach-report")
        with gr.Row():
            self.save_button = gr.Button("Save bank + profile", elem_id="save-bundle")
            self.bundle = gr.File(file_count="multiple", label="Bank (2 files) + profile: download, or drop them "
                                  "here to load them", elem_id="bundle")

    def _build_calibrate(self):
        gr.Markdown(words.CALIBRATE_HELP)
        self.calibration_files = gr.File(file_count="multiple", file_types=["image"], elem_id="calibration-files",
                                         label="5–50 known-good images of one product")
        with gr.Row():
            self.rate = gr.Number(1.0, label="False alarms allowed (% of normal images)", minimum=0.01, maximum=50)
            self.profile_name = gr.Textbox("my product", label="Profile name")
            self.follow = gr.Dropdown([(name(v), v) for v in VARIANTS], value=VARIANTS[-1],
                                      label="The image-threshold slider follows")
        self.calibrate_button = gr.Button("Calibrate", variant="primary", elem_id="calibrate")
        self.profile_report = gr.Markdown(elem_id="profile-report")
        self.plot = gr.Plot(label="Normal scores, threshold and this image", elem_id="profile-plot")
        self.profile_file = gr.File(label="Profile (JSON): download it, or drop one here to load it",
                                    file_types=[".json"], elem_id="profile-file")

    def _build_why(self):
        gr.Markdown(words.WHY_HELP)
        with gr.Row():
            self.why_button = gr.Button("Why this score?", elem_id="why")
            self.top_k = gr.Slider(1, 10, 5, step=1, label="Top entries")
            self.map_variant = gr.Radio([(name(v), v) for v in VARIANTS], value=VARIANTS[0], label="Map to click")
        self.why_html = gr.HTML(elem_id="why-entries")
        with gr.Row():
            self.map_image = gr.Image(label="Click a point of the map", interactive=False, type="numpy",
                                      elem_id="why-map", height=320)
            self.point_report = gr.Markdown(elem_id="why-point")

    # ------------------------------------------------------------------ events
    def wire(self):
        p, d = self.page, self.page.detect
        controls = [d.controls[k] for k in CONTROLS]
        self.results = [d.summary, d.legend, d.json, *d.sliders.values(), *d.cards.values(), *d.columns.values()]
        session = [p.analysis, p.levels, p.source, p.bank_id, self.taught, self.entries, self.teach_report]
        model = dict(api_visibility="private", **p.model_events)
        common = [self.start, self.taught, p.source, p.bank_id, p.variants, p.levels, self.profile, *controls]
        self.normal_button.click(self.this_is_normal, [d.image, p.analysis, *common], session + self.results, **model)
        self.mark_button.click(self.mark, [p.analysis], [self.editor, self.mask_file], api_visibility="private",
                               queue=False)
        self.add_defect_button.click(self.add_defect, [d.image, p.analysis, self.editor, self.mask_file, *common],
                                     session + self.results, **model)
        self.add_normal_button.click(self.add_normal_files, [self.normal_files, d.image, *common],
                                     session + self.results, **model)
        self.undo_button.click(self.undo, [d.image, *common], session + self.results, **model)
        self.remove_button.click(self.remove, [self.entries, d.image, *common], session + self.results, **model)
        profile_out = [self.profile, self.profile_report, self.plot, p.analysis, *controls, *self.results]
        self.calibrate_button.click(
            self.calibrate, [self.calibration_files, self.rate, self.profile_name, self.follow, p.variants, p.source,
                             p.bank_id, p.analysis, *controls],
            profile_out + [self.profile_file], show_progress_on=[self.profile_report], **model)
        self.profile_file.upload(self.load_profile, [self.profile_file, self.follow, p.analysis, *controls],
                                 profile_out, api_visibility="private")
        self.follow.input(self.use_profile, [self.profile, self.follow, p.analysis, *controls], profile_out,
                          api_visibility="private")
        # a new result (Detect, teaching) is shown on the profile's scale; the page's levels stay reference levels
        p.analysis.change(self.keep_profile, [p.analysis, self.profile, *controls],
                          [p.analysis, self.plot, *self.results],
                          api_visibility="private", show_progress="hidden", queue=False)
        self.save_button.click(self.save_bundle, [p.source, p.bank_id, self.profile], self.bundle,
                               api_visibility="private")
        self.bundle.upload(self.load_bundle, [self.bundle, d.image, *common],
                           unique(session + self.results + profile_out), **model)
        self.why_button.click(self.why, [d.image, p.analysis, p.bank_id, self.top_k, self.map_variant, *controls],
                              [self.why_html, self.map_image, self.point_report], **model)
        self.map_variant.input(self.map_of, [p.analysis, self.map_variant, *controls], self.map_image,
                               api_visibility="private", queue=False)
        self.map_image.select(self.point, [d.image, p.analysis, p.bank_id, self.map_variant, self.top_k],
                              self.point_report, **model)

    def _unchanged(self) -> dict:
        """No update (an empty dict would be taken for one output's value)."""
        return {self.page.analysis: gr.skip()}

    # ------------------------------------------------------------------ teaching
    def _session(self, taught, start_mode, source, bank_id) -> dict:
        """The teaching under way when Detect uses its newest bank; else a new one from the bank in use or empty."""
        if taught and taught["stack"] and source == "custom" and bank_id == taught["stack"][-1]["bank_id"]:
            return taught
        before = {"source": self.page.source_of(source), "bank_id": bank_id if source == "custom" else None}
        return {"before": before, "start": None if start_mode == "empty" else before, "stack": []}

    @staticmethod
    def _calibrate(profile, controls) -> bool:
        """Compute the calibrated view's reference levels of a new bank: it is on screen and no profile sets it."""
        return profile is None and dict(zip(CONTROLS, controls))["normalisation"] == "calibrated"

    def _shown(self, taught, a, levels, profile, controls, report) -> dict:
        """Outputs after an edit: the page follows the newest bank (or what was in use before teaching)."""
        p = self.page
        top = taught["stack"][-1] if taught["stack"] else None
        source, bank_id = ("custom", top["bank_id"]) if top else (taught["before"]["source"],
                                                                  taught["before"]["bank_id"])
        out = {p.source: source, p.bank_id: bank_id, self.taught: taught, self.teach_report: report,
               self.entries: gr.Dropdown(choices=top["added"] if top else [], value=None)}
        if a is not None:  # the page keeps the reference levels; a profile's are applied to what is shown
            known = {v: o.calibration for v, o in a.outputs.items() if o.calibration}
            if known:
                out[p.levels] = {**(levels or {}), p.calibration_key(source, bank_id): known}
            if profile:
                a = teaching.with_levels(a, teaching.profile_levels(profile))
            out.update({p.analysis: a, **p.detect.render(a, *controls)})
        return out

    def _report(self, what: str, bank_id, a) -> str:
        info = self.page.service.catalogue.bank_info(bank_id) if bank_id else "the bank in use before teaching"
        note = teaching.bank_edit.one_class_note(self.page.service.catalogue.bank(bank_id)[0]) if bank_id else None
        scores = ", ".join(f"{name(v)} {o.score:.3f}" for v, o in a.outputs.items()) if a is not None else \
            "press **Detect anomalies** to score an image with it"
        return f"**{what}.** Bank: {info}. Scores now: {scores}." + (f"\n\n⚠️ {note}" if note else "")

    def _add(self, taught, start_mode, source, bank_id, example, mask, label, current, variants, levels, profile,
             controls, what):
        taught = self._session(taught, start_mode, source, bank_id)
        top = taught["stack"][-1] if taught["stack"] else {"bank_id": None, "added": []}
        new_id, image_id, a = self.gpu_add(taught["start"], top["bank_id"], example, mask, label, current,
                                           variants, calibrate=self._calibrate(profile, controls))
        taught = {**taught, "stack": taught["stack"] + [{"bank_id": new_id, "added": top["added"] + [image_id]}]}
        return self._shown(taught, a, levels, profile, controls, self._report(f"{image_id} added as {what}", new_id, a))

    @user_errors
    def this_is_normal(self, image, analysis, start_mode, taught, source, bank_id, variants, levels, profile,
                       *controls):
        if image is None or analysis is None:
            raise MRADError(words.NO_IMAGE)
        return self._add(taught, start_mode, source, bank_id, image, None, analysis.name, image, variants, levels,
                         profile, controls, "normal")

    def mark(self, analysis):
        if analysis is None:
            raise gr.Error(words.NO_IMAGE.replace("**", ""), print_exception=False)
        return {"background": analysis.image, "layers": [], "composite": None}, None

    @user_errors
    def add_defect(self, image, analysis, editor, mask_file, start_mode, taught, source, bank_id, variants, levels,
                   profile, *controls):
        background = (editor or {}).get("background")
        if background is None:
            raise MRADError("no defect image: press 'Mark the defect' (or upload a defect image into the editor)")
        mask = mask_file or painted_mask(editor)
        marking = image is not None and shows(background, analysis)
        example = image if marking else np.asarray(background)[..., :3]  # the image on screen: its own file
        label = None if marking else "defect"  # (and its file name)
        return self._add(taught, start_mode, source, bank_id, example, mask, label, image, variants,
                         levels, profile, controls, "defect")

    @user_errors
    def add_normal_files(self, files, image, start_mode, taught, source, bank_id, variants, levels, profile,
                         *controls):
        if not files:
            raise MRADError("upload the known-good images to add first")
        out = None
        for i, f in enumerate(files):
            last = i == len(files) - 1
            out = self._add(taught, start_mode, source, bank_id, str(f), None, str(f), image if last else None,
                            variants, levels, profile, controls, "normal")
            taught, source, bank_id = out[self.taught], out[self.page.source], out[self.page.bank_id]
        return out

    @user_errors
    def undo(self, image, start_mode, taught, source, bank_id, variants, levels, profile, *controls):
        if not (taught and taught["stack"] and source == "custom" and bank_id == taught["stack"][-1]["bank_id"]):
            raise MRADError("nothing to undo: the memory bank in use is not one taught here")
        taught = {**taught, "stack": taught["stack"][:-1]}
        top = taught["stack"][-1] if taught["stack"] else None
        source, bank_id = ("custom", top["bank_id"]) if top else (taught["before"]["source"],
                                                                  taught["before"]["bank_id"])
        a = None
        if image is not None:
            a = self.page.gpu_analyze(image, variants, source, bank_id, calibrate=self._calibrate(profile, controls),
                                      calibrations=(levels or {}).get(self.page.calibration_key(source, bank_id)))
        return self._shown(taught, a, levels, profile, controls,
                           self._report("Undone", top["bank_id"] if top else None, a))

    @user_errors
    def remove(self, chosen, image, start_mode, taught, source, bank_id, variants, levels, profile, *controls):
        if not (taught and taught["stack"] and source == "custom" and bank_id == taught["stack"][-1]["bank_id"]):
            raise MRADError("nothing to remove: the memory bank in use is not one taught here")
        top = taught["stack"][-1]
        new_id, a = self.gpu_remove(top["bank_id"], list(chosen or []), image, variants,
                                    calibrate=self._calibrate(profile, controls))
        if new_id is None:  # everything taught from an empty start is gone: back to the bank in use before
            taught = {**taught, "stack": []}
            before = taught["before"]
            key = self.page.calibration_key(before["source"], before["bank_id"])
            a = None if image is None else self.page.gpu_analyze(
                image, variants, before["source"], before["bank_id"], calibrate=self._calibrate(profile, controls),
                calibrations=(levels or {}).get(key))
        else:
            added = [i for i in top["added"] if i not in set(chosen)]
            taught = {**taught, "stack": taught["stack"] + [{"bank_id": new_id, "added": added}]}
        return self._shown(taught, a, levels, profile, controls,
                           self._report(f"Removed {', '.join(chosen)}", new_id, a))

    # ------------------------------------------------------------------ profiles
    @user_errors
    def calibrate(self, files, rate_percent, profile_name, follow, variants, source, bank_id, analysis, *controls):
        if rate_percent is None or not 0 < float(rate_percent) < 100:
            raise MRADError("the false-alarm rate must be between 0 and 100 %")
        source = self.page.source_of(source)
        profile = self.gpu_calibrate([str(f) for f in files or []], variants, source, bank_id,
                                     float(rate_percent) / 100, (profile_name or "").strip()[:60])
        out = self.use_profile(profile, follow, analysis, *controls)
        folder = self.page.service.workdir / f"profile-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        out[self.profile_file] = str(profile.save(folder / f"{safe_name(profile.name, 'profile')}.json"))
        return out

    @user_errors
    def load_profile(self, path, follow, analysis, *controls):
        if not path:
            return self._unchanged()
        return self.use_profile(Profile.load(path), follow, analysis, *controls)

    def use_profile(self, profile, follow, analysis, *controls):
        """Sliders at the profile's thresholds (the image one of the `follow` variant), the calibrated view on the
        profile's scale, the plot."""
        p, c = self.page, self.page.detect.controls
        if profile is None:
            return self._unchanged()
        follow = follow if follow in profile.variants else list(profile.variants)[-1]
        a = teaching.with_levels(analysis, teaching.profile_levels(profile))
        values = {**dict(zip(CONTROLS, controls)), "image_threshold": profile.variants[follow].image_threshold,
                  "pixel_threshold": 1.0, "normalisation": "calibrated"}
        out = {self.profile: profile, self.profile_report: words.profile_md(profile, follow),
               self.plot: words.profile_figure(profile, a), p.analysis: a,
               c["image_threshold"]: gr.update(value=values["image_threshold"], step=0.001),
               c["pixel_threshold"]: values["pixel_threshold"], c["normalisation"]: "calibrated"}
        if a is not None:
            out.update(p.detect.render(a, *(values[k] for k in CONTROLS)))
        return out

    def keep_profile(self, analysis, profile, *controls):
        """A result whose calibrated scale is not the profile's gets the profile's (which changes the result again);
        one on the profile's scale gets its score in the profile's plot."""
        if analysis is None or profile is None:
            return self._unchanged()
        levels = teaching.profile_levels(profile)
        if all(o.calibration == levels[v] for v, o in analysis.outputs.items() if v in levels):
            return {self.plot: words.profile_figure(profile, analysis)}
        a = teaching.with_levels(analysis, levels)
        return {self.page.analysis: a, **self.page.detect.render(a, *controls)}

    # ------------------------------------------------------------------ save / load bank + profile
    @user_errors
    def save_bundle(self, source, bank_id, profile):
        files = []
        if source == "custom" and bank_id:
            files += [str(f) for f in self.page.service.catalogue.bank_files(bank_id)]
        if profile is not None:
            folder = self.page.service.workdir / f"profile-{uuid.uuid4().hex[:8]}"
            folder.mkdir()
            files.append(str(profile.save(folder / f"{safe_name(profile.name, 'profile')}.json")))
        if not files:
            raise MRADError("nothing to save: teach the bank or calibrate a profile first (stock banks are "
                            "files you already have)")
        return files

    @user_errors
    def load_bundle(self, paths, image, start_mode, taught, source, bank_id, variants, levels, profile, *controls):
        if not paths:
            return self._unchanged()
        new_id, loaded = teaching.import_bundle(self.page.service, [str(p) for p in paths])
        out, profile = {}, loaded or profile
        if new_id:
            a = None if image is None else self.page.gpu_analyze(image, variants, "custom", new_id,
                                                                 calibrate=self._calibrate(profile, controls))
            before = {"source": "custom", "bank_id": new_id}
            taught = {"before": before, "start": before, "stack": []}
            out = self._shown(taught, a, levels, profile, controls,
                              self._report("Bank loaded", new_id, a) + " Teaching continues from it.")
            analysis = out.get(self.page.analysis)
        else:
            analysis = None
        if loaded is not None:
            out.update(self.use_profile(loaded, None, analysis, *controls))
        return out

    # ------------------------------------------------------------------ why this score
    @user_errors
    def why(self, image, analysis, bank_id, k, variant, *controls):
        if image is None or analysis is None:
            raise MRADError(words.NO_IMAGE)
        data = self.gpu_explain(image, list(analysis.outputs), analysis.source, bank_id, int(k))
        return words.entries_html(data), self.map_of(analysis, variant, *controls), ""

    def map_of(self, analysis, variant, *controls):
        if analysis is None or variant not in analysis.outputs:
            return None
        o = analysis.outputs[variant]
        return viz.render(analysis.image, o.map, view_of(*controls[1:]), o.calibration)[0]

    @user_errors
    def point(self, image, analysis, bank_id, variant, k, evt: gr.SelectData):
        if image is None or analysis is None:
            raise MRADError(words.NO_IMAGE)
        if variant not in analysis.outputs:
            raise MRADError(f"{name(variant)} did not run on this image: choose another map")
        x, y = evt.index[:2]
        h, w = analysis.image.shape[:2]
        return words.point_md(self.gpu_point(image, variant, analysis.source, bank_id, x, y, w, h, int(k)), variant)


def unique(components) -> list:
    """Components in order, each once (an event's outputs may name one twice)."""
    seen, out = set(), []
    for c in components:
        if id(c) not in seen:
            seen.add(id(c))
            out.append(c)
    return out


def shows(background, analysis) -> bool:
    """Whether the editor holds the image on screen (Mark the defect), not an upload."""
    if analysis is None:
        return False
    shown, held = analysis.image.astype(np.float32), np.asarray(background)[..., :3].astype(np.float32)
    return held.shape == shown.shape and float(np.abs(held - shown).mean()) < 1.0


def painted_mask(editor) -> np.ndarray:
    """The brush strokes of a gr.ImageEditor value (its layers' alpha) -> (H, W) 0/1 uint8 at the background's size."""
    background = np.asarray(editor["background"])
    mask = np.zeros(background.shape[:2], np.uint8)
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        alpha = layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer.reshape(layer.shape[:2])
        painted = (alpha > 0).astype(np.uint8)
        if painted.shape != mask.shape:  # a canvas of another size: stretch onto the image
            painted = np.asarray(Image.fromarray(painted * 255).resize(mask.shape[::-1], Image.NEAREST)) > 0
        mask |= painted.astype(np.uint8)
    if not mask.any():
        raise MRADError("nothing painted: paint the defect with the brush (or upload its mask) first")
    return mask
