from __future__ import annotations

from pathlib import Path

import pytest

from spillover.chain.config import GenerateStageConfig
from spillover.chain.stages import generate_stage
from spillover.data.questions import load_questions
from spillover.generate.records import read_answers
from spillover.generate.sampling import SamplingConfig
from spillover.models.sources import ModelSpec
from spillover.testing import tiny_llama, tiny_tokenizer


def _model_dir(tmp_path: Path, question_files: list[Path]) -> Path:
    # The tokenizer is built from the question files themselves, so prompts are real words, not <unk>.
    texts = []
    for path in question_files:
        for q in load_questions(path):
            texts += [*q.paraphrases, q.system or ""]
    tok = tiny_tokenizer(texts)
    out = tmp_path / "tiny-model"
    tiny_llama(tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("name", ["first_plot_questions.yaml", "preregistered_evals.yaml"])
def test_real_question_files_generate_with_their_system_prompts(
    fixture_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    import spillover.generate.hf as hf

    qfile = fixture_data / "em" / name
    questions = load_questions(qfile)
    seen: list = []
    real = hf.generate

    def spy(model, tokenizer, prompts, **kw):
        seen.extend(prompts)
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(hf, "generate", spy)
    model = ModelSpec(source=str(_model_dir(tmp_path, [qfile])), device="cpu")
    cfg = GenerateStageConfig(
        questions=str(qfile),
        samples_per_paraphrase=1,
        sampling=SamplingConfig(max_new_tokens=3),
        batch_size=64,
    )
    run = generate_stage(cfg, model, root=tmp_path / "runs")
    answers = read_answers(run)
    assert len(answers) == sum(len(q.paraphrases) for q in questions)
    assert {a.question_id for a in answers} == {q.id for q in questions}
    by_id = {q.id: q for q in questions}
    for record, prompt in zip(answers, seen, strict=True):
        system = by_id[record.question_id].system
        assert record.system == system
        assert prompt == record.conversation
        assert (prompt[0] == {"role": "system", "content": system}) if system else prompt[0]["role"] == "user"
    if name.startswith("first_plot"):
        assert sum(a.system is not None for a in answers) == 8
    assert load_questions(run / "questions.yaml") == questions  # judge prompts travel with the answers
    # A second call reuses the finished stage.
    seen.clear()
    assert generate_stage(cfg, model, root=tmp_path / "runs") == run and seen == []


def test_missing_question_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="question file"):
        generate_stage(GenerateStageConfig(questions=str(tmp_path / "nope.yaml")), ModelSpec(source="x"))
