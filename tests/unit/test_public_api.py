import cai


def test_public_api_is_pinned() -> None:
    assert sorted(cai.__all__) == sorted([
        "Completion", "Constitution", "Engine", "EngineError", "EnsembleLabeler", "JudgeEvalConfig", "Message",
        "PairwiseLabeler", "Principle", "PromptRow", "RLConfig", "RankAllLabeler", "Request", "SLConfig",
        "SamplingParams", "export_run", "load_constitution", "load_engine", "read_prompts", "register_engine",
        "run_judge_eval", "run_rl", "run_sl", "Judgement", "Labeler", "LabelerOptions", "make_labeler",
        "register_labeler", "COMMON_COLUMNS",
    ])
    for name in cai.__all__:
        assert getattr(cai, name) is not None
