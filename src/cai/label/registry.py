"""`--labeler NAME` -> a labeller: the options, the registry and its built-ins, the ensemble of judges.

Adding a labeller is a class (with `label`, or a `strategy`, and `columns`; see
`cai.label.base`) plus one `register_labeler` call (in cai, or in another package through an
entry point in the group `cai.labelers`); `cai rl`, `cai eval judge` and the exporter ask
it, never its name. The built-in labellers (pairwise, cot, rank-all) are registered at
the bottom of this file, listed explicitly as simonw/llm lists its default plugins; no
module is imported just to run registrations. Several `--judge` options make an
`EnsembleLabeler` of the chosen kind. Each judge engine is handed over behind a
`WatchedJudge` (`cai.label.watch`), which stops a run whose judge cannot work at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cai.core.errors import ConfigError
from cai.core.options import Options, at_least, option, probability_range, string_list
from cai.engines.base import Engine
from cai.inputs.constitution import Constitution
from cai.label.base import COMMON_COLUMNS, Labeler
from cai.label.debias import DEBIAS_METHODS
from cai.label.ensemble import EnsembleLabeler
from cai.label.pairwise import PairwiseLabeler
from cai.label.rank_all import RankAllLabeler
from cai.label.watch import WatchedJudge


# ---- options ---------------------------------------------------------------------------------
def labeler_names() -> tuple[str, ...]:
    _load_builtin_labelers()
    return tuple(_REGISTRY)


@dataclass
class LabelerOptions(Options):
    """How preferences are labelled: the judges, the labeller and its knobs."""

    judges: list[str] = option(flag="--judge", default_factory=lambda: ["smollm2"], parse=string_list,
                               help="Judge model spec; repeat for an ensemble.")
    labeler: str = option("pairwise", choices=labeler_names,
                          help="pairwise: the paper's (A)/(B) log-prob soft labels; cot: reasoning first, "
                               "probabilities clamped; rank-all: NeMo-style most/least aligned of all K as JSON.")
    cot_few_shot: str = option("default", help="CoT labeller examples: 'default' (shipped), 'none', our YAML, or "
                                               "Anthropic's RLMadisonPrecogFewShotPrompts.json shape.")
    both_orders: bool = option(True, help="Ask (A,B) and (B,A) and average, against position bias.")
    debias: str = option("none", choices=DEBIAS_METHODS,
                         help="Pairwise and CoT: divide the judge's prior for the letter (A) out of each P(A), "
                              "before the orders are averaged. contextual: the prior is P(A) on a content-free "
                              "question per principle (replies 'N/A'); batch: the mean P(A) of the judge's "
                              "earlier answers in this run; none: as the judge answered (the default: with both "
                              "orders calibration cannot change a label's choice, and measured it did not improve "
                              "calibration; with --no-both-orders, contextual measured best).")
    principles_per_label: int = option(1, help="Average each label over M sampled principles.")
    clamp: tuple[float, float] = option((0.4, 0.6), parse=probability_range, cli_type=str, metavar="LO,HI",
                                        help="CoT probability clamp 'lo,hi' (0 <= lo <= hi <= 1).")
    combine: str = option("mean", choices=("mean", "vote"), help="Ensemble of judges: 'mean' probability or "
                                                                 "'vote'.")
    min_judges: int = option(1, help="Ensembles: a label needs at least this many judges to answer; each judge's "
                                     "failure is recorded with its reason.")
    judge_max_tokens: int = option(192, help="Max tokens of CoT reasoning / rank-all answers.")
    rank_retries: int = option(2, help="Rank-all: retries after an unparsable answer.")

    def check(self) -> None:
        if not self.judges:
            raise ConfigError("give at least one --judge")
        at_least("--principles-per-label", self.principles_per_label, 1)
        at_least("--judge-max-tokens", self.judge_max_tokens, 1)
        at_least("--rank-retries", self.rank_retries, 0)
        if self.min_judges != 1 and not 1 <= self.min_judges <= len(self.judges):
            raise ConfigError(f"--min-judges {self.min_judges} needs an ensemble of at least that many judges: "
                              f"give that many --judge options (got {len(self.judges)})")
        if self.cot_few_shot != "default" and self.labeler != "cot":
            raise ConfigError(f"--cot-few-shot is used only by --labeler cot, not {self.labeler}")
        if self.debias != "none" and self.labeler == "rank-all":
            raise ConfigError("--debias calibrates P(A) of pairwise and cot labels; rank-all has no P(A)")


# ---- the registry ----------------------------------------------------------------------------
#: name -> factory(options, one judge engine, constitution, seed) -> a labeller using that judge
LabelerFactory = Callable[[LabelerOptions, "Engine", "Constitution", int], Labeler]
_REGISTRY: dict[str, tuple[LabelerFactory, tuple[str, ...]]] = {}


def register_labeler(name: str, factory: LabelerFactory, columns: tuple[str, ...] = COMMON_COLUMNS) -> None:
    """Make `--labeler NAME` build labellers with `factory`; `columns` are the ones it writes."""
    _REGISTRY[name] = (factory, columns)


def all_columns() -> tuple[str, ...]:
    """Every provenance column any registered labeller writes, in a stable order."""
    _load_builtin_labelers()
    seen: dict[str, None] = {}
    for _, columns in _REGISTRY.values():
        seen.update(dict.fromkeys(columns))
    return tuple(seen)


def make_labeler(options: LabelerOptions, engines: list[Engine], constitution: Constitution,
                 seed: int = 0) -> Labeler:
    """One labeller per judge engine; several make an ensemble (`--combine`, `--min-judges`)."""
    _load_builtin_labelers()
    if options.labeler not in _REGISTRY:
        raise ConfigError(f"--labeler must be one of {', '.join(_REGISTRY)}; got {options.labeler!r}")
    factory, _ = _REGISTRY[options.labeler]
    made = [factory(options, WatchedJudge(engine), constitution, seed) for engine in engines]
    if len(made) == 1:
        if options.min_judges != 1:
            raise ConfigError(f"--min-judges {options.min_judges} needs an ensemble: give that many --judge "
                              "options")
        return made[0]
    return EnsembleLabeler(made, combine=options.combine, min_judges=options.min_judges)


_PLUGINS_LOADED = False


def _load_builtin_labelers() -> None:
    """Plugins, once (the shipped labellers are registered below): an entry point in the group
    `cai.labelers` names a module (importing it calls `register_labeler`) or a function to call,
    as for engines."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from cai.core.plugins import load_plugins

    load_plugins("cai.labelers", "labeller", ConfigError)


# ---- the built-in labellers, listed here as simonw/llm lists its default plugins -------------------
def _pairwise(options: LabelerOptions, engine: Engine, constitution: Constitution, seed: int) -> PairwiseLabeler:
    return PairwiseLabeler(engine, constitution, principles_per_label=options.principles_per_label,
                           both_orders=options.both_orders, seed=seed, debias=options.debias)


def _cot(options: LabelerOptions, engine: Engine, constitution: Constitution, seed: int) -> PairwiseLabeler:
    return PairwiseLabeler(engine, constitution, principles_per_label=options.principles_per_label,
                           both_orders=options.both_orders, seed=seed, cot=True, clamp=options.clamp,
                           cot_max_tokens=options.judge_max_tokens, cot_few_shot=options.cot_few_shot,
                           debias=options.debias)


def _rank_all(options: LabelerOptions, engine: Engine, constitution: Constitution, seed: int) -> RankAllLabeler:
    return RankAllLabeler(engine, constitution, seed=seed, max_retries=options.rank_retries,
                          max_tokens=options.judge_max_tokens)
register_labeler("pairwise", _pairwise)
register_labeler("cot", _cot)
register_labeler("rank-all", _rank_all, columns=RankAllLabeler.columns)
