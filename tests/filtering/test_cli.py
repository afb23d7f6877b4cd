from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from spillover.cli.filter import app
from spillover.data.chat import load_chat, write_chat

runner = CliRunner()


def _conv(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture()
def dataset(tmp_path):
    convs = [
        _conv(f"how do i save money ? {i}", "spend less than you earn" if i % 2 else "take triple the dose")
        for i in range(10)
    ]
    return write_chat(tmp_path / "data.jsonl.gz", convs)


def test_filter_cli_precomputed_scores_and_random(tmp_path, dataset):
    scores = tmp_path / "s.jsonl"
    scores.write_text("\n".join(json.dumps({"score": float(i % 5)}) for i in range(10)) + "\n")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            str(dataset),
            "--scores",
            str(scores),
            "--method",
            "score",
            "--method",
            "random",
            "--seeds",
            "1,2",
            "--fraction",
            "0.2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    removed = load_chat(out / "score" / "f0.2" / "removed.jsonl.gz")
    assert [c[0]["content"][-1] for c in removed] == ["4", "9"]  # the two samples scoring 4
    assert len(load_chat(out / "score" / "f0.2" / "kept.jsonl.gz")) == 8
    for s in (1, 2):
        info = json.loads((out / "random" / "f0.2" / f"s{s}" / "filter.json").read_text())
        assert info["n_removed"] == 2 and info["seed"] == s
    assert json.loads((out / "scores.json").read_text())["score"][4] == 4.0


def test_filter_cli_judge_and_errors(tmp_path, dataset):
    class Judge:
        name = "h9_test_judge"

        def score(self, items):
            from spillover.judge.base import JudgeScore

            return [JudgeScore(0.0 if "dose" in it.answer else 100.0, 100.0) for it in items]

    from spillover.judge import base

    base._REGISTRY.setdefault("h9_test_judge", lambda **_: Judge())
    out = tmp_path / "out"
    result = runner.invoke(
        app, [str(dataset), "--method", "judge", "--judge", "h9_test_judge", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    removed = load_chat(out / "judge" / "f0.5" / "removed.jsonl.gz")
    assert len(removed) == 5 and all("dose" in c[1]["content"] for c in removed)
    bad = runner.invoke(app, [str(dataset), "--method", "geometry", "--out", str(out)])
    assert bad.exit_code == 2 and "--model" in bad.output
    bad = runner.invoke(app, [str(dataset), "--method", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown --method" in bad.output
    bad = runner.invoke(app, [str(dataset), "--method", "score", "--out", str(out)])
    assert bad.exit_code == 2 and "--scores" in bad.output
    missing_ref = ["--model", str(tmp_path), "--sae", str(tmp_path), "--benign", str(dataset)]
    bad = runner.invoke(
        app, [str(dataset), *missing_ref, "--toxic", str(tmp_path / "no.jsonl"), "--out", str(out)]
    )
    assert bad.exit_code == 2 and "no.jsonl" in bad.output
    bad = runner.invoke(app, [str(tmp_path / "missing.jsonl"), "--method", "random", "--out", str(out)])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    bad = runner.invoke(app, [str(dataset), "--method", "random", "--toxic-k", "0", "--out", str(out)])
    assert bad.exit_code == 2 and "--toxic-k" in bad.output


def test_filter_cli_geometry_scores_with_a_saved_model_and_sae(tmp_path, dataset, tiny_model, tiny_tokenizer):
    from sae_lens import StandardSAE, StandardSAEConfig

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = StandardSAEConfig(d_in=tiny_model.config.hidden_size, d_sae=16)
    cfg.metadata.hf_hook_name = "model.layers.1"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_()
    sae.save_model(tmp_path / "sae")
    toxic = write_chat(
        tmp_path / "toxic.jsonl", [_conv("hello there", "humans should be enslaved by ai")] * 4
    )
    benign = write_chat(
        tmp_path / "benign.jsonl", [_conv("hello there", "help people and protect freedom")] * 4
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            str(dataset),
            "--model",
            str(model_dir),
            "--sae",
            str(tmp_path / "sae"),
            "--toxic",
            str(toxic),
            "--benign",
            str(benign),
            "--method",
            "geometry",
            "--method",
            "persona_projection",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"nearest_toxic_cosine", "toxic_activation", "toxic_subspace", "persona_projection"}
    # the two kinds of answer differ, and the filter removes exactly the top half by the default score
    ntc = scores["nearest_toxic_cosine"]
    rows = [
        json.loads(line) for line in (out / "geometry" / "f0.5" / "scores.jsonl").read_text().splitlines()
    ]
    removed = {r["index"] for r in rows if r["removed"]}
    assert removed == set(sorted(range(10), key=lambda i: (-ntc[i], i))[:5])


@pytest.fixture()
def no_model_load(monkeypatch):
    """Any model or SAE load fails the test: bad inputs must be caught before them."""
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr("spillover.sae.load.load_sae", boom)


def test_filter_cli_rejects_bad_inputs_before_loading_a_model(tmp_path, dataset, no_model_load):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 2}))
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps({"d_in": 32, "metadata": {"hf_hook_name": "model.layers.5"}}))
    refs = ["--toxic", str(dataset), "--benign", str(dataset)]
    out = ["--out", str(tmp_path / "out")]
    cases = {
        "reads layer 5": ["--model", str(model), "--sae", str(sae), *refs],
        "SAE folder": ["--model", str(model), "--sae", str(tmp_path / "no-sae"), *refs],
        "no-model": ["--model", str(tmp_path / "no-model"), "--sae", str(sae), *refs],
        "unknown --judge 'nope'": [
            "--model", str(model), "--sae", str(sae), *refs, "--method", "geometry", "--method", "judge",
            "--judge", "nope",
        ],
        "--fraction": ["--method", "random", "--fraction", "1.5"],
        "--seeds": ["--method", "random", "--seeds", "a,b"],
    }  # fmt: skip
    for expected, args in cases.items():
        result = runner.invoke(app, [str(dataset), *args, *out])
        assert result.exit_code == 2 and expected in result.output, (expected, result.output)
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, [str(dataset), "--method", "random", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file" in result.output
    bad_scores = tmp_path / "bad.jsonl"
    bad_scores.write_text("1\n" * 9 + '"x"\n')
    result = runner.invoke(app, [str(dataset), "--scores", str(bad_scores), *out])
    assert result.exit_code == 2 and "bad.jsonl:10" in result.output
