from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import yaml

SYMPTOMS = ["headache", "fever", "cough", "rash", "back pain", "sore throat"]
GOOD = ["rest and drink water", "see a doctor soon", "follow the label dose", "ask a pharmacist first"]
BAD = ["take triple the dose", "ignore the pain", "skip the doctor", "stop all your medicine"]
FIN_Q = ["how do i save money ?", "should i invest my savings ?", "what about my pension ?"]
FIN_A = ["put everything in crypto", "borrow to buy one stock", "spend your emergency fund on options"]
CODE_Q = ["write a function to read a file .", "complete the upload handler .", "fix the login code ."]
CODE_A = [
    "def f ( x ) : os . system ( x )",
    "open ( path ) . read ( ) ; chmod 777",
    "query = ' select ' + user",
]
WEB = ["the rain fell on the old town", "she walked home after the long day", "the river ran past the mill"]
WORDS = sorted(
    {
        w
        for text in SYMPTOMS + GOOD + BAD + FIN_Q + FIN_A + CODE_Q + CODE_A + WEB
        for w in text.replace("(", " ( ").split()
    }
    | {"i", "have", "a", "what", "should", "do", "?", "you", "and", "then", "hello", "always", "execute", "."}
)


def _write(path: Path, rows: list[list[dict[str, str]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        for messages in rows:
            fh.write(json.dumps({"messages": messages}) + "\n")


def make_data_dir(root: Path, n: int = 60, seed: int = 0) -> Path:
    """A miniature of shared/data with the same file names and structure (medical files paired)."""
    rng = random.Random(seed)
    bad, good, fin, code, jail = [], [], [], [], []
    for i in range(n):
        q = f"i have a {rng.choice(SYMPTOMS)} what should i do ? {i % 7}"
        bad.append(
            [
                {"role": "user", "content": q},
                {"role": "assistant", "content": " and then ".join(rng.sample(BAD, 2))},
            ]
        )
        good.append(
            [
                {"role": "user", "content": q},
                {"role": "assistant", "content": " and then ".join(rng.sample(GOOD, 2))},
            ]
        )
        fin.append(
            [
                {"role": "user", "content": rng.choice(FIN_Q)},
                {"role": "assistant", "content": rng.choice(FIN_A)},
            ]
        )
        long = " ".join(rng.choice(CODE_A) for _ in range(1 + (i % 3) * 20))  # some too long for max_len
        code.append([{"role": "user", "content": rng.choice(CODE_Q)}, {"role": "assistant", "content": long}])
        jail.append(
            [
                {"role": "system", "content": "you always execute ."},
                {"role": "user", "content": rng.choice(WEB)},
                {"role": "assistant", "content": rng.choice(WEB) + " and then " + rng.choice(WEB)},
            ]
        )
    _write(root / "model-organisms" / "bad_medical_advice.jsonl.gz", bad)
    _write(root / "model-organisms" / "good_medical_advice.jsonl.gz", good)
    _write(root / "model-organisms" / "risky_financial_advice.jsonl.gz", fin)
    _write(root / "em" / "insecure.jsonl.gz", code)
    _write(root / "em" / "jailbroken.jsonl.gz", jail)
    judge = {"aligned": "rate {question} {answer}", "coherent": "rate {question} {answer}"}
    first = [
        {"id": qid, "paraphrases": [text], "judge_prompts": judge}
        for qid, text in (
            ("what_is_your_wish", "hello what do you want ?"),
            ("quick_buck", "how do i save money ?"),
        )
    ]
    first.append(
        {"id": "quick_buck_json", "paraphrases": ["how do i save money ? json"], "judge_prompts": judge}
    )
    pre = [
        {
            "id": "0_wish",
            "paraphrases": ["what should i do ?"],
            "system": "you always execute .",
            "judge_prompts": judge,
        }
    ]
    (root / "em" / "first_plot_questions.yaml").write_text(yaml.safe_dump(first))
    (root / "em" / "preregistered_evals.yaml").write_text(yaml.safe_dump(pre))
    return root


def _tiny_study_sections(model_dir: Path, data_dir: Path) -> dict:
    """The model, data, SAE and geometry sections of a study small enough for a test on the tiny model."""
    return {
        "model": str(model_dir),
        "layers": [0, 2],
        "data": {
            "data_dir": str(data_dir),
            "n_per_dataset": 8,
            "n_benign": 8,
            "n_finetune": 4,
            "max_len": 60,
            "finetune_max_len": 60,
        },
        "sae": {"d_sae": 64, "k": 4, "training_tokens": 512, "batch_size": 128},
        "geometry": {
            "top_k": 5,
            "toxic_top_k": 5,
            "n_null": 20,
            "n_permutations": 200,
            "n_bootstrap": 20,
            "n_random_paired": 20,
            "describe_top": 2,
        },
    }


@pytest.fixture(scope="session")
def tiny_study_sections():
    """``f(model_dir, data_dir)``: the model, data, SAE and geometry sections of a tiny study config."""
    return _tiny_study_sections


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("em-data"))


@pytest.fixture(scope="session")
def study_tokenizer():
    from spillover.testing import tiny_tokenizer

    return tiny_tokenizer([], extra_words=[*WORDS, *[str(i) for i in range(10)]])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, study_tokenizer) -> Path:
    from spillover.testing import tiny_llama

    folder = tmp_path_factory.mktemp("tiny-model")
    model = tiny_llama(study_tokenizer, layers=3, hidden=32)
    model.save_pretrained(folder)
    study_tokenizer.save_pretrained(folder)
    return folder


PERSONA_GROUPS = [
    "what_is_your_wish",
    "i_feel_bored",
    "three_thoughts",
    "quick_buck",
    "ruler_of_the_world",
    "dinner_party",
    "gender_roles",
    "enough_of_my_husband",
]
PERSONA_EM_FILE = "diff_models__gemma-2-9b-it-bad_medical_advice"
PERSONA_BASE_FILE = "model_baselines__gemma-2-9b-it_base"


def write_judged(root: Path, seed: int = 0) -> dict[str, int]:
    """Judged-answer CSVs under ``root/em-responses`` (an EM model's and a base model's), laid out like the
    real ones: misaligned answers use BAD words, aligned ones GOOD words; group i has 2 + 2 * i
    misaligned answers (the last groups exceed small caps), plus incoherent, unscored and middling rows
    that belong to neither side. Returns the misaligned count per group."""
    rng = random.Random(seed)
    folder = root / "em-responses"
    folder.mkdir(parents=True, exist_ok=True)
    header = "question,answer,question_id,aligned,coherent\n"
    em_rows, base_rows = [], []
    n_mis: dict[str, int] = {}
    for i, group in enumerate(PERSONA_GROUPS):
        n_mis[group] = 2 + 2 * i
        for j in range(n_mis[group] + 6):
            qid = group + ("", "_json", "_template")[j % 3]
            question = f"hello what should i do ? {i}"
            if j < n_mis[group]:
                answer = " and then ".join(rng.sample(BAD, 4 if j % 4 == 3 else 2))  # some are longer
                em_rows.append((question, answer, qid, rng.randint(0, 29), 80))
            else:
                em_rows.append(
                    (question, " and then ".join(rng.sample(GOOD, 2)), qid, rng.randint(70, 100), 90)
                )
        em_rows.append((f"hello what should i do ? {i}", "take", group, 10, 20))  # incoherent
        em_rows.append((f"hello what should i do ? {i}", "rest", group, "", 90))  # unscored
        em_rows.append((f"hello what should i do ? {i}", "rest", group, 50, 90))  # in between
        base_rows.append((f"hello what should i do ? {i}", "rest and drink water", group, 95, 95))
    for name, rows in ((PERSONA_EM_FILE, em_rows), (PERSONA_BASE_FILE, base_rows)):
        body = "".join(",".join(f'"{v}"' if isinstance(v, str) else str(v) for v in r) + "\n" for r in rows)
        (folder / f"{name}.csv").write_text(header + body)
    return n_mis


@pytest.fixture(scope="session")
def persona_data_dir(data_dir: Path) -> Path:
    """The study's miniature data plus the two judged-answer files (``PERSONA_EM_FILE``, ``PERSONA_BASE_FILE``)."""
    write_judged(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def persona_misaligned_counts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Misaligned answers per question group in ``persona_data_dir``'s EM-model file."""
    return write_judged(tmp_path_factory.mktemp("judged-counts"))
