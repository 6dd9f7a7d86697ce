"""Packaging without a Docker daemon or a Space: the Dockerfile is parsed (dockerfile-parse) and the README's
Space front matter is parsed (yaml) and checked against requirements.txt and the artefact registry."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from mrad_core.artefacts import registry

ROOT = Path(__file__).resolve().parents[1]
SPACE_HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "a10g-small",
                  "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "h100", "zero-a10g"}


def pins():
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if m:
            out[m[1].lower()] = m[2]
    return out


@pytest.fixture(scope="module")
def docker():
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    return parser, [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


def index(steps, instruction, pattern):
    hits = [n for n, (ins, val) in enumerate(steps) if ins == instruction and re.search(pattern, val)]
    assert hits, f"no {instruction} matching {pattern!r}"
    return hits[0]


def test_dockerfile_follows_spaces_conventions(docker):
    parser, steps = docker
    py = pins()
    assert parser.baseimage.startswith("python:3.11")
    assert re.search(r"useradd .*-u 1000 user", parser.content)
    user = index(steps, "USER", r"^user$")
    assert user < index(steps, "CMD", "app.py") and all(ins != "USER" for ins, _ in steps[user + 1:])
    env = parser.envs
    assert env["HOME"] == "/home/user" and env["HF_HOME"].startswith("/home/user/")  # writable by uid 1000
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0" and env["GRADIO_SERVER_PORT"] == "7860"
    assert env["MRAD_PROJECT_DIR"] == steps[index(steps, "WORKDIR", ".")][1]  # checkpoints/ and cache/ live there
    assert ("EXPOSE", "7860") in steps
    assert parser.cmd == '["python", "app.py"]' or parser.cmd.split() == ["python", "app.py"]
    assert py["torch"] and py["gradio"]


def test_dockerfile_device_arg_and_layer_order(docker):
    parser, steps = docker
    assert parser.args["DEVICE"] == "cpu"
    install = index(steps, "RUN", r"pip install .*-r requirements\.txt")
    value = steps[install][1]
    assert re.search(r"cpu\)", value) and re.search(r"cuda\)", value) and "download.pytorch.org/whl/cpu" in value
    assert "exit 1" in value  # any other DEVICE stops the build
    copy_reqs = index(steps, "COPY", r"requirements\.txt")
    copy_code = index(steps, "COPY", r"^(--chown=\S+ )?\. \.$")
    assert copy_reqs < install < copy_code  # code changes do not invalidate the pip layer
    assert index(steps, "RUN", r"pip install .*-e \.") > copy_code


def test_dockerignore_keeps_weights_and_vcs_out():
    lines = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "checkpoints/*", "cache/*", "*.safetensors", "*.pth", "*.pt"):
        assert entry in lines
    assert "app.py" not in lines and "mrad_core" not in lines


@pytest.fixture(scope="module")
def front_matter():
    text = (ROOT / "README.md").read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with a YAML front matter block"
    return yaml.safe_load(m[1])


def test_space_front_matter_agrees_with_requirements(front_matter):
    fm = front_matter
    assert fm["sdk"] == "gradio" and fm["sdk_version"] == pins()["gradio"]
    assert fm["app_file"] == "app.py" and (ROOT / fm["app_file"]).is_file()
    assert str(fm["python_version"]) == "3.11"
    assert fm["suggested_hardware"] in SPACE_HARDWARE


def known_hub_files() -> dict:
    """{repo: {filenames}} the registry knows to exist on the Hub (published files only)."""
    known = {}
    for repo, filename in registry.hub_files():
        known.setdefault(repo, set()).add(filename)
    return known


def test_space_front_matter_names_only_what_exists(front_matter):
    """A Space builds on first push only if everything it preloads exists: the backbone's file known to be in
    its repo, never an unpublished mirror (registry.DEFAULT_REPO_PUBLISHED is False today)."""
    fm, known = front_matter, known_hub_files()
    assert set(fm["models"]) <= set(known), f"models: {fm['models']} names repos not known to exist: {known}"
    preload = {}
    for entry in fm["preload_from_hub"]:
        parts = entry.split()
        assert 1 <= len(parts) <= 3, entry
        assert parts[0] in known, f"preload_from_hub: {parts[0]} is not known to exist (published)"
        files = set(parts[1].split(",")) if len(parts) > 1 else set()
        assert files <= known[parts[0]], f"preload_from_hub: {parts[0]} has no known files {files - known[parts[0]]}"
        preload[parts[0]] = files
    assert registry.BACKBONE.repo in preload  # the 1.7 GB backbone is fetched at build time, not on first request
    if not registry.DEFAULT_REPO_PUBLISHED:
        assert registry.DEFAULT_REPO not in known and registry.DEFAULT_REPO not in fm["models"]


def test_registry_knows_the_backbone_file_open_clip_falls_back_to():
    """open_clip 3.3 tries open_clip_model.safetensors, then open_clip_pytorch_model.bin (the file in the repo)."""
    from open_clip import constants, pretrained

    assert registry.BACKBONE.filename == constants.HF_WEIGHTS_NAME == "open_clip_pytorch_model.bin"
    assert constants.HF_SAFE_WEIGHTS_NAME == "open_clip_model.safetensors"  # tried first, not known to exist
    cfg = pretrained.get_pretrained_cfg("ViT-L-14-336-quickgelu", "openai")
    assert cfg["hf_hub"].rstrip("/") == registry.BACKBONE.repo
    mirror = registry.hub_files("you/mrad")
    assert ("you/mrad", "mrad_heads_visa.safetensors") in mirror and len(mirror) == 7


def test_test_tools_stay_out_of_the_space_and_the_image():
    runtime = pins()
    for tool in ("pytest", "pytest-timeout", "playwright", "dockerfile-parse"):
        assert tool not in runtime, f"{tool} belongs in requirements-dev.txt"
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev and "pytest==" in dev and "playwright==" in dev
    assert "requirements-dev.txt" in (ROOT / ".ci" / "run").read_text()


def test_dockerfile_can_take_cuda_12_wheels(docker):
    parser, steps = docker
    assert "TORCH_INDEX" in parser.args and parser.args["TORCH_INDEX"] == ""
    value = steps[index(steps, "RUN", r"pip install .*-r requirements\.txt")][1]
    cuda_branch = value[value.index("cuda)"):value.index("*)")]
    assert '--index-url "$TORCH_INDEX"' in cuda_branch


def test_zerogpu_front_matter_in_the_docs_follows_the_zerogpu_rules():
    """The ZeroGPU variant of the front matter (docs/deploy.md): a Python ZeroGPU supports and ZeroGPU hardware."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    m = re.search(r"```yaml\n# ZeroGPU front matter\n(.*?)```", text, re.S)
    assert m, "docs/deploy.md must give the ZeroGPU front matter in a ```yaml block starting '# ZeroGPU front matter'"
    fm = yaml.safe_load(m[1])
    assert str(fm["python_version"]) in ("3.10", "3.12") and fm["suggested_hardware"] == "zero-a10g"
    assert fm["sdk"] == "gradio" and fm["app_file"] == "app.py"
    torch_pin = re.search(r"torch==(2\.(\d+)\.\d+)", text[m.end():m.end() + 1500])
    assert torch_pin and 8 <= int(torch_pin[2]) <= 11, "pin a torch version ZeroGPU lists (2.8-2.11) next to it"


def test_dockerfile_converts_the_encoder_at_build_time(docker):
    """The OpenVINO IR is converted in the image (when the backbone is there): after the code and the preload,
    before the app starts, for CPU images, into the MRAD cache the app reads."""
    parser, steps = docker
    convert = index(steps, "RUN", r"python -m mrad_core\.warmup")
    assert convert > index(steps, "RUN", r"pip install .*-e \.") and convert > index(steps, "RUN", "PRELOAD")
    assert convert < index(steps, "CMD", "app.py")
    assert '"$DEVICE" = "cpu"' in steps[convert][1]
    assert parser.envs["MRAD_CACHE_DIR"].startswith("/home/user/")
    from mrad_core import warmup
    assert callable(warmup.main)  # the module the step runs


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_and_docs_links_reach_a_file_and_heading():
    """Every relative link of README.md and docs/*.md names a file of the repository and, with #, one of its
    headings; the README links every reference page in docs/."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            rel = path.relative_to(ROOT).as_posix()
            assert path.exists(), f"{page.name}: link to {target}: no such file"
            if anchor:
                assert anchor in anchors(path), f"{page.name}: link to {target}: no such heading in {rel}"
            checked += 1
    assert checked > 20
    readme = (ROOT / "README.md").read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"
    assert "(assets/screenshot.png)" in readme and (ROOT / "assets" / "screenshot.png").stat().st_size < 500_000
