"""Make it yours, under the Detect results: calibrate an inspection profile on your normal images, teach the memory
bank ("This is normal", "Mark the defect"), and see why a score is high.

Session state: `session` holds a sessions.TeachSession (what Detect used before teaching, the start, one taught bank
per edit); the page's `source` / `bank_id` point at its newest bank, so Detect uses it too. `profile` holds the
profile.Profile in use. Handlers take their inputs by name (`inputs_kwargs`; the live controls of the Detect tab as
keyword arguments named as in detect.CONTROLS) and return {component: value}. Model work runs in `teaching`
functions through the page's GPU calls (gpu.py).
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
from . import teach_views as words
from .detect import CONTROLS, view_of
from .gpu import model_call, user_errors
from .sessions import TeachSession, remember_levels


class TeachPanel:
    def __init__(self, page):
        self.page = page
        s, service = page.settings, page.service
        self.gpu_add = model_call(s, "teach")(lambda *a, **k: teaching.add_example(service, *a, **k))
        self.gpu_remove = model_call(s, "teach")(lambda *a, **k: teaching.remove_examples(service, *a, **k))
        self.gpu_calibrate = model_call(s, "profile")(lambda *a, **k: teaching.calibrate(service, *a, **k))
        self.gpu_explain = model_call(s, "explain")(lambda *a, **k: teaching.explain_image(service, *a, **k))
        self.gpu_point = model_call(s, "explain")(lambda *a, **k: teaching.explain_point(service, *a, **k))

    # ------------------------------------------------------------------ layout
    def build(self):
        self.session, self.profile = gr.State(None), gr.State(None)  # a TeachSession, a Profile
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
        with gr.Row():  # side by side on a wide screen, one under the other on a phone (its table needs the width)
            self.map_image = gr.Image(label="Click a point of the map", interactive=False, type="numpy",
                                      elem_id="why-map", height=320, min_width=320)
            self.point_report = gr.Markdown(elem_id="why-point", min_width=320)

    # ------------------------------------------------------------------ events
    def wire(self):
        p, d = self.page, self.page.detect
        self.results = d.outputs
        edited = unique([p.analysis, p.levels, p.source, p.bank_id, self.session, self.entries, self.teach_report,
                         *self.results])
        model = dict(api_visibility="private", **p.model_events)
        # what every edit reads, by parameter name (the live controls by their detect.CONTROLS names)
        teaching_inputs = dict(start_mode=self.start, session=self.session, source=p.source, bank_id=p.bank_id,
                               variants=p.variants, levels=p.levels, profile=self.profile, **d.controls)
        undoing = {k: v for k, v in teaching_inputs.items() if k != "start_mode"}
        self.normal_button.click(self.this_is_normal, inputs_kwargs=dict(image=d.image, analysis=p.analysis,
                                                                         **teaching_inputs), outputs=edited, **model)
        self.mark_button.click(self.mark, inputs_kwargs=dict(analysis=p.analysis),
                               outputs=[self.editor, self.mask_file], api_visibility="private", queue=False)
        self.add_defect_button.click(
            self.add_defect, inputs_kwargs=dict(image=d.image, analysis=p.analysis, editor=self.editor,
                                                mask_file=self.mask_file, **teaching_inputs), outputs=edited, **model)
        self.add_normal_button.click(self.add_normal_files, inputs_kwargs=dict(files=self.normal_files, image=d.image,
                                                                               **teaching_inputs),
                                     outputs=edited, **model)
        self.undo_button.click(self.undo, inputs_kwargs=dict(image=d.image, **undoing), outputs=edited, **model)
        self.remove_button.click(self.remove, inputs_kwargs=dict(chosen=self.entries, image=d.image, **undoing),
                                 outputs=edited, **model)
        profile_out = [self.profile, self.profile_report, self.plot, p.analysis, *d.control_inputs, *self.results]
        self.calibrate_button.click(
            self.calibrate, inputs_kwargs=dict(files=self.calibration_files, rate_percent=self.rate,
                                               profile_name=self.profile_name, follow=self.follow,
                                               variants=p.variants, source=p.source, bank_id=p.bank_id,
                                               analysis=p.analysis, **d.controls),
            outputs=profile_out + [self.profile_file], show_progress_on=[self.profile_report], **model)
        self.profile_file.upload(self.load_profile, inputs_kwargs=dict(path=self.profile_file, follow=self.follow,
                                                                       analysis=p.analysis, **d.controls),
                                 outputs=profile_out, api_visibility="private")
        self.follow.input(self.use_profile, inputs_kwargs=dict(profile=self.profile, follow=self.follow,
                                                               analysis=p.analysis, **d.controls),
                          outputs=profile_out, api_visibility="private")
        # a new result (Detect, teaching) is shown on the profile's scale; the page's levels stay reference levels
        p.analysis.change(self.keep_profile, inputs_kwargs=dict(analysis=p.analysis, profile=self.profile,
                                                                **d.controls),
                          outputs=[p.analysis, self.plot, *self.results], api_visibility="private",
                          show_progress="hidden", queue=False)
        self.save_button.click(self.save_bundle, inputs_kwargs=dict(source=p.source, bank_id=p.bank_id,
                                                                    profile=self.profile),
                               outputs=self.bundle, api_visibility="private")
        self.bundle.upload(self.load_bundle, inputs_kwargs=dict(paths=self.bundle, image=d.image, **undoing),
                           outputs=unique(edited + profile_out), **model)
        self.why_button.click(self.why, inputs_kwargs=dict(image=d.image, analysis=p.analysis, bank_id=p.bank_id,
                                                           k=self.top_k, variant=self.map_variant, **d.controls),
                              outputs=[self.why_html, self.map_image, self.point_report], **model)
        self.map_variant.input(self.map_of, inputs_kwargs=dict(analysis=p.analysis, variant=self.map_variant,
                                                               **d.controls),
                               outputs=self.map_image, api_visibility="private", queue=False)
        self.map_image.select(self.point, inputs_kwargs=dict(image=d.image, analysis=p.analysis, bank_id=p.bank_id,
                                                             variant=self.map_variant, k=self.top_k, **d.controls),
                              outputs=[self.point_report, self.map_image], **model)

    def _unchanged(self) -> dict:
        """No update (an empty dict would be taken for one output's value)."""
        return {self.page.analysis: gr.skip()}

    # ------------------------------------------------------------------ teaching
    @staticmethod
    def _calibrate(profile, controls) -> bool:
        """Compute the calibrated view's reference levels of a new bank: it is on screen and no profile sets it."""
        return profile is None and controls["normalisation"] == "calibrated"

    def _rescore(self, session, image, variants, levels, profile, controls):
        """The image on screen scored with the bank Detect now uses (None without an image)."""
        if image is None:
            return None
        bank = session.bank
        return self.page.gpu_analyze(image, variants, bank.source, bank.bank_id,
                                     calibrate=self._calibrate(profile, controls),
                                     calibrations=(levels or {}).get(self.page.calibration_key(bank.source,
                                                                                               bank.bank_id)))

    def _shown(self, session: TeachSession, a, levels, profile, controls, report) -> dict:
        """Outputs after an edit: the page follows the session's bank (the newest taught, or the one before)."""
        p, bank = self.page, session.bank
        out = {p.source: bank.source, p.bank_id: bank.bank_id, self.session: session, self.teach_report: report,
               self.entries: gr.Dropdown(choices=list(session.added), value=None)}
        if a is not None:  # the page keeps the reference levels; a profile's are applied to what is shown
            known = remember_levels(levels, bank.source, bank.bank_id, a)
            if known != (levels or {}):
                out[p.levels] = known
            if profile:
                a = teaching.with_levels(a, teaching.profile_levels(profile))
            out.update({p.analysis: a, **p.detect.render(a, **controls)})
        return out

    def _report(self, what: str, bank_id, a) -> str:
        info = self.page.service.catalogue.bank_info(bank_id) if bank_id else "the bank in use before teaching"
        note = teaching.bank_edit.one_class_note(self.page.service.catalogue.bank(bank_id)[0]) if bank_id else None
        scores = ", ".join(f"{name(v)} {o.score:.3f}" for v, o in a.outputs.items()) if a is not None else \
            "press **Detect anomalies** to score an image with it"
        return f"**{what}.** Bank: {info}. Scores now: {scores}." + (f"\n\n⚠️ {note}" if note else "")

    def _add(self, session, example, mask, label, current, variants, levels, profile, controls, what):
        new_id, image_id, a = self.gpu_add(session.start_bank, session.edit_base, example, mask, label, current,
                                           variants, calibrate=self._calibrate(profile, controls))
        session = session.push(new_id, image_id)
        return self._shown(session, a, levels, profile, controls, self._report(f"{image_id} added as {what}", new_id,
                                                                               a))

    @user_errors
    def this_is_normal(self, image, analysis, start_mode, session, source, bank_id, variants, levels, profile,
                       **controls):
        if image is None or analysis is None:
            raise MRADError(words.NO_IMAGE)
        session = TeachSession.resume(session, start_mode, source, bank_id)
        return self._add(session, image, None, analysis.name, image, variants, levels, profile, controls, "normal")

    def mark(self, analysis):
        if analysis is None:
            raise gr.Error(words.NO_IMAGE.replace("**", ""), print_exception=False)
        return {self.editor: {"background": analysis.image, "layers": [], "composite": None}, self.mask_file: None}

    @user_errors
    def add_defect(self, image, analysis, editor, mask_file, start_mode, session, source, bank_id, variants, levels,
                   profile, **controls):
        background = (editor or {}).get("background")
        if background is None:
            raise MRADError("no defect image: press 'Mark the defect' (or upload a defect image into the editor)")
        mask = mask_file or painted_mask(editor)
        marking = image is not None and shows(background, analysis)
        example = image if marking else np.asarray(background)[..., :3]  # the image on screen: its own file
        label = None if marking else "defect"  # (and its file name)
        session = TeachSession.resume(session, start_mode, source, bank_id)
        return self._add(session, example, mask, label, image, variants, levels, profile, controls, "defect")

    @user_errors
    def add_normal_files(self, files, image, start_mode, session, source, bank_id, variants, levels, profile,
                         **controls):
        if not files:
            raise MRADError("upload the known-good images to add first")
        session = TeachSession.resume(session, start_mode, source, bank_id)
        out = None
        for i, f in enumerate(files):
            last = i == len(files) - 1
            out = self._add(session, str(f), None, str(f), image if last else None, variants, levels, profile,
                            controls, "normal")
            session, levels = out[self.session], out.get(self.page.levels, levels)
        return out

    @user_errors
    def undo(self, image, session, source, bank_id, variants, levels, profile, **controls):
        session = TeachSession.required(session, source, bank_id, "undo").undo()
        a = self._rescore(session, image, variants, levels, profile, controls)
        return self._shown(session, a, levels, profile, controls, self._report("Undone", session.edit_base, a))

    @user_errors
    def remove(self, chosen, image, session, source, bank_id, variants, levels, profile, **controls):
        session = TeachSession.required(session, source, bank_id, "remove")
        chosen = list(chosen or [])
        new_id, a = self.gpu_remove(session.edit_base, chosen, image, variants,
                                    calibrate=self._calibrate(profile, controls))
        session = session.remove(new_id, chosen)
        if new_id is None:  # everything taught from an empty start is gone: back to the bank in use before
            a = self._rescore(session, image, variants, levels, profile, controls)
        return self._shown(session, a, levels, profile, controls,
                           self._report(f"Removed {', '.join(chosen)}", new_id, a))

    # ------------------------------------------------------------------ profiles
    @user_errors
    def calibrate(self, files, rate_percent, profile_name, follow, variants, source, bank_id, analysis,
                  progress=gr.Progress(), **controls):
        """Calibrate pressed: the profile from the known-good images (progress after each image on a CPU)."""
        if rate_percent is None or not 0 < float(rate_percent) < 100:
            raise MRADError("the false-alarm rate must be between 0 and 100 %")
        source = self.page.source_of(source)
        progress(0, desc="loading the model")
        profile = self.gpu_calibrate([str(f) for f in files or []], variants, source, bank_id,
                                     float(rate_percent) / 100, (profile_name or "").strip()[:60],
                                     progress=self.page.reporter(progress))
        out = self.use_profile(profile, follow, analysis, **controls)
        out[self.profile_file] = self._saved(profile)
        return out

    def _saved(self, profile) -> str:
        folder = self.page.service.workdir / f"profile-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return str(profile.save(folder / f"{safe_name(profile.name, 'profile')}.json"))

    @user_errors
    def load_profile(self, path, follow, analysis, **controls):
        if not path:
            return self._unchanged()
        return self.use_profile(Profile.load(path), follow, analysis, **controls)

    def use_profile(self, profile, follow, analysis, **controls):
        """Sliders at the profile's thresholds (the image one of the `follow` variant), the calibrated view on the
        profile's scale, the plot."""
        p, c = self.page, self.page.detect.controls
        if profile is None:
            return self._unchanged()
        follow = follow if follow in profile.variants else list(profile.variants)[-1]
        a = teaching.with_levels(analysis, teaching.profile_levels(profile))
        values = {**controls, "image_threshold": profile.variants[follow].image_threshold, "pixel_threshold": 1.0,
                  "normalisation": "calibrated"}
        out = {self.profile: profile, self.profile_report: words.profile_md(profile, follow),
               self.plot: words.profile_figure(profile, a), p.analysis: a,
               c["image_threshold"]: gr.update(value=values["image_threshold"], step=0.001),
               c["pixel_threshold"]: values["pixel_threshold"], c["normalisation"]: "calibrated"}
        if a is not None:
            out.update(p.detect.render(a, **values))
        return out

    def keep_profile(self, analysis, profile, **controls):
        """A result whose calibrated scale is not the profile's gets the profile's (which changes the result again);
        one on the profile's scale gets its score in the profile's plot."""
        if analysis is None or profile is None:
            return self._unchanged()
        levels = teaching.profile_levels(profile)
        if all(o.calibration == levels[v] for v, o in analysis.outputs.items() if v in levels):
            return {self.plot: words.profile_figure(profile, analysis)}
        a = teaching.with_levels(analysis, levels)
        return {self.page.analysis: a, **self.page.detect.render(a, **controls)}

    # ------------------------------------------------------------------ save / load bank + profile
    @user_errors
    def save_bundle(self, source, bank_id, profile):
        files = []
        if source == "custom" and bank_id:
            files += [str(f) for f in self.page.service.catalogue.bank_files(bank_id)]
        if profile is not None:
            files.append(self._saved(profile))
        if not files:
            raise MRADError("nothing to save: teach the bank or calibrate a profile first (stock banks are "
                            "files you already have)")
        return {self.bundle: files}

    @user_errors
    def load_bundle(self, paths, image, session, source, bank_id, variants, levels, profile, **controls):
        if not paths:
            return self._unchanged()
        new_id, loaded = teaching.import_bundle(self.page.service, [str(p) for p in paths])
        out, profile = {}, loaded or profile
        if new_id:
            session = TeachSession.from_bank(new_id)
            a = self._rescore(session, image, variants, {}, profile, controls)
            out = self._shown(session, a, levels, profile, controls,
                              self._report("Bank loaded", new_id, a) + " Teaching continues from it.")
        if loaded is not None:
            out.update(self.use_profile(loaded, None, out.get(self.page.analysis), **controls))
        return out

    # ------------------------------------------------------------------ why this score
    @user_errors
    def why(self, image, analysis, bank_id, k, variant, **controls):
        if image is None or analysis is None:
            raise MRADError(words.NO_IMAGE)
        data = self.gpu_explain(image, list(analysis.outputs), analysis.source, bank_id, int(k))
        return {self.why_html: words.entries_html(data), self.map_image: self._map(analysis, variant, controls),
                self.point_report: ""}

    def map_of(self, analysis, variant, **controls):
        return {self.map_image: self._map(analysis, variant, controls)}

    @staticmethod
    def _map(analysis, variant, controls):
        """The variant's map of the result on screen, drawn with the live controls (None if it did not run)."""
        if analysis is None or variant not in analysis.outputs:
            return None
        o = analysis.outputs[variant]
        return viz.render(analysis.image, o.map, view_of(**{k: controls[k] for k in CONTROLS[1:]}),
                          o.calibration)[0]

    @user_errors
    def point(self, image, analysis, bank_id, variant, k, evt: gr.SelectData, **controls):
        """A point of the map clicked: its patch's retrieval, and the map again with the point marked."""
        if image is None or analysis is None:
            raise MRADError(words.NO_IMAGE)
        if variant not in analysis.outputs:
            raise MRADError(f"{name(variant)} did not run on this image: choose another map")
        x, y = evt.index[:2]
        h, w = analysis.image.shape[:2]
        data = self.gpu_point(image, variant, analysis.source, bank_id, x, y, w, h, int(k))
        return {self.point_report: words.point_md(data, variant),
                self.map_image: viz.mark_point(self._map(analysis, variant, controls), x, y)}


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
