"""Judges: every labeller, its value types and its registry.

- `base`: the `Labeler` protocol, `Judgement`, `PairLabel`, `LabelFailure`, the strategies (`AllPairs`,
  `RankOnce`) and the provenance columns every labeller writes (`COMMON_COLUMNS`);
- `pairwise` (the paper's (A)/(B) log-prob labels, and chain-of-thought), `rank_all` (NeMo's best and worst of
  K), `ensemble` (several judges), `refusal` (does a reply refuse?), `debias` (calibrating P(A));
- `rating` (d-RLAIF: one reply rated 1-9, the expected score from the score tokens' log-probs), `guard` (what
  a reply must not gain reward from: the judge's answer stems, control tokens, copies of its question);
- `watch`: the judge that stops a run when its first calls all fail the same way;
- `registry`: `--labeler NAME` -> a labeller; the built-ins listed explicitly, then plugins.

Must not import: `cai.runs` (a labeller works inside a trainer's reward function, with no run directory), nor
anything above it (generate, evaluate, train, recipes, cli).
"""
