"""Tiny causal LMs built locally (random weights, a BPE tokenizer trained on the spot, a chat
template), saved with ``save_pretrained`` so the real loading code (transformers'
``from_pretrained``, vLLM's ``model=``) runs on them. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "What is the capital of France ? Paris is a location .",
    "Who wrote Hamlet ? Shakespeare is a human .",
    "How many feet are in a mile ? The answer is numeric .",
    "What does NASA stand for ? It is an abbreviation .",
    "What is a golden retriever ? A dog breed is an entity .",
    "Why is the sky blue ? The description explains scattering .",
    "Classify the given question into one of these categories . Answer with only one label .",
    "science/technology sports world business politics entertainment health",
]


def build_tiny_llama(
    folder: str | Path,
    *,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    extra_corpus: list[str] | None = None,
) -> Path:
    """A random Llama (head_dim = hidden / heads; 64 works on vLLM's CPU backend) and tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20 + (extra_corpus or []), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,  # type: ignore[call-arg]  # transformers' stubs omit the config's **kwargs
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.convert_tokens_to_ids("<|end|>"),
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init, so distributions are not flat
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_bert(
    folder: str | Path,
    corpus: list[str],
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    num_labels: int = 2,
    seed: int = 0,
) -> Path:
    """A random tiny BERT and a word-level tokenizer over ``corpus`` (a classifier backbone for tests)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        num_hidden_layers=layers,  # type: ignore[call-arg]  # transformers' stubs omit the config's **kwargs
        num_attention_heads=heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=256,
        num_labels=num_labels,
        pad_token_id=fast.pad_token_id,
    )
    BertForSequenceClassification(cfg).save_pretrained(out)
    return out


def build_head_export(folder: str | Path, labels: list[str], texts: list[str], *, seed: int = 0) -> Path:
    """A head export (``molal_ray/products/model.py``) of a tiny random BERT and a random linear head
    for ``labels``: what ``molal-ray predict`` reads, built in seconds (its labels mean nothing)."""
    import tempfile

    import torch

    from molal_ray.products.model import export_head
    from molal_ray.storage import resolve
    from molal_ray.training.encoder import FrozenEncoder, encoder_fingerprint
    from molal_ray.training.head import Head, HeadFit, save_head

    with tempfile.TemporaryDirectory(prefix="molal-head-") as tmp:
        bert = str(build_tiny_bert(Path(tmp) / "bert", texts))
        dim = FrozenEncoder(bert, max_length=32, first_tokens=1).dim
        torch.manual_seed(seed)
        head = Head(dim, len(labels), 0)
        with torch.no_grad():  # spread logits: confidences from near-sure to unsure
            for p in head.parameters():
                p.mul_(20.0)
        saved = Path(tmp) / "head"
        saved.mkdir()
        fit = HeadFit({k: v.clone() for k, v in head.state_dict().items()}, 0.0, 0.0, 0)
        save_head(str(saved), fit, dim, len(labels), 0, encoder_fingerprint(bert, 32, 1))
        export_head(str(saved), resolve(str(folder)), list(labels), {"round": 0})
    return Path(folder)
