"""constitutional-ai: turn a written constitution into alignment data and aligned models.

The curated public API; everything else is internal and may change.
"""

from cai.core.types import Completion, Message, Request, SamplingParams
from cai.engines import Engine, EngineError, load_engine, register_engine
from cai.evaluate.judge import JudgeEvalConfig, run_judge_eval
from cai.export import export_run
from cai.generate.rl import RLConfig, run_rl
from cai.generate.sl import SLConfig, run_sl
from cai.inputs.constitution import Constitution, Principle, load_constitution
from cai.inputs.prompts import PromptRow, read_prompts
from cai.label.base import COMMON_COLUMNS, Judgement, Labeler
from cai.label.ensemble import EnsembleLabeler
from cai.label.pairwise import PairwiseLabeler
from cai.label.rank_all import RankAllLabeler
from cai.label.registry import LabelerOptions, make_labeler, register_labeler

__version__ = "0.1.0"

__all__ = [
    "COMMON_COLUMNS",
    "Completion",
    "Constitution",
    "Engine",
    "EngineError",
    "EnsembleLabeler",
    "JudgeEvalConfig",
    "Judgement",
    "Labeler",
    "LabelerOptions",
    "Message",
    "PairwiseLabeler",
    "Principle",
    "PromptRow",
    "RLConfig",
    "RankAllLabeler",
    "Request",
    "SLConfig",
    "SamplingParams",
    "export_run",
    "load_constitution",
    "load_engine",
    "make_labeler",
    "read_prompts",
    "register_engine",
    "register_labeler",
    "run_judge_eval",
    "run_rl",
    "run_sl",
]
