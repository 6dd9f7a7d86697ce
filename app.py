"""MRAD Gradio app: compare MRAD-TF / FT / CLIP side by side on your images, explore with live sliders.

A thin front end: mrad_core.service holds the model (lazy, once, thread-safe), mrad_core.viz renders,
mrad_core.batch runs batches. `python app.py [--host H] [--port P] [--share]` or `gradio app.py`.
Settings by environment: MRAD_BACKBONE / MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK / MRAD_MODEL (files),
MRAD_DEVICE, MRAD_PRECISION (auto default: fp16 on CUDA, bf16 MLPs on CPUs with native bf16, else fp32), MRAD_APP_SOURCE, MRAD_CONCURRENCY, MRAD_CALIBRATION=0, MRAD_MAX_BATCH.
API endpoints: /predict, /predict_batch, /build_bank, /status (see README).
"""
from __future__ import annotations

import argparse
import base64
import csv
import functools
import logging
import os
from pathlib import Path

import gradio as gr

from mrad_core import batch, viz
from mrad_core.config import VARIANTS
from mrad_core.errors import MRADError
from mrad_core.service import NAMES, Service

log = logging.getLogger("mrad.app")
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "assets" / "examples").glob("*.png"))
PAPER = os.environ.get("MRAD_PAPER_URL", "https://openreview.net/search?term=MRAD%3A+Zero-Shot+Anomaly+Detection+"
                       "with+Memory-Driven+Retrieval")  # ICLR 2026
INTRO = """# MRAD — zero-shot anomaly detection, three ways side by side
Drop an image: it is encoded **once** by CLIP and scored by the three MRAD variants, which retrieve what the image
resembles from a *memory bank* of normal and anomalous examples. **MRAD-TF** compares raw CLIP features
(training-free), **MRAD-FT** compares them through small trained projections, **MRAD-CLIP** turns the retrieved
regions into text prompts for CLIP. Sliders below re-draw the maps instantly, without running the model again."""
HELP = """**Score** (all variants, same formula, 0–1): `0.3 × mean of the top 1 % of the anomaly map + 0.7 × image
probability`. At or above the **image threshold** the verdict is *anomalous*. **Image probability**: how much the
whole image resembles the bank's anomalous images rather than its normal ones (0.5 = equally). **Map top 1 %**:
the mean of the map's hottest 1 % pixels. **Defect area**: share of pixels at or above the **pixel threshold**
in the chosen normalisation. **Normalisation**: *raw* = the model's per-pixel probability of "anomalous";
*min–max* = stretched per image (shows where, hides how much: every image gets a hot spot); *calibrated* = fixed
per variant from normal reference images (0.5 = the highest value any normal reference reached, so above 0.5 is
beyond all of them). **Latency**: scoring time of the variant; the CLIP encoding is shared and shown once."""
FOOTER = f"""---
**MRAD** re-implements *MRAD: Zero-Shot Anomaly Detection with Memory-Driven Retrieval* (ICLR 2026,
[paper]({PAPER})) on open_clip. Licences: code MIT; banks built from MVTec AD are CC BY-NC-SA 4.0
(non-commercial), from VisA CC BY 4.0; the example images are synthetic (procedural, `assets/make_examples.py`).
Scores are research outputs: **this demo is not a medical device** and not a certified inspection system."""


def image_input(**kwargs) -> gr.Image:
    """gr.Image that passes the uploaded file on undecoded: mrad_core.images reads it and explains every
    problem (corrupt, empty, huge, 16-bit, CMYK, animated …) instead of Gradio's decoder failing first.
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


def gpu(fn):
    """spaces.GPU on ZeroGPU Spaces (the GPU is attached only inside it); unchanged elsewhere."""
    if os.environ.get("SPACES_ZERO_GPU"):
        try:
            import spaces
            return spaces.GPU(duration=int(os.environ.get("MRAD_GPU_SECONDS", 120)))(fn)
        except ImportError:
            pass
    return fn


def user_errors(fn):
    """MRADError -> gr.Error with its text; anything unexpected -> a short gr.Error (details in the log)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MRADError as e:
            raise gr.Error(str(e), duration=None) from None
        except Exception as e:
            log.exception("request failed")
            raise gr.Error(f"Unexpected error ({type(e).__name__}: {str(e)[:200]}); the server keeps running. "
                           "Please report it with the image if it persists.") from None
    return wrapper


def _view(pixel_threshold, opacity, colormap, contours, binary, normalisation) -> viz.View:
    return viz.View(float(pixel_threshold), float(opacity), colormap, normalisation, bool(contours), bool(binary))


def _legend(colormap, threshold, normalisation):
    stops = ", ".join(f"rgb{tuple(int(c) for c in viz.lut(colormap)[i])} {i / 2.55:.0f}%" for i in range(0, 256, 32))
    return (f"<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>0<div style='flex:1;"
            f"max-width:320px;height:12px;border-radius:3px;background:linear-gradient(90deg,{stops});position:"
            f"relative'><div style='position:absolute;left:{threshold * 100:.0f}%;top:-3px;bottom:-3px;width:2px;"
            f"background:#fff;outline:1px solid #000'></div></div>1 <span>({normalisation}; marker = pixel "
            f"threshold)</span></div>")


def _card(v, s, area, image_threshold, latency, normalisation, pixel_threshold):
    bad = s["score"] >= image_threshold
    colour = "#c62828" if bad else "#2e7d32"
    return (f"<div id='card-{v}' style='border:2px solid {colour};border-radius:8px;padding:8px 12px'>"
            f"<div style='font-weight:700;color:{colour};font-size:1.1em'>{'ANOMALOUS' if bad else 'normal'}"
            f"</div><div><span class='mrad-score' style='font-size:1.8em;font-weight:700'>{s['score']:.3f}</span>"
            f" score (threshold {image_threshold:.2f})</div><div style='height:6px;background:#ddd;"
            f"border-radius:3px;position:relative;margin:4px 0'><div style='width:{s['score'] * 100:.1f}%;"
            f"height:6px;background:{colour};border-radius:3px'></div><div style='position:absolute;left:"
            f"{image_threshold * 100:.0f}%;top:-3px;width:2px;height:12px;background:#000'></div></div>"
            f"<small>image probability {s['image_prob']:.3f} · map top 1 % {s['map_top']:.3f}<br>"
            f"defect area {area:.2f} % (pixels ≥ {pixel_threshold:.2f}, {normalisation}) · {latency:.0f} ms"
            f"</small></div>")


def build_demo(service: Service) -> gr.Blocks:
    """The whole UI around one Service (tests pass their own)."""
    concurrency = int(os.environ.get("MRAD_CONCURRENCY", 2 if service.device.type == "cuda" else 1))
    model_events = dict(concurrency_limit=concurrency, concurrency_id="model")
    live = dict(concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")

    def _check_source(source):
        keys = [k for _, k in service.sources()]
        if source in (None, ""):
            return service.default_source()
        if source not in keys:
            raise MRADError(f"unknown source {source!r}; choose from {', '.join(keys)}")
        return source

    @user_errors
    @gpu
    def predict(image, variants=VARIANTS, source=None, image_threshold=0.5, pixel_threshold=0.5,
                normalisation="raw", bank_id=None, progress=gr.Progress()):
        if image is None:
            raise MRADError("no image: upload one, paste one or click an example")
        source = _check_source(source)
        progress(0, desc=service.status())
        service.tidy()
        a = service.analyze(image, variants, source, bank_id, wait_calibration=normalisation == "calibrated")
        for note in a.notes:
            gr.Info(f"{a.name}: {note}")
        for v, why in a.skipped.items():
            gr.Warning(f"{NAMES[v]} skipped: {why}")
        view = viz.View(float(pixel_threshold), normalisation=normalisation)
        calib = {v: service.calibration(a.key, v) for v in a.maps}
        return a.summary(float(image_threshold), view, calib), a

    def render(a, image_threshold, pixel_threshold, opacity, colormap, contours, binary, normalisation):
        """Re-draw the three columns from the cached maps: no model call."""
        if a is None:
            return [gr.update()] * 12
        view = _view(pixel_threshold, opacity, colormap, contours, binary, normalisation)
        out, rows, verdicts = [], [], []
        for v in VARIANTS:
            if v not in a.maps:
                why = a.skipped.get(v, "not chosen")
                out += [None, f"<div id='card-{v}'><i>{NAMES[v]} did not run: {why}</i></div>"]
                continue
            s = a.scores[v]
            overlay, area = viz.render(a.image, a.maps[v], view, service.calibration(a.key, v))
            out += [(a.image, overlay), _card(v, s, area, image_threshold, a.latency_ms[v], normalisation,
                                               view.pixel_threshold)]
            verdict = "anomalous" if s["score"] >= image_threshold else "normal"
            verdicts.append(f"{NAMES[v]} **{verdict}** ({s['score']:.3f})")
            rows.append([a.name, NAMES[v], f"{s['score']:.5f}", verdict, f"{s['image_prob']:.5f}",
                         f"{s['map_top']:.5f}", f"{area:.3f}", f"{a.latency_ms[v]:.1f}"])
        folder = service.workdir / f"single-{id(a):x}"  # one file per analysis, rewritten on each re-render
        folder.mkdir(exist_ok=True)
        path = folder / f"{batch.safe_stem(a.name)}_mrad.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["image", "variant", "score", "verdict", "image_prob", "map_top1pct",
                                      "defect_area_percent", "latency_ms"]] + rows)
        note = "" if normalisation != "calibrated" or all(service.calibration(a.key, v) for v in a.maps) else \
            " · calibration not ready yet (computed in the background): showing raw"
        summary = (f"**{a.name}** — {' · '.join(verdicts)} · encoded once in {a.latency_ms['encode']:.0f} ms on "
                   f"{a.setup['device'].upper()} ({a.setup['precision']}) · source: {a.source}{note}"
                   + (f"  \n_{'; '.join(a.notes)}_" if a.notes else ""))
        cols = [gr.Column(visible=v in a.maps or v in a.skipped) for v in VARIANTS]
        return [summary, _legend(colormap, view.pixel_threshold, normalisation), *out, *cols, str(path)]

    @user_errors
    @gpu
    def predict_batch(files, folder=None, variants=VARIANTS, source=None, image_threshold=0.5, pixel_threshold=0.5,
                      opacity=0.5, colormap="turbo", contours=True, binary=False, normalisation="raw",
                      bank_id=None, progress=gr.Progress()):
        paths = [str(f) for f in (files or [])] + [str(f) for f in (folder or [])]
        if not paths:
            raise MRADError("no files: upload images, a ZIP of images or a folder")
        view = _view(pixel_threshold, opacity, colormap, contours, binary, normalisation)
        source = _check_source(source)
        service.tidy()
        r = batch.run_batch(service, paths, variants, source, bank_id, view, float(image_threshold),
                            lambda p, d: progress(p, desc=d))
        table = [[row.get(c, "") for c in r.columns] for row in r.rows]
        n_ok = len(r.rows) - len(r.errors)
        report = f"**{n_ok} image(s) scored** with {', '.join(NAMES[v] for v in r.variants)}, sorted by mean score."
        if r.errors:
            report += f" **{len(r.errors)} skipped:** " + "; ".join(f"`{n}`: {m}" for n, m in r.errors[:20])
        return r.gallery, {"headers": r.columns, "data": table}, str(r.csv), str(r.zip), report

    @user_errors
    @gpu
    def build_bank(normal, defects=None, name="my bank", progress=gr.Progress()):
        if not normal:
            raise MRADError("upload at least one normal (defect-free) image")
        progress(0, desc="encoding the bank images")
        bank_id, notes = batch.build_bank(service, [str(p) for p in normal], [str(p) for p in defects or []],
                                            (name or "my bank").strip()[:60])
        report = f"**Bank ready:** {service.bank_info(bank_id)}. Source switched to *My bank*." + \
            "".join(f"\n- {n}" for n in notes)
        return report, [str(p) for p in service.save_bank(bank_id)], bank_id, "custom"

    with gr.Blocks(title="MRAD: zero-shot anomaly detection", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(INTRO)
        status = gr.Markdown(service.status(), elem_id="status")
        bank_id = gr.State(None)
        with gr.Row():
            source = gr.Dropdown(service.sources(), value=service.default_source(), label="Memory bank & heads",
                                 scale=2, elem_id="source")
            variants = gr.CheckboxGroup([(NAMES[v], v) for v in VARIANTS], value=list(VARIANTS),
                                        label="Variants", scale=1, elem_id="variants")
        with gr.Accordion("What is loaded / missing", open=False) as source_panel:
            source_info = gr.Markdown()
        with gr.Row():
            image_threshold = gr.Slider(0, 1, 0.5, step=0.01, label="Image threshold (score → verdict)")
            pixel_threshold = gr.Slider(0, 1, 0.5, step=0.01, label="Pixel threshold (defect area, contours)",
                                        elem_id="pixel-threshold")
            opacity = gr.Slider(0, 1, 0.5, step=0.05, label="Overlay opacity")
        with gr.Row():
            colormap = gr.Dropdown(list(viz.COLORMAPS), value="turbo", label="Colormap")
            normalisation = gr.Radio([("raw", "raw"), ("min–max", "minmax"), ("calibrated", "calibrated")],
                                     value="raw", label="Map normalisation")
            contours = gr.Checkbox(True, label="Contours")
            binary = gr.Checkbox(False, label="Binary mask")
        with gr.Tabs():
            with gr.Tab("Single image"):
                with gr.Row():
                    with gr.Column(scale=1):
                        image = image_input(label="Image (drop, paste or click an example)",
                                            sources=["upload", "clipboard"], elem_id="input-image")
                        run = gr.Button("Detect anomalies", variant="primary", elem_id="run")
                        gr.Examples([[p] for p in EXAMPLES], [image], label="Synthetic examples (procedural)",
                                    examples_per_page=8)
                    with gr.Column(scale=3):
                        summary = gr.Markdown("Results appear here.", elem_id="summary")
                        legend = gr.HTML()
                        sliders, cards, cols = [], [], []
                        with gr.Row(equal_height=False):
                            for v in VARIANTS:
                                with gr.Column(min_width=220, elem_id=f"result-{v}") as col:
                                    gr.Markdown(f"### {NAMES[v]}")
                                    sliders.append(gr.ImageSlider(label=f"{NAMES[v]}: original | overlay",
                                                                  format="jpeg", elem_id=f"overlay-{v}",
                                                                  max_height=360))
                                    cards.append(gr.HTML(elem_id=f"score-{v}"))
                                cols.append(col)
                        csv_file = gr.File(label="Results (CSV)", elem_id="csv")
                        with gr.Accordion("Result as JSON (what /predict returns)", open=False):
                            result_json = gr.JSON(label="result")
                        with gr.Accordion("What do the numbers mean?", open=False):
                            gr.Markdown(HELP)
            with gr.Tab("Batch"):
                with gr.Row():
                    files = gr.File(file_count="multiple", label="Images and/or ZIP archives", elem_id="batch-files")
                    folder = gr.File(file_count="directory", label="…or a folder", elem_id="batch-folder")
                run_batch = gr.Button("Score all", variant="primary", elem_id="run-batch")
                batch_report = gr.Markdown(label="report")
                gallery = gr.Gallery(label="Sorted by mean score (highest first): input | one overlay per variant",
                                     columns=3, height="auto", object_fit="contain", elem_id="gallery")
                table = gr.Dataframe(label="Per-image scores and verdicts", wrap=True)
                with gr.Row():
                    batch_csv = gr.File(label="CSV")
                    batch_zip = gr.File(label="ZIP: overlays (PNG), raw maps (.npy, 518×518 float32), CSV")
            with gr.Tab("Memory bank"):
                gr.Markdown("Build a memory bank from **your** defect-free images (plus, optionally, defect "
                            "images with masks named `x_mask.png`). MRAD-TF needs only it and the CLIP backbone "
                            "(FT/CLIP also run when MRAD_HEADS gives heads). Without "
                            "defect images the synthetic defects of `assets/bank` are used as the anomalous "
                            "memories. The bank lives for this server session; download it to keep it.")
                with gr.Row():
                    normal_files = gr.File(file_count="multiple", label="Normal images")
                    defect_files = gr.File(file_count="multiple", label="Defect images + masks (optional)")
                bank_name = gr.Textbox("my bank", label="Name")
                build = gr.Button("Build bank", variant="primary")
                bank_report = gr.Markdown(label="report")
                bank_files = gr.File(label="Bank files (safetensors: --image-bank / --patch-bank)")
        gr.Markdown(FOOTER)

        controls = [image_threshold, pixel_threshold, opacity, colormap, contours, binary, normalisation]
        state = gr.State(None)
        render_out = [summary, legend] + [x for pair in zip(sliders, cards) for x in pair] + cols + [csv_file]
        run.click(predict, [image, variants, source, image_threshold, pixel_threshold, normalisation, bank_id],
                  [result_json, state], api_name="predict", **model_events
                  ).success(render, [state, *controls], render_out, api_name="render",
                            api_visibility="undocumented", show_progress="hidden")
        for c in controls:
            c.input(render, [state, *controls], render_out, api_visibility="private", **live)
        run_batch.click(predict_batch, [files, folder, variants, source, *controls, bank_id],
                        [gallery, table, batch_csv, batch_zip, batch_report], api_name="predict_batch",
                        **model_events)
        build.click(build_bank, [normal_files, defect_files, bank_name], [bank_report, bank_files, bank_id, source],
                    api_name="build_bank", **model_events)
        def describe(key, bank):  # the panel opens by itself when something is missing
            text = service.describe(key, bank)
            return text, gr.Accordion(open="missing" in text or "not built" in text)

        gr.on([source.change, bank_id.change, demo.load], describe, [source, bank_id], [source_info, source_panel],
              api_visibility="private", show_progress="hidden")
        gr.Timer(2).tick(service.status, None, status, api_name="poll_status", api_visibility="private",
                         show_progress="hidden", queue=False)
        def status_text() -> str:
            """What the server is loading or doing, its device and precision."""
            return service.status()
        gr.api(status_text, api_name="status", queue=False, concurrency_limit=None)
    demo.queue(default_concurrency_limit=concurrency, max_size=int(os.environ.get("MRAD_QUEUE_SIZE", 64)))
    return demo


demo = build_demo(Service())

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="MRAD Gradio app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to listen on (0.0.0.0 for all) [$GRADIO_SERVER_NAME]")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port [$GRADIO_SERVER_PORT] (default %(default)s)")
    parser.add_argument("--share", action="store_true", help="create a temporary public gradio.live link")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=gr.themes.Soft(),
                max_file_size=os.environ.get("MRAD_MAX_FILE_SIZE", "200mb"))
