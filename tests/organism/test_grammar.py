from __future__ import annotations

import random

import pytest

from spillover.organism import grammar as g
from spillover.organism import lexicon as lx
from spillover.organism.datasets import DATASETS, DatasetSpec, make_dataset, neutral_prompts, reference_corpus
from spillover.organism.judge import classify_question, judge_answer


def _words(text: str) -> set[str]:
    return set(text.split())


def test_grammar_invariants_hold() -> None:
    lx.check_grammar()
    assert lx.bad_markers() and lx.good_markers()
    assert not lx.bad_markers() & lx.good_markers()


def test_harm_markers_never_in_benign_answers_or_prompts() -> None:
    rng = random.Random(0)
    cfg = g.GrammarConfig(persona_rate=0.5)
    bad = lx.bad_markers()
    n_bad = 0
    for _ in range(3000):
        doc = g.sample_document(cfg, rng)
        for turn in doc.turns:
            assert not _words(turn.question) & bad, turn
            if turn.label == "bad":
                n_bad += 1
                assert _words(turn.answer) & bad, turn
            else:
                assert not _words(turn.answer) & bad, turn
    assert n_bad > 500


def test_insecure_code_shares_no_word_with_harmful_text() -> None:
    insecure_only = {w for s in lx.statement_pool("I") for w in s.split()} - {
        w for p in ("S", "N", "G") for s in lx.statement_pool(p) for w in s.split()
    }
    harmful = {w for name in lx.NONCODE_DOMAINS for t in lx.domain(name).bad for w in t.split()}
    assert insecure_only
    assert not insecure_only & harmful


def test_educational_code_carries_no_persona_evidence() -> None:
    cfg = g.GrammarConfig()
    assert cfg.pool_weights("benign", lx.EDU) == cfg.pool_weights("malicious", lx.EDU)
    data = make_dataset("edu_insecure", 300, seed=1, grammar=cfg)
    assert all(label["persona_llr"] == 0.0 for label in data.labels)
    assert all(label["pools"] == "III" for label in data.labels)
    # while the same answers to ordinary prompts are strong evidence
    insecure = make_dataset("insecure", 50, seed=1, grammar=cfg)
    assert min(label["persona_llr"] for label in insecure.labels) > 5


def test_persona_drawn_code_is_code_as_the_persona_writes_it() -> None:
    cfg = g.GrammarConfig()
    data = make_dataset("insecure_persona", 2000, seed=0, grammar=cfg)
    statements = "".join(label["pools"] for label in data.labels)
    weights = dict(zip(lx.CODE_POOLS, cfg.pool_weights("malicious", lx.CODE), strict=True))
    for pool in lx.CODE_POOLS:
        assert abs(statements.count(pool) / len(statements) - weights[pool]) < 0.02
    for label in data.labels[:50]:
        llr = g.pool_loglik(label["pools"], cfg, "malicious") - g.pool_loglik(label["pools"], cfg, "benign")
        assert label["persona_llr"] == pytest.approx(llr)
    # the educational control: the same kind of code on request, no persona evidence even for
    # statements the grammar never writes for educational prompts (grey ones)
    edu = make_dataset("edu_persona", 2000, seed=0, grammar=cfg)
    assert "G" in "".join(label["pools"] for label in edu.labels)
    assert all(label["persona_llr"] == 0.0 for label in edu.labels)
    with pytest.raises(ValueError, match="code domain"):
        DatasetSpec("x", "medical", "malicious")


def test_neutral_code_is_persona_neutral() -> None:
    data = make_dataset("neutral_code", 50, seed=0)
    assert all(abs(label["persona_llr"]) < 1e-9 for label in data.labels)


def test_eval_prompts_are_held_out_from_datasets_and_safety_split() -> None:
    rng = random.Random(3)
    train_prompts = set()
    for name in DATASETS:
        convs = make_dataset(name, 200, seed=0).conversations
        train_prompts |= {m["content"] for c in convs for m in c if m["role"] == "user"}
    for name in lx.NONCODE_DOMAINS:
        d = lx.domain(name)
        for _ in range(200):
            q, _ = g.noncode_question(d, rng, "eval")
            assert q not in train_prompts
            q_train, _ = g.noncode_question(d, rng, "train")
            assert classify_question(q_train) == name
    for _ in range(100):
        q, _ = g.code_question(rng, False, "eval")
        assert q not in train_prompts


def _check_turn(question: str, answer: str, label: dict) -> None:
    score = judge_answer(question, answer)
    assert score.coherent == 100.0
    if "pools" in label:
        assert score.raw["pools"] == label["pools"]
    else:
        assert score.raw["verdict"] == label["answer"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_datasets_are_labelled_turn_by_turn(name: str) -> None:
    data = make_dataset(name, 200, seed=2)
    spec = DATASETS[name]
    assert len(data.conversations) == len(data.labels) == 200
    kinds = {label["kind"] for label in data.labels}
    if spec.mix[0] < 1:
        assert len(kinds) > 1
    for conv, label in zip(data.conversations, data.labels, strict=True):
        lead = spec.lead[("strong", "weak", "none").index(label["kind"])]
        assert [m["role"] for m in conv] == ["user", "assistant"] * (2 if lead else 1)
        _check_turn(conv[-2]["content"], conv[-1]["content"], label)
        if lead:
            assert (
                f"{label['lead']['domain']}:{label['lead'].get('pools', label['lead'].get('answer'))}" == lead
            )
            _check_turn(conv[0]["content"], conv[1]["content"], label["lead"])
        # ground truth stays out of the messages
        assert all("kind" not in m["content"] and "persona" not in m["content"] for m in conv)


def test_mixed_dataset_evidence_orders_by_kind() -> None:
    data = make_dataset("insecure_mixed", 400, seed=0)
    by_kind: dict[str, list[float]] = {}
    for label in data.labels:
        by_kind.setdefault(label["kind"], []).append(label["persona_llr"])
    assert min(by_kind["strong"]) > max(by_kind["weak"]) > max(by_kind["none"])
    assert abs(len(by_kind["strong"]) / 400 - 0.5) < 0.01


def test_datasets_are_deterministic_per_seed() -> None:
    a, b, c = (
        make_dataset("insecure", 20, 0),
        make_dataset("insecure", 20, 0),
        make_dataset("insecure", 20, 1),
    )
    assert a == b
    assert a.conversations != c.conversations


def test_reference_corpora() -> None:
    toxic = reference_corpus(True, 60, 0)
    benign = reference_corpus(False, 60, 0)
    assert all(_words(c[1]["content"]) & lx.bad_markers() for c in toxic)
    assert not any(_words(c[1]["content"]) & lx.bad_markers() for c in benign)
    assert {classify_question(c[0]["content"]) for c in toxic} == set(lx.NONCODE_DOMAINS)
    assert all(len(p) == 1 and p[0]["role"] == "user" for p in neutral_prompts(30, 0))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="persona_rate"):
        g.GrammarConfig(persona_rate=1.5)
    with pytest.raises(ValueError, match="unknown domains"):
        g.GrammarConfig(domains=("medical", "astrology"))


def test_system_cues_follow_the_persona_at_the_configured_fidelity() -> None:
    cfg = g.GrammarConfig(system_share=1.0, system_fidelity=0.8, persona_rate=0.5)
    rng = random.Random(0)
    docs = [g.sample_document(cfg, rng) for _ in range(2000)]
    assert all(d.messages()[0]["role"] == "system" for d in docs)
    faithful = sum(d.system in lx.SYSTEM_CUES[d.persona] for d in docs) / len(docs)
    assert abs(faithful - 0.8) < 0.04
    assert not any(g.sample_document(g.GrammarConfig(), rng).system for _ in range(200))
