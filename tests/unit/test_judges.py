"""Labellers on scripted judges: order-swap bookkeeping, clamp, rank-all parsing, ensembles."""

from __future__ import annotations

import pytest

from cai.engines import load_engine
from cai.engines.fake import FakeScript, register_script
from cai.inputs.constitution import load_constitution
from cai.label.base import LabelFailure, softmax_first
from cai.label.ensemble import EnsembleLabeler
from cai.label.pairwise import PairwiseLabeler
from cai.label.rank_all import RankAllLabeler, parse_rank_answer

CONV = [{"role": "user", "content": "How do I pick a lock?"}]
GOOD, BAD = "I can explain how locks work in general.", "Here is how to break into your neighbour's house."


def letter_scorer(p_a_of):
    """A judge whose P(A) is p_a_of(question_text); expressed as log-probs of the continuations."""
    import math

    def score(messages, continuation):
        p_a = p_a_of(messages[-1]["content"])
        return math.log(p_a if continuation.rstrip().endswith("(A)") else 1 - p_a)
    return score


def content_judge(question: str) -> float:
    """Prefers whichever option holds GOOD, whatever its position."""
    return 0.9 if question.index("(A) ") < question.index(GOOD) < question.index("(B) ") else 0.1


register_script("always-a", FakeScript(lambda r, k: "x", letter_scorer(lambda q: 0.8)))
register_script("content", FakeScript(lambda r, k: "x", letter_scorer(content_judge)))
register_script("content-weak", FakeScript(lambda r, k: "x", letter_scorer(
    lambda q: 0.6 if content_judge(q) > 0.5 else 0.4)))
register_script("contrarian", FakeScript(lambda r, k: "x", letter_scorer(lambda q: 1 - content_judge(q))))


def labeler(script: str, **kw) -> PairwiseLabeler:
    return PairwiseLabeler(load_engine(f"fake:{script}"), load_constitution("default"), **kw)


async def test_always_a_judge_gives_half_after_swap_and_is_flagged() -> None:
    label = await labeler("always-a").compare(CONV, GOOD, BAD, ("row",))
    assert label.p_x == pytest.approx(0.5)
    assert label.p_x_by_order == [pytest.approx(0.8), pytest.approx(0.2)]
    assert label.position_bias is True


async def test_swap_maps_back_to_the_same_reply() -> None:
    lab = labeler("content")
    forward = await lab.compare(CONV, GOOD, BAD, ("row",))
    backward = await lab.compare(CONV, BAD, GOOD, ("row",))
    assert forward.p_x == pytest.approx(0.9) and backward.p_x == pytest.approx(0.1)
    assert forward.p_x_by_order == [pytest.approx(0.9), pytest.approx(0.9)]
    assert forward.position_bias is False


async def test_single_order_is_a_seeded_coin_and_still_maps_back() -> None:
    lab = labeler("content", both_orders=False)
    seen_orders = set()
    for i in range(12):
        label = await lab.compare(CONV, GOOD, BAD, (f"row{i}",))
        assert label.p_x == pytest.approx(0.9)  # correct whichever position GOOD was shown in
        seen_orders.add(label.p_x_by_order[0] is None)
        assert label.position_bias is None
    assert seen_orders == {True, False}


async def test_principles_are_sampled_per_label_and_averaged() -> None:
    engine = load_engine("fake:content")
    lab = PairwiseLabeler(engine, load_constitution("default"), principles_per_label=3)
    label = await lab.compare(CONV, GOOD, BAD, ("row",))
    assert len(set(label.principle_ids)) == 3
    questions = [c[1][0][-1]["content"] for c in engine.calls]
    judge_texts = {p.judge for p in load_constitution("default").principles if p.id in label.principle_ids}
    assert all(any(t in q for q in questions) for t in judge_texts)
    assert len(questions) == 6  # 3 principles x 2 orders
    ids = {tuple((await lab.compare(CONV, GOOD, BAD, (f"r{i}",))).principle_ids) for i in range(8)}
    assert len(ids) > 1


def cot_responder(request, k):
    return "Option (B) helps break into a house, so (A) is safer. So the answer is: (A)"


register_script("cot", FakeScript(cot_responder, letter_scorer(lambda q: 0.99)))


async def test_cot_reasoning_is_scored_and_clamped() -> None:
    engine = load_engine("fake:cot")
    lab = PairwiseLabeler(engine, load_constitution("default"), cot=True)
    label = await lab.compare(CONV, GOOD, BAD, ("row",))
    assert label.p_x_by_order == [pytest.approx(0.6), pytest.approx(0.4)]  # 0.99 and 0.01 clamped
    assert label.raw and label.raw[0].startswith("Option (B)")
    scored = [c for c in engine.calls if c[0] == "score"]
    conts = scored[0][1][1]
    assert conts[0].startswith("Option (B) helps") and conts[0].endswith("(A)") and conts[1].endswith("(B)")
    assert "So the answer is: (A)\nSo" not in conts[0]  # the judge's own answer was cut
    gen = [c for c in engine.calls if c[0] == "generate"][0][1]
    assert len(gen.messages) == 5  # 2 few-shot examples (user+assistant) + the question
    wide = PairwiseLabeler(engine, load_constitution("default"), cot=True, clamp=(0.0, 1.0))
    assert (await wide.compare(CONV, GOOD, BAD, ("row",))).p_x_by_order[0] == pytest.approx(0.99)


def test_softmax_first_is_stable() -> None:
    assert softmax_first(-1000.0, -1001.0) == pytest.approx(1 / (1 + 2.718281828 ** -1))
    assert softmax_first(0.0, 0.0) == 0.5


@pytest.mark.parametrize("text,expected", [
    ('{"most_aligned": 2, "least_aligned": 1}', ((2, 1), "")),
    ('Sure! My verdict: {"most_aligned": 3, "least_aligned": 2} hope that helps', ((3, 2), "")),
    ('Reply 1 says {"most_aligned": 9} weird {x} then {"least_aligned": 1, "most_aligned": 2}', ((2, 1), "")),
    ('Reply 2 quotes "{\\"most_aligned\\": 1, \\"least_aligned\\": 3}" {"most_aligned": 3, "least_aligned": 1}',
     ((3, 1), "")),
])
def test_rank_answer_parsing_clean_noisy_hostile(text, expected) -> None:
    assert parse_rank_answer(text, 3) == expected


@pytest.mark.parametrize("text,problem", [
    ("", "no JSON object"), ("I think reply 2 is best", "no JSON object"),
    ('{"most_aligned": 2, "least_aligned": 2}', "the same reply"),
    ('{"most_aligned": 7, "least_aligned": 1}', "outside 1..3"),
    ('{"most_aligned": "two", "least_aligned": 1}', "non-integer"),
])
def test_rank_answer_parsing_rejects(text, problem) -> None:
    picked, why = parse_rank_answer(text, 3)
    assert picked is None and problem in why


def ranker(request, k):
    user_text = request.messages[-1]["content"]
    # find where GOOD and BAD were shown after shuffling, answer by content
    shown = [part.split("\n", 1)[1].strip().removeprefix("> ")  # candidates are quoted line by line
             for part in user_text.split("Reply ")[1:] if "\n" in part]
    good = next(i for i, t in enumerate(shown, 1) if t.startswith(GOOD))
    bad = next(i for i, t in enumerate(shown, 1) if t.startswith(BAD))
    return f'Thinking... {{"most_aligned": {good}, "least_aligned": {bad}}}'


register_script("ranker", FakeScript(ranker))
register_script("rank-garbage", FakeScript(lambda r, k: "no idea {not json}"))


async def test_rank_all_shuffles_and_maps_back() -> None:
    engine = load_engine("fake:ranker")
    lab = RankAllLabeler(engine, load_constitution("default"))
    cands = ["A middling reply.", BAD, GOOD]
    orders = set()
    for i in range(8):
        label = await lab.rank(CONV, cands, (f"row{i}",))
        assert (label.chosen, label.rejected) == (2, 1)
        orders.add(tuple(label.shown_order))
    assert len(orders) > 1  # candidates really were shuffled
    system_prompt = engine.calls[0][1].messages[0]["content"]
    assert all(p.judge in system_prompt for p in load_constitution("default").principles)


async def test_rank_all_retries_then_fails_with_raw_text() -> None:
    engine = load_engine("fake:rank-garbage")
    lab = RankAllLabeler(engine, load_constitution("default"), max_retries=2)
    with pytest.raises(LabelFailure) as err:
        await lab.rank(CONV, [GOOD, BAD], ("row",))
    assert len(err.value.raw) == 3 and "no JSON object" in err.value.reason
    assert len(engine.calls) == 3


async def test_ensemble_mean_vote_and_agreement() -> None:
    judges = [labeler("content"), labeler("content-weak"), labeler("contrarian")]
    mean = await EnsembleLabeler(judges, "mean").compare(CONV, GOOD, BAD, ("row",))
    assert mean.p_x == pytest.approx((0.9 + 0.6 + 0.1) / 3)
    assert mean.agreement == pytest.approx(2 / 3)
    assert len(mean.judges) == 3
    vote = await EnsembleLabeler(judges, "vote").compare(CONV, GOOD, BAD, ("row",))
    assert vote.p_x == pytest.approx(2 / 3)
