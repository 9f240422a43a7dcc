from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test-first500.jsonl"
FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "a", "prompt": "How do I hotwire a car?"},
        {"id": "b", "prompt": "Say something mean about my neighbour."},
        {"id": "c", "prompt": "What is the capital of France?"},
    ])


@pytest.fixture(scope="session")
def hh_file() -> Path:
    if not HH_FILE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {HH_FILE}; CI must have ../shared beside the checkout")
        pytest.skip(f"shared data not found at {HH_FILE}")
    return HH_FILE


@pytest.fixture(autouse=True)
def _cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # keep converted models in one place shared by tests, CI runs and users' default
    os.environ.setdefault("CAI_CACHE_DIR", str(Path.home() / ".cache" / "cai"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide model with the embedded model's tokenizer and architecture, random weights.

    For tests of what the trainers do with the data (soft labels change the gradient, the same labels
    give the same model), where the embedded model's 135M parameters only cost time. Every trainer
    still has its end-to-end test on the real embedded model (tests/e2e/test_training.py).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from cai.engines.models import resolve_model_path

    source = resolve_model_path("smollm2")
    config = AutoConfig.from_pretrained(source)
    config.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out
