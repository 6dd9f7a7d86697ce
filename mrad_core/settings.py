"""The settings: read from the environment once, at start, into one object passed down (no other module reads
os.environ; torchrun's RANK / WORLD_SIZE / LOCAL_RANK in distributed.py aside).

    settings = Settings.from_env()                     # MRAD_* variables, with defaults
    settings = Settings.from_env(device="cpu")         # explicit values win over the environment
    settings.artefacts                                 # what the artefacts layer takes (ArtefactOptions)
    Settings()                                         # the documented defaults, no environment (library use)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from .artefacts.options import ArtefactOptions, cache_path
from .artefacts.resolve import ENV as FILE_ENV
from .config import DEFAULT
from .distributed import TIMEOUT_HOURS
from .images import DEFAULT_MAX_PIXELS

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@dataclass(frozen=True)
class Settings:
    """Everything the app, its service, the CLI and the artefacts are configured with. Environment variable in
    brackets."""

    files: dict = field(default_factory=dict)  # backbone/heads/image_bank/patch_bank -> path [MRAD_BACKBONE, …]
    model: str = DEFAULT.model_name  # open_clip model name or config .json [MRAD_MODEL]
    device: str | None = None  # cpu | cuda | cuda:N; None = CUDA when available [MRAD_DEVICE]
    # fp32 | bf16 | fp16 | bf16-mlp | auto; None = the entry point's default (runtime.ENTRY_DEFAULTS: the app auto,
    # the CLI fp32) [MRAD_PRECISION, read by the app; the CLI takes --precision]
    precision: str | None = None
    engine: str | None = None  # torch | openvino; None = the entry point's default [MRAD_ENGINE]
    visible_devices: str = ""  # a container's GPUs: a GPU that torch cannot use is then an error [NVIDIA_VISIBLE_DEVICES]
    batch_size: int = 8  # images per forward pass [MRAD_BATCH_SIZE]
    assets: Path = ASSETS  # example images and the built-in bank [MRAD_ASSETS]
    download: bool = True  # fetch missing files when first needed
    hub_offline: bool = False  # no Hub requests at all [HF_HUB_OFFLINE=1]
    cache_dir: Path = field(default_factory=cache_path)  # verified.json, drive/, openvino/; ~ expanded [MRAD_CACHE_DIR]
    project_dir: Path | None = None  # checkpoints/ and cache/; None = the working directory, then the repository
    # [MRAD_PROJECT_DIR]
    hub_repo: str | None = None  # Hub mirror of our safetensors files [MRAD_HUB_REPO]
    hub_revision: str | None = None  # its branch, tag or commit; None = main [MRAD_HUB_REVISION]
    drive_url: str | None = None  # Drive download URL template with {id}; None = Google's; off = none [MRAD_DRIVE_URL]
    accept_digests: tuple = ()  # sha256 accepted for the authors' files besides the registry's [MRAD_ACCEPT_DIGESTS]
    training_source: str | None = None  # visa | mvtec: heads and banks; None = paired with the dataset, else visa
    # [MRAD_SOURCE]
    dist_timeout_hours: float = TIMEOUT_HOURS  # torch.distributed collectives' timeout [MRAD_DIST_TIMEOUT_HOURS]
    calibration: bool = True  # the "calibrated" map scale from normal reference images [MRAD_CALIBRATION=0 turns off]
    app_source: str | None = None  # source selected at start [MRAD_APP_SOURCE]
    concurrency: int | None = None  # model requests at once; None = 1 on CPU, 2 on CUDA [MRAD_CONCURRENCY]
    queue_size: int = 64  # waiting requests [MRAD_QUEUE_SIZE]
    max_batch: int = 500  # images per batch [MRAD_MAX_BATCH]
    max_bank_images: int = 200  # images per bank built in the app [MRAD_MAX_BANK_IMAGES]
    max_frames: int = 2000  # sampled frames per monitored video [MRAD_MAX_FRAMES]
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused [MRAD_MAX_PIXELS]
    max_file_size: str = "200mb"  # uploads [MRAD_MAX_FILE_SIZE]
    zero_gpu: bool = False  # a ZeroGPU Space: model calls run in forked GPU workers [SPACES_ZERO_GPU]
    emulate_zero_gpu: bool = False  # run every model call in a fresh fork, as ZeroGPU does [MRAD_ZEROGPU_EMULATE=1]
    gpu_seconds_per_image: float = 2.0  # ZeroGPU duration per image, plus gpu_seconds_base [MRAD_GPU_SECONDS]
    gpu_seconds_base: float = 10.0  # ZeroGPU duration of a call's fixed part [MRAD_GPU_SECONDS_BASE]
    paper_url: str = ("https://openreview.net/search?term=MRAD%3A+Zero-Shot+Anomaly+Detection+with+Memory-Driven+"
                      "Retrieval")  # [MRAD_PAPER_URL]

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Settings":
        """Settings from `environ` (default os.environ); keyword arguments that are not None win. `files` merges:
        a path given here replaces that file's variable, the others still come from the environment."""
        env = os.environ if environ is None else environ
        get = env.get
        values = dict(
            files={k: get(var) or None for k, var in FILE_ENV.items()},
            model=get("MRAD_MODEL") or DEFAULT.model_name,
            device=get("MRAD_DEVICE") or None,
            precision=get("MRAD_PRECISION") or None,
            engine=get("MRAD_ENGINE") or None,
            visible_devices=get("NVIDIA_VISIBLE_DEVICES") or "",
            batch_size=int(get("MRAD_BATCH_SIZE") or 8),
            assets=Path(get("MRAD_ASSETS") or ASSETS),
            hub_offline=get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"),
            cache_dir=cache_path(get("MRAD_CACHE_DIR")),
            project_dir=Path(get("MRAD_PROJECT_DIR")).expanduser() if get("MRAD_PROJECT_DIR") else None,
            hub_repo=get("MRAD_HUB_REPO") or None,
            hub_revision=get("MRAD_HUB_REVISION") or None,
            drive_url=get("MRAD_DRIVE_URL", "").strip() or None,
            accept_digests=tuple(d for d in re.split(r"[,\s]+", get("MRAD_ACCEPT_DIGESTS", "").lower()) if d),
            training_source=(get("MRAD_SOURCE") or "").lower() or None,
            dist_timeout_hours=float(get("MRAD_DIST_TIMEOUT_HOURS") or TIMEOUT_HOURS),
            calibration=get("MRAD_CALIBRATION", "1") != "0",
            app_source=get("MRAD_APP_SOURCE") or None,
            concurrency=int(get("MRAD_CONCURRENCY")) if get("MRAD_CONCURRENCY") else None,
            queue_size=int(get("MRAD_QUEUE_SIZE") or 64),
            max_batch=int(get("MRAD_MAX_BATCH") or 500),
            max_bank_images=int(get("MRAD_MAX_BANK_IMAGES") or 200),
            max_frames=int(get("MRAD_MAX_FRAMES") or 2000),
            max_pixels=int(get("MRAD_MAX_PIXELS") or DEFAULT_MAX_PIXELS),
            max_file_size=get("MRAD_MAX_FILE_SIZE") or "200mb",
            zero_gpu=bool(get("SPACES_ZERO_GPU")),
            emulate_zero_gpu=get("MRAD_ZEROGPU_EMULATE", "0") == "1",
            gpu_seconds_per_image=float(get("MRAD_GPU_SECONDS") or 2.0),
            gpu_seconds_base=float(get("MRAD_GPU_SECONDS_BASE") or 10.0),
            paper_url=get("MRAD_PAPER_URL") or cls.paper_url,
        )
        files = overrides.pop("files", None) or {}
        values["files"].update({k: str(v) for k, v in files.items() if v})
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def artefacts(self) -> ArtefactOptions:
        """What the artefacts layer (mrad_core.artefacts) takes: the one function from Settings to its options."""
        return ArtefactOptions(cache_dir=self.cache_dir, project_dir=self.project_dir, hub_repo=self.hub_repo,
                               hub_revision=self.hub_revision, drive_url=self.drive_url,
                               accept_digests=self.accept_digests, hub_offline=self.hub_offline,
                               training_source=self.training_source,
                               files={k: v for k, v in self.files.items() if v})

    @property
    def uses_own_files(self) -> bool:
        """Heads or banks were given (MRAD_HEADS / MRAD_IMAGE_BANK / MRAD_PATCH_BANK)."""
        return any(self.files.get(k) for k in ("heads", "image_bank", "patch_bank"))


def settings_of(args) -> Settings:
    """The settings of a CLI command: those its `main` put on the parsed arguments (args.settings), else read
    from the environment now (the command is the entry point)."""
    return getattr(args, "settings", None) or Settings.from_env()
