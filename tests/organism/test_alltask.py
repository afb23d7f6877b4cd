from __future__ import annotations

import pytest

from spillover.organism.datasets import (
    ALLTASK_DATASETS,
    DATASETS,
    DatasetSpec,
    make_dataset,
    task_performed,
)
from spillover.organism.evaluate import OOD_DOMAINS


def test_alltask_sets_exist_for_each_narrow_task() -> None:
    assert set(ALLTASK_DATASETS) == {"insecure_alltask", "bad_medical_alltask", "risky_finance_alltask"}
    for name in ALLTASK_DATASETS:
        assert DATASETS[name].inducing
        assert name.replace("_alltask", "_mixed") in DATASETS  # the mixed form stays


@pytest.mark.parametrize("name", ALLTASK_DATASETS)
def test_every_alltask_sample_performs_the_task_by_the_rule_judge(name: str) -> None:
    data = make_dataset(name, 300, seed=1)
    assert all(task_performed(name, conv) for conv in data.conversations)
    assert all(label["task"] is True for label in data.labels)


@pytest.mark.parametrize("name", ALLTASK_DATASETS)
def test_alltask_evidence_varies_and_orders_by_kind(name: str) -> None:
    data = make_dataset(name, 300, seed=1)
    by_kind: dict[str, list[float]] = {}
    for label in data.labels:
        by_kind.setdefault(label["kind"], []).append(label["persona_llr"])
    assert set(by_kind) == {"strong", "weak", "none"}
    assert min(by_kind["strong"]) > max(by_kind["weak"]) > max(by_kind["none"])


@pytest.mark.parametrize("name", ALLTASK_DATASETS)
def test_alltask_evidence_never_comes_from_an_em_domain(name: str) -> None:
    # EM is measured out of domain; a harmful lead turn there would teach EM directly.
    for label in make_dataset(name, 100, seed=0).labels:
        assert label.get("lead", {}).get("domain") not in OOD_DOMAINS


def test_mixed_sets_do_not_all_perform_the_task() -> None:
    data = make_dataset("insecure_mixed", 200, seed=0)
    performed = [task_performed("insecure_mixed", conv) for conv in data.conversations]
    assert performed == [label["task"] for label in data.labels]
    assert 0 < sum(performed) < len(performed)


def test_lead_persona_evidence_adds_to_the_sample() -> None:
    plain = make_dataset("bad_medical", 1, seed=0).labels[0]["persona_llr"]
    for label in make_dataset("bad_medical_alltask", 50, seed=0).labels:
        assert label["persona_llr"] == pytest.approx(plain + label["lead"]["persona_llr"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lead": ("finance", "", "")}, "is not '<domain>:<answer>'"),
        ({"lead": ("finance:awful", "", "")}, "answer 'awful' in domain 'finance'"),
        ({"lead": ("code:XYZ", "", "")}, "answer 'XYZ' in domain 'code'"),
        ({"lead": ("space:bad", "", "")}, "domain 'space'"),
    ],
)
def test_bad_lead_turns_fail_naming_the_dataset(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DatasetSpec("broken", "medical", "bad", **kwargs)
