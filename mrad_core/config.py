"""The constants of the MRAD method, in one place (see ../shared/parity/README.md for their meaning)."""
from dataclasses import dataclass

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
VARIANTS = ("tf", "ft", "clip")
VARIANT_NAMES = {"tf": "MRAD-TF", "ft": "MRAD-FT", "clip": "MRAD-CLIP"}


def variant_name(variant: str) -> str:
    """Display name of a variant key ("tf" -> "MRAD-TF"), for every page, plot, table and report."""
    return VARIANT_NAMES.get(variant, variant)


@dataclass(frozen=True)
class MRADConfig:
    """Everything MRAD fixes about the computation. Defaults are the paper's."""

    # open_clip model name or a path to an open_clip model config .json (the CLI's --model / MRAD_MODEL and the
    # app's settings replace it). QuickGELU matters: the plain ViT-L-14-336 config uses GELU and gives other features.
    model_name: str = "ViT-L-14-336-quickgelu"
    pretrained: str = "openai"
    image_size: int = 518  # input side; the 37x37 patch grid follows from the 14 px patches
    retrieval_temperature: float = 1.0  # tau of softmax(Q K^T / tau) V
    text_temperature: float = 0.07  # CLIP variant: patch-text similarity scale
    region_threshold: float = 0.5  # CLIP variant: FT patch probability that makes a patch "anomalous"
    avg_kernels: tuple = (1, 3, 5)  # neighbour averaging: mean of these avg-pools
    smoothing_sigma: float = 4.0  # Gaussian filter on the 518x518 map
    top_fraction: float = 0.01  # image score uses the mean of the top 1 % of map pixels ...
    image_weight: float = 0.7  # ... mixed with the image-level probability: 0.3 * top + 0.7 * prob
    compound_len: int = 4  # deep compound prompts replace this many tokens after SOS

    @property
    def mean(self):
        return OPENAI_MEAN

    @property
    def std(self):
        return OPENAI_STD


DEFAULT = MRADConfig()
