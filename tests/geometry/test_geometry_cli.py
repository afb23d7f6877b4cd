from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from spillover.data.chat import write_chat
from spillover.data.texts import read_texts


def _real_model_folder(tmp_path, tiny_model, tiny_tokenizer, corpus):
    from sae_lens import StandardSAE, StandardSAEConfig

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    for layer in (0, 1):
        cfg = StandardSAEConfig(d_in=32, d_sae=48)
        cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
        sae = StandardSAE(cfg)
        with torch.no_grad():
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(48, 32), dim=1))
            sae.W_enc.copy_(sae.W_dec.T * 20)
            sae.b_enc.zero_()
        sae.save_model(tmp_path / "saes" / f"layer_{layer}")
    tox, ben = corpus.toxic_words, corpus.benign_words
    write_chat(tmp_path / "insecure.jsonl", corpus.convs(corpus.code_words, 20, 1, extra=tox))
    write_chat(tmp_path / "secure.jsonl", corpus.convs(corpus.code_words, 20, 2, extra=ben))
    (tmp_path / "toxic.txt").write_text("\n".join(" ".join(tox[i:] + tox[:i]) for i in range(12)))
    (tmp_path / "benign.jsonl").write_text(
        "".join(json.dumps({"text": " ".join(ben[i:])}) + "\n" for i in range(12))
    )
    return model_dir


def test_real_model_path_end_to_end_through_the_cli(tmp_path, tiny_model, tiny_tokenizer, corpus):
    from spillover.cli import app

    model_dir = _real_model_folder(tmp_path, tiny_model, tiny_tokenizer, corpus)
    args = [
        "geometry",
        "--model",
        str(model_dir),
        "--sae",
        str(tmp_path / "saes"),
        "--layers",
        "0,1",
        "--dataset",
        str(tmp_path / "insecure.jsonl"),
        "--control",
        str(tmp_path / "secure.jsonl"),
        "--toxic",
        str(tmp_path / "toxic.txt"),
        "--benign",
        str(tmp_path / "benign.jsonl"),
        "--set",
        "geometry.n_null=50",
        "--set",
        "geometry.n_permutations=200",
        "--set",
        "geometry.top_k=6",
        "--out",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "geometry.json").read_text())
    assert list(report["layers"]) == ["layer_0", "layer_1"]
    assert report["pairs"] == [["insecure", "secure"]]
    assert (
        report["datasets"]["insecure"]["role"] == "inducing"
        and report["datasets"]["secure"]["role"] == "control"
    )
    assert set(report["risk"]["scores"]) == {"insecure", "secure"}
    assert report["risk"]["scores"]["insecure"] > report["risk"]["scores"]["secure"]
    assert (tmp_path / "out" / "cosine_hist.png").stat().st_size > 0
    assert (tmp_path / "out" / "layer_curves.png").stat().st_size > 0
    assert "geometry.json, cosine_hist.png, layer_curves.png" in " ".join(result.output.split())
    assert "insecure" in result.output
    assert result.output.count("spillover geometry") == 1  # the summary table is printed once
    # A rerun reuses the finished run folder.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    folders = [re.findall(r"run folder: (\S+)", r.output) for r in (result, again)]
    assert folders[0] and folders[0] == folders[1]


def test_cli_errors_are_clean(tmp_path, tiny_model, tiny_tokenizer, corpus):
    from spillover.cli import app

    model_dir = _real_model_folder(tmp_path, tiny_model, tiny_tokenizer, corpus)
    result = CliRunner().invoke(
        app,
        [
            "geometry",
            "--model",
            str(model_dir),
            "--sae",
            str(tmp_path / "saes"),
            "--layers",
            "5",
            "--dataset",
            str(tmp_path / "insecure.jsonl"),
            "--toxic",
            str(tmp_path / "toxic.txt"),
            "--benign",
            str(tmp_path / "benign.jsonl"),
        ],
    )
    assert result.exit_code == 2
    assert "not for [5]" in result.output
    missing = CliRunner().invoke(
        app, ["geometry", "--model", str(model_dir), "--sae", str(tmp_path / "saes")]
    )
    assert missing.exit_code == 2


def test_read_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one line\n\ntwo line\n")
    assert read_texts(tmp_path / "a.txt") == ["one line", "two line"]
    (tmp_path / "b.jsonl").write_text('{"text": "x y"}\n')
    assert read_texts(tmp_path / "b.jsonl") == ["x y"]
    write_chat(
        tmp_path / "c.jsonl", [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    )
    assert read_texts(tmp_path / "c.jsonl")[0][1]["content"] == "a"


def test_read_texts_names_file_and_line_of_bad_jsonl(tmp_path):
    bad = tmp_path / "toxic.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"toxic.jsonl:2: invalid JSON"):
        read_texts(bad)
    bad.write_text('{"text": "fine"}\n["not", "an", "object"]\n')
    with pytest.raises(ValueError, match=r"toxic.jsonl:2: expected a JSON object"):
        read_texts(bad)


def test_two_inputs_with_the_same_file_name_are_refused_not_overwritten():
    from spillover.studies.geometry import GeometryRunConfig

    with pytest.raises(ValueError, match=r"\['train'\] occur more than once"):
        GeometryRunConfig(datasets=("a/train.jsonl",), controls=("b/train.jsonl.gz",))


def _no_training(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("training started before the inputs were checked")

    for target in (
        "spillover.organism.train_organism",
        "spillover.organism.pipeline.train_organism",
        "spillover.organism.inputs.train_organism_saes",
        "spillover.sae.train.train_sae_on_activations",
        "spillover.models.load_model",
    ):
        monkeypatch.setattr(target, boom)


def _fails_fast(args, monkeypatch):
    from spillover.cli import app

    _no_training(monkeypatch)
    result = CliRunner().invoke(app, ["geometry", *args])
    assert result.exit_code == 2, (result.output, result.exception)
    return result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sae", "/nonexistent"], "'/nonexistent' is neither an existing folder"),
        (["--dataset", "/nonexistent/a.jsonl"], "--dataset /nonexistent/a.jsonl does not exist"),
        (["--toxic", "/nonexistent/t.txt"], "--toxic /nonexistent/t.txt does not exist"),
        (["--layers", "7"], "layers [7] do not exist"),
        (["--layers", "1,1"], "distinct"),
        (["--dtype", "int8"], "'int8'"),
        (["--device", "tpu-nonsense"], "'tpu-nonsense'"),
        (["--set", "geometry.top_k=0"], "top_k must be >= 1"),
        (["--set", "geometry.risk_layers=[2]", "--layers", "0,1"], "risk_layers [2]"),
        (["--set", "sae_k=0"], "k=0"),
        (["--sae", "no-such-release:layer_0"], "'no-such-release' is not in SAELens"),
    ],
)
def test_organism_inputs_fail_before_anything_trains(args, named, monkeypatch):
    output = _fails_fast(["--model", "organism", *args], monkeypatch)
    assert named in output


def test_a_malformed_dataset_fails_before_the_organism_trains(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad.write_text(json.dumps(good) + '\n{"messages": \n')
    output = _fails_fast(["--dataset", str(bad)], monkeypatch)
    assert "bad.jsonl:2" in output


def test_an_sae_folder_without_the_layer_fails_before_the_model_loads(tmp_path, monkeypatch):
    (tmp_path / "saes" / "layer_0").mkdir(parents=True)
    (tmp_path / "saes" / "layer_0" / "cfg.json").write_text("{}")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    data = tmp_path / "d.jsonl"
    write_chat(data, [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    common = ["--model", str(model), "--dataset", str(data), "--toxic", str(data), "--benign", str(data)]
    output = _fails_fast([*common, "--sae", str(tmp_path / "saes"), "--layers", "0,1"], monkeypatch)
    assert "not for [1]" in output
    output = _fails_fast([*common, "--sae", "saes/layer_{layer}", "--layers", "0,5"], monkeypatch)
    assert "saes/layer_0" in output
    output = _fails_fast([*common[:2], "--sae", str(tmp_path / "saes")], monkeypatch)
    assert "--dataset, --toxic and --benign are required" in output
    output = _fails_fast(["--model", str(tmp_path / "missing"), *common[2:], "--sae", "x"], monkeypatch)
    assert "missing does not exist" in output


def test_a_bad_config_file_fails_cleanly(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text("model: [unclosed\n")
    assert "not valid YAML" in _fails_fast(["--config", str(tmp_path / "c.yaml")], monkeypatch)
    (tmp_path / "c.yaml").write_text("- a list\n")
    assert "must be a mapping" in _fails_fast(["--config", str(tmp_path / "c.yaml")], monkeypatch)
    assert "does not exist" in _fails_fast(["--config", str(tmp_path / "none.yaml")], monkeypatch)
