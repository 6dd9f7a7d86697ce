"""mrad_core: MRAD zero-shot anomaly detection (ICLR 2026) on open_clip.

    from mrad_core import Detector
    det = Detector.from_files(backbone=..., heads=..., image_bank=..., patch_bank=...)
    results = det.predict(["part.png"], variants=("tf", "ft", "clip"))
"""
from .backbone import Backbone, Encoding, WeightsError
from .bank import BankBuilder, BankError, MemoryBank
from .config import DEFAULT, VARIANTS, MRADConfig
from .detector import Detector, Result
from .errors import MRADError
from .heads import Heads, HeadsError
from .images import ImageError, load_image, load_mask, preprocess

__all__ = ["Backbone", "BankBuilder", "BankError", "DEFAULT", "Detector", "Encoding", "Heads", "HeadsError",
           "ImageError", "MRADConfig", "MRADError", "MemoryBank", "Result", "VARIANTS", "WeightsError",
           "load_image", "load_mask", "preprocess"]
__version__ = "0.1.0"
