"""What a result says, in one place: variant names, the verdict rule, and the record fields of every output (the app's
cards and JSON, the batch CSV, the CLI's scores.json).

    out = VariantOutput.from_result(result[0], display_map, latency_ms=12.0)
    out.record(image_threshold=0.5, area=1.7)    # {"score", "anomalous", "image_prob", "map_top", ...}
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import viz
from .config import VARIANTS, variant_name as name  # noqa: F401  (records.name: the display name)

# the fields of one variant's record, in order (JSON keys, CSV columns)
FIELDS = ("score", "anomalous", "image_prob", "map_top", "defect_area_percent", "latency_ms")


def is_anomalous(score, threshold):
    """The verdict rule, for every output (app, API, batch, CLI, profiles): anomalous when the score reaches the image
    threshold. A float gives a bool, an array an array of bools."""
    verdict = np.asarray(score) >= threshold
    return bool(verdict) if verdict.ndim == 0 else verdict


def scores_entry(result) -> dict:
    """One image's entry of `mrad predict`'s scores.json for one variant (`result`: a Result of one image)."""
    return {"score": float(result.score[0]), "image_prob": float(result.image_prob[0]),
            "map_top": float(result.map_top[0])}


@dataclass
class VariantOutput:
    """One variant's output for one image, as the app keeps it (typed, picklable: it crosses ZeroGPU workers)."""

    variant: str
    score: float  # 0.3 * map_top + 0.7 * image_prob
    image_prob: float  # image-level retrieval probability of "anomalous"
    map_top: float  # mean of the top 1 % of the smoothed map
    latency_ms: float  # scoring time of this variant (the shared encoding not included)
    map: np.ndarray  # (H, W) float16 smoothed map at display size
    calibration: viz.Calibration | None = None  # reference levels of this source and variant, when computed

    @classmethod
    def from_result(cls, result, display_map, latency_ms: float, calibration=None) -> "VariantOutput":
        return cls(result.variant, float(result.score[0]), float(result.image_prob[0]), float(result.map_top[0]),
                   float(latency_ms), display_map, calibration)

    def anomalous(self, image_threshold: float) -> bool:
        return is_anomalous(self.score, image_threshold)

    def area(self, view: viz.View) -> float:
        """Defect area % at the view's pixel threshold and normalisation."""
        norm = viz.normalise(self.map, view.normalisation, self.calibration)
        return viz.area_percent(viz.threshold_mask(norm, view.pixel_threshold))

    def record(self, image_threshold: float, area: float) -> dict:
        """The FIELDS of this output, rounded for people and files."""
        return {"score": round(self.score, 5), "anomalous": self.anomalous(image_threshold),
                "image_prob": round(self.image_prob, 5), "map_top": round(self.map_top, 5),
                "defect_area_percent": round(float(area), 3), "latency_ms": round(self.latency_ms, 1)}


@dataclass
class Analysis:
    """One image scored by several variants from one encoding: what the app keeps in gr.State."""

    name: str
    notes: list
    image: np.ndarray  # (H, W, 3) uint8 display image, longer side <= 518
    outputs: dict  # variant -> VariantOutput, in VARIANTS order
    skipped: dict = field(default_factory=dict)  # variant -> why it could not run
    encode_ms: float = 0.0  # time of the shared encoding (0 when it was re-used)
    reused: bool = False  # the encoding came from the cache (the same image was analysed before)
    source: str = ""  # source key
    source_label: str = ""
    setup: dict = field(default_factory=dict)  # device, precision, model

    @property
    def calibrated(self) -> bool:
        return all(o.calibration is not None for o in self.outputs.values())

    def with_calibrations(self, levels: dict) -> "Analysis":
        """A copy whose outputs carry `levels` (variant -> viz.Calibration) where they have none yet."""
        outputs = {v: o if o.calibration is not None or v not in levels else
                   VariantOutput(**{**o.__dict__, "calibration": levels[v]}) for v, o in self.outputs.items()}
        return Analysis(**{**self.__dict__, "outputs": outputs})

    def summary(self, image_threshold: float = 0.5, view: viz.View = viz.View()) -> dict:
        """The JSON of /predict: the image, the setup and one record per variant."""
        normalisation = view.normalisation
        if normalisation == "calibrated" and not self.calibrated:
            normalisation = "raw (no calibration)"
        return {"image": self.name, "notes": self.notes, "source": self.source_label, **self.setup,
                "encode_ms": round(self.encode_ms, 1), "encoding_reused": self.reused,
                "image_threshold": image_threshold, "pixel_threshold": view.pixel_threshold,
                "normalisation": normalisation,
                "variants": {v: o.record(image_threshold, o.area(view)) for v, o in self.outputs.items()},
                "skipped": self.skipped}

    def rows(self, image_threshold: float, view: viz.View) -> list:
        """CSV rows (dicts with "image", "variant" and FIELDS), one per variant that ran."""
        return [{"image": self.name, "variant": name(v), **o.record(image_threshold, o.area(view))}
                for v, o in self.outputs.items()]


def batch_row(file: str, results: dict, areas: dict, image_threshold: float, notes=()) -> dict:
    """One image's row of the batch CSV: file, mean score, then `<variant>_<field>` per variant.
    results: variant -> Result of that image; areas: variant -> defect area %."""
    row = {"file": file, "notes": "; ".join(notes)}
    for v, r in results.items():
        score = float(r.score[0])
        row.update({f"{v}_score": round(score, 5), f"{v}_anomalous": is_anomalous(score, image_threshold),
                    f"{v}_image_prob": round(float(r.image_prob[0]), 5), f"{v}_map_top": round(float(r.map_top[0]), 5),
                    f"{v}_defect_area_percent": round(float(areas[v]), 3)})
    row["mean_score"] = round(float(np.mean([row[f"{v}_score"] for v in results])), 5)
    return row


BATCH_FIELDS = ("score", "anomalous", "image_prob", "map_top", "defect_area_percent")


def batch_columns(variants) -> list:
    return ["file", "mean_score"] + [f"{v}_{c}" for v in variants for c in BATCH_FIELDS] + ["notes", "error"]


def ordered(variants) -> list:
    """Variant keys in the canonical order (tf, ft, clip), duplicates removed."""
    return [v for v in VARIANTS if v in set(variants)]
