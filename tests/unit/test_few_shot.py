"""Few-shot prompts: examples read and checked, k chosen per text (never the text itself), and
the demonstrations placed as chat turns, in {examples}, or as completed prompts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from molal_ray.config import AnnotatorConfig, PoolConfig, TaskConfig
from molal_ray.config.task import FewShotExample
from molal_ray.engines import build_engine
from molal_ray.engines.few_shot import ExampleSelector, with_examples
from molal_ray.engines.prompting import PromptBuilder, PromptMessages
from molal_ray.exceptions import ConfigError
from tests.conftest import ENGINE_LABELS, TREC_LABELS, reference_label_probs


def _task(tmp_path, rows: str, **few_shot) -> TaskConfig:
    f = tmp_path / "examples.csv"
    f.write_text(rows)
    return TaskConfig(labels=TREC_LABELS, few_shot={"examples": str(f), **few_shot})


def test_sample_id_examples_take_their_texts_from_the_pool(tmp_path, trec_dir):
    pool = PoolConfig(path=str(trec_dir / "pool.parquet"))
    task = with_examples(_task(tmp_path, "sample_id,label\ntrec-00000,Entity\ntrec-00001,description\n", k=2), pool)
    items = task.few_shot.items
    assert [(e.sample_id, e.label) for e in items] == [("trec-00000", "entity"), ("trec-00001", "description")]
    assert items[0].text == "What were the trials called which followed World War II ?"


@pytest.mark.parametrize(
    "rows, k, match",
    [
        (
            "sample_id,label\ntrec-00000,entity\ntrec-00001,colour\n",
            1,
            r"1 labels not in the label set \(first at line 3: 'colour'\)",
        ),
        (
            "sample_id,label\ntrec-00000,entity\nnot-an-id,human\n",
            1,
            r"1 of 2 ids are not in the pool .* \(first: 'not-an-id'\)",
        ),
        ("sample_id,label\ntrec-00000,entity\n", 2, r"few_shot.k: got 2; .* holds 1 examples"),
        ("sample_id,label\n", 1, "holds no examples"),
        ("id;label\nx;y\n", 1, "expected sample_id,label or text,label"),
    ],
)
def test_bad_example_files_are_clear_errors(tmp_path, trec_dir, rows, k, match):
    with pytest.raises(ConfigError, match=match):
        with_examples(_task(tmp_path, rows, k=k), PoolConfig(path=str(trec_dir / "pool.parquet")))


EXAMPLES = [
    FewShotExample(sample_id=f"e{i}", text=t, label=lab)
    for i, (t, lab) in enumerate(
        [
            ("What is the capital of Italy ?", "location"),
            ("How many feet are in a yard ?", "numeric"),
            ("Who painted the Mona Lisa ?", "human"),
            ("What does CPU stand for ?", "abbreviation"),
            ("In which city is the Eiffel Tower ?", "location"),
            ("How tall is Mount Everest ?", "numeric"),
        ]
    )
]


def _selector(select: str, k: int = 2, seed: int = 0) -> ExampleSelector:
    task = TaskConfig(
        labels=TREC_LABELS,
        few_shot={
            "examples": "unused.csv",
            "k": k,
            "select": select,
            "seed": seed,
            "items": [e.model_dump() for e in EXAMPLES],
        },
    )
    return ExampleSelector(task.few_shot, task.labels)


def test_nearest_picks_similar_examples_most_similar_last():
    sel = _selector("nearest")
    (demos,) = sel.select(["q"], ["What is the capital city of Spain ?"])
    assert {d.label for d in demos} == {"location"}
    assert demos[-1].text == "What is the capital of Italy ?"


def test_a_text_is_never_its_own_demonstration():
    sel = _selector("nearest", k=5)
    same_id, same_text = sel.select(["e0", "other"], ["unrelated words", "  what is the capital of ITALY ?"])
    assert "e0" not in [d.sample_id for d in same_id] and len(same_id) == 5
    assert "e0" not in [d.sample_id for d in same_text]  # the same text under another id
    for select in ("random", "fixed"):
        (demos,) = _selector(select, k=5).select(["e3"], ["What does CPU stand for ?"])
        assert "e3" not in [d.sample_id for d in demos] and len(demos) == 5


def test_random_repeats_per_id_and_varies_across_ids_and_seeds():
    sel = _selector("random", k=3)
    a = sel.select([f"t{i}" for i in range(20)], ["x"] * 20)
    b = sel.select([f"t{i}" for i in range(20)], ["x"] * 20)
    assert a == b
    assert len({tuple(d.sample_id for d in demos) for demos in a}) > 3
    c = _selector("random", k=3, seed=1).select([f"t{i}" for i in range(20)], ["x"] * 20)
    assert a != c
    assert [d.sample_id for d in _selector("fixed", k=3).select(["q"], ["x"])[0]] == ["e0", "e1", "e2"]


def test_demonstrations_as_chat_turns_placeholder_or_completed_prompts():
    demos = EXAMPLES[:2]
    task = TaskConfig(
        labels=TREC_LABELS,
        prompt_template="Q: {text}\nA:",
        instructions="Label questions.",
        label_descriptions={"human": "a person"},
        few_shot={"examples": "x.csv", "k": 2},
    )
    msgs = PromptMessages(task).messages("Who is it ?", demos)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"] == "Label questions.\n\nLabels:\n- human: a person"
    assert msgs[1]["content"] == "Q: What is the capital of Italy ?\nA:" and msgs[2]["content"] == "location"
    plain = PromptMessages(task).plain("Who is it ?", demos)
    assert plain.endswith("Q: How many feet are in a yard ?\nA: numeric\n\nQ: Who is it ?\nA:")
    filled = task.model_copy(update={"prompt_template": "{descriptions}\n{examples}Text: {text}\nLabel:"})
    msgs = PromptMessages(filled).messages("Who is it ?", demos)
    assert [m["role"] for m in msgs] == ["system", "user"]  # descriptions in the template, not the system
    assert msgs[1]["content"] == (
        "- human: a person\nText: What is the capital of Italy ?\nLabel: location\n\n"
        "Text: How many feet are in a yard ?\nLabel: numeric\n\nText: Who is it ?\nLabel:"
    )


def test_label_descriptions_name_labels_of_the_set():
    with pytest.raises(ValueError, match="label_descriptions keyed by labels"):
        TaskConfig(labels=TREC_LABELS, label_descriptions={"colour": "?"})


def test_the_hf_engine_scores_few_shot_prompts_and_drops_demonstrations_to_fit(tiny_llama, tmp_path):
    f = tmp_path / "ex.csv"
    f.write_text("text,label\n" + "\n".join(f'"{e.text}",{e.label}' for e in EXAMPLES) + "\n")
    task = TaskConfig(labels=ENGINE_LABELS, few_shot={"examples": str(f), "k": 3, "select": "fixed"})
    ann = AnnotatorConfig(
        name="tiny",
        engine={"type": "hf", "model": str(tiny_llama), "dtype": "float32", "device": "cpu", "max_model_len": 1024},
    )
    eng = build_engine(ann, task)
    asyncio.run(eng.start())
    (a,) = asyncio.run(eng.annotate(["q"], ["Who wrote Hamlet ?"]))
    ids, note = eng.prompts.build("Who wrote Hamlet ?", EXAMPLES[:3])
    assert note is None and eng.tokenizer.decode(ids).count("<|assistant|>") == 4  # 3 answers + the open turn
    np.testing.assert_allclose(a.probs, reference_label_probs(eng.model, eng.tokenizer, ids, ENGINE_LABELS), atol=1e-4)
    small = PromptBuilder(eng.tokenizer, task, len(eng.prompts.ids("Who wrote Hamlet ?", EXAMPLES[2:3])))
    ids, note = small.build("Who wrote Hamlet ?", EXAMPLES[:3])
    assert note == "truncated: 2 demonstrations dropped to fit the context"
    assert ids == small.ids("Who wrote Hamlet ?", EXAMPLES[2:3])  # the least similar (first) went first


def test_examples_from_the_loop_reach_the_engine_through_the_deployment(tiny_llama):
    """few_shot.examples 'loop': the engine starts with none (zero-shot prompts); the examples that
    come with a call replace them (embedded once per new set); the scores are those of the
    prompt with those demonstrations."""
    from molal_ray.config.job import LabelJobConfig
    from molal_ray.serve.deployment import AnnotatorDeployment

    task = TaskConfig(labels=ENGINE_LABELS, few_shot={"examples": "loop", "k": 2, "select": "fixed"})
    ann = AnnotatorConfig(
        name="tiny",
        engine={"type": "hf", "model": str(tiny_llama), "dtype": "float32", "device": "cpu", "max_model_len": 1024},
    )
    eng = build_engine(ann, task)
    asyncio.run(eng.start())
    assert eng.demonstrations(["q"], ["Who wrote Hamlet ?"]) == [[]]
    dep = object.__new__(AnnotatorDeployment)  # its Serve-side constructor starts Ray actors: not needed here
    dep.engine, dep.task, dep.in_flight, dep.rows = eng, task, 0, 0
    dep._examples_lock, dep._examples_digest = asyncio.Lock(), None
    sent = [e.model_dump() for e in EXAMPLES[:3]]
    out = asyncio.run(dep.annotate(["q", EXAMPLES[0].sample_id or "x"], ["Who wrote Hamlet ?", EXAMPLES[0].text], sent))
    assert [len(d) for d in eng.demonstrations(["q"], ["Who wrote Hamlet ?"])] == [2]
    ids, _ = eng.prompts.build("Who wrote Hamlet ?", EXAMPLES[:2])
    np.testing.assert_allclose(
        out["probs"][0], reference_label_probs(eng.model, eng.tokenizer, ids, ENGINE_LABELS), atol=1e-4
    )
    own = eng.demonstrations([EXAMPLES[0].sample_id or "x"], [EXAMPLES[0].text])[0]
    assert EXAMPLES[0].text not in [e.text for e in own]  # never its own demonstration
    before = eng.selector.examples
    asyncio.run(dep.annotate(["q"], ["Who wrote Hamlet ?"], sent))
    assert eng.selector.examples is before  # the same set: not replaced again
    with pytest.raises(ConfigError, match="'loop' takes the loop's own labels"):
        LabelJobConfig.from_dict(
            {
                "task": task.model_dump(),
                "annotators": [ann.model_dump()],
                "pool": {"path": "p.jsonl"},
                "output": {"path": "o"},
            }
        )
