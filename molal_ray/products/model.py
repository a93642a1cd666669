"""The loop's classifier as a portable folder, and loading one back.

Two kinds of folder, one per ``classifier.mode``:

- ``finetune``: a Hugging Face folder (``save_pretrained`` of the model and its tokenizer, with
  ``id2label``/``label2id`` set to the task's labels): ``transformers.pipeline("text-classification",
  model=FOLDER)`` loads it without molal_ray.
- ``head``: ``head.safetensors`` (the head's weights) and ``classifier.json`` (the labels, the
  head's shape, and the frozen encoder named the way it can be found on another machine: a
  ``package:PKG/path`` when it ships in a Python package, a hub name, or ``./encoder``, a copy of a
  local encoder folder inside the export; its pooling, ``max_length`` and ``first_tokens``).

:func:`load_classifier` reads either and returns a :class:`Classifier`: ``predict_proba(texts)``,
``predict(texts)`` and ``labels``, as a scikit-learn user expects.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from molal_ray.exceptions import ConfigError
from molal_ray.storage import Location, resolve

HEAD_FORMAT = "molal_ray.head"
HEAD_CARD = "classifier.json"
HEAD_SAFETENSORS = "head.safetensors"
ENCODER_COPY = "encoder"  # a local encoder folder copied into a head export
FORMAT_VERSION = 1


# -- writing ------------------------------------------------------------------------------------
def portable_encoder(backbone: str) -> tuple[str, str | None]:
    """How a head export names its encoder: (the name, a local folder to copy into the export or
    None). A path inside an installed Python package becomes ``package:PKG/path`` (found again on
    any machine with the package); another local folder is copied (``./encoder``); anything else
    is a hub name and stays as it is."""
    from molal_ray.models import PACKAGE, resolve_package_path

    if backbone.startswith(PACKAGE):
        return backbone, None
    parts = Path(backbone).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rel = parts[len(parts) - parts[::-1].index(marker) :]
            name = PACKAGE + "/".join(rel)
            try:
                if rel and os.path.samefile(resolve_package_path(name), backbone):
                    return name, None
            except (ValueError, OSError):
                pass
    if os.path.isdir(backbone):
        return "./" + ENCODER_COPY, backbone
    return backbone, None


def export_head(model_dir: str, to: Location, labels: list[str], extra: dict[str, Any]) -> None:
    """A saved head (``training/head.py``: ``head.pt``, ``head.json``) as a portable folder at
    ``to``: weights in safetensors, ``classifier.json`` naming the labels and the encoder."""
    import torch
    from safetensors.torch import save_file

    from molal_ray.training.head import HEAD_META, HEAD_WEIGHTS

    with tempfile.TemporaryDirectory(prefix="molal-export-") as tmp:
        src = _local(model_dir, Path(tmp, "src"))
        meta = json.loads(Path(src, HEAD_META).read_text(encoding="utf-8"))
        if meta["num_labels"] != len(labels):
            raise ConfigError(
                f"export: the head in {model_dir} has {meta['num_labels']} classes; the task has {labels}"
            )
        state = torch.load(Path(src, HEAD_WEIGHTS), map_location="cpu")
        out = Path(tmp, "out")
        out.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / HEAD_SAFETENSORS))
        encoder = dict(meta["encoder"])
        name, copy = portable_encoder(str(encoder["backbone"]))
        if copy is not None:
            shutil.copytree(copy, out / ENCODER_COPY)
        card = {
            "format": HEAD_FORMAT,
            "format_version": FORMAT_VERSION,
            "labels": list(labels),
            "encoder": {
                "backbone": name,
                "pooling": encoder.get("pooling", "mean-l2"),
                "max_length": int(encoder["max_length"]),
                "first_tokens": int(encoder.get("first_tokens", 0)),
            },
            "head": {"dim": int(meta["dim"]), "hidden": int(meta["hidden"]), "num_labels": len(labels)},
            "val_accuracy": meta.get("val_accuracy"),
            **extra,
        }
        (out / HEAD_CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
        _publish(out, to)


def export_finetune(model_dir: str, to: Location, labels: list[str], extra: dict[str, Any]) -> None:
    """A fine-tuned checkpoint (``save_pretrained`` of a sequence classifier and its tokenizer) as
    a Hugging Face folder at ``to`` whose config names the labels (``id2label``, ``label2id``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="molal-export-") as tmp:
        src = _local(model_dir, Path(tmp, "src"))
        model = AutoModelForSequenceClassification.from_pretrained(src)
        if model.config.num_labels != len(labels):
            raise ConfigError(
                f"export: the model in {model_dir} has {model.config.num_labels} classes; the task has {labels}"
            )
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
        model.config.molal_ray = {"format_version": FORMAT_VERSION, **extra}
        out = Path(tmp, "out")
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
        _publish(out, to)


def _local(model_dir: str, where: Path) -> str:
    loc = resolve(model_dir)
    if not loc.is_dir():
        raise ConfigError(f"export: no model in {model_dir} (was the round's classifier deleted?)")
    if loc.is_local:
        return loc.path
    where.mkdir(parents=True, exist_ok=True)  # the copy goes into an existing folder, as the predictors' do
    return loc.download(str(where))


def _publish(folder: Path, to: Location) -> None:
    """``folder``'s files at ``to``, replacing what was there (a local folder or a URI)."""
    if to.exists():
        to.delete_dir()
    to.mkdirs()
    to.upload_from(str(folder))


# -- reading ------------------------------------------------------------------------------------
class Classifier:
    """A text classifier exported by a loop: ``labels``; ``predict_proba(texts)`` (N, C) in the
    labels' order; ``predict(texts)``, the labels themselves."""

    kind: ClassVar[str]
    labels: list[str]

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N, C) probabilities, in the labels' order, batch by batch; the texts are batched by
        length (less padding), the rows returned in the order given."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = [self._proba([texts[j] for j in order[i : i + batch_size]]) for i in range(0, len(texts), batch_size)]
        probs = np.empty((len(texts), len(self.labels)), np.float32)
        probs[order] = np.concatenate(out)
        return probs

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(1)]

    def _proba(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class HeadClassifier(Classifier):
    """The frozen encoder, then the head (``classifier.mode: head``)."""

    kind = "head"

    def __init__(self, folder: str, card: dict[str, Any], device: str = "cpu", threads: int | None = None) -> None:
        import torch
        from safetensors.torch import load_file

        from molal_ray.models import resolve_package_path
        from molal_ray.training.encoder import FrozenEncoder
        from molal_ray.training.head import Head

        self.card = card
        self.labels = list(card["labels"])
        enc = card["encoder"]
        name = str(enc["backbone"])
        backbone = os.path.join(folder, name[2:]) if name.startswith("./") else resolve_package_path(name)
        self.encoder = FrozenEncoder(
            backbone,
            max_length=int(enc["max_length"]),
            device=device,
            threads=threads,
            first_tokens=int(enc["first_tokens"]),
        )
        h = card["head"]
        if self.encoder.dim != int(h["dim"]):
            raise ConfigError(
                f"model {folder}: the encoder {name!r} gives {self.encoder.dim}-wide embeddings; the head was "
                f"trained on {h['dim']} (another encoder?)"
            )
        self.head = Head(int(h["dim"]), len(self.labels), int(h["hidden"])).to(torch.device(device))
        self.head.load_state_dict(load_file(os.path.join(folder, HEAD_SAFETENSORS), device=device))
        self.head.eval()
        self.device = device

    def _proba(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(self.encoder(texts), device=self.device)
            return torch.softmax(self.head(x).float(), -1).cpu().numpy()


class FinetunedClassifier(Classifier):
    """A Hugging Face sequence classifier (``classifier.mode: finetune``)."""

    kind = "finetune"

    def __init__(self, folder: str, device: str = "cpu", max_length: int = 128) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(torch.device(device)).eval()
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(self.model.config.num_labels)]
        self.max_length, self.device = max_length, device

    def _proba(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**enc.to(self.device)).logits
        return torch.softmax(logits.float(), -1).cpu().numpy()


def describe_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an exported classifier is, read from its small files (no weights loaded): ``kind``
    (head or finetune), ``labels`` and ``fingerprint`` (a digest of its card and its files' names
    and sizes: a predictions table records which model wrote it). A folder that is not an export
    is a :class:`ConfigError` saying what it should hold."""
    import hashlib

    loc = resolve(os.fspath(path), field="--model")
    if not loc.is_dir():
        raise ConfigError(
            f"--model: {path} is not a folder; expected an exported classifier (a loop's OUT/model, "
            "or `molal-ray export`)"
        )
    files = {i.base_name: i.size for i in loc.list()}
    if HEAD_CARD in files:
        card_text = loc.join(HEAD_CARD).read_text()
        card = _json(card_text, path, HEAD_CARD)
        if card.get("format") != HEAD_FORMAT or not isinstance(card.get("labels"), list):
            raise ConfigError(
                f"--model: {path}/{HEAD_CARD} is not a molal_ray head export (format {card.get('format')!r})"
            )
        if HEAD_SAFETENSORS not in files:
            raise ConfigError(f"--model: {path} has {HEAD_CARD} but no {HEAD_SAFETENSORS} (an interrupted copy?)")
        kind, labels = "head", [str(x) for x in card["labels"]]
    elif "config.json" in files:
        card_text = loc.join("config.json").read_text()
        card = _json(card_text, path, "config.json")
        id2label = card.get("id2label")
        if not isinstance(id2label, dict) or not card.get("architectures"):
            raise ConfigError(
                f"--model: {path}/config.json names no classifier labels (id2label); expected a text-classification "
                "folder exported by molal-ray"
            )
        kind, labels = "finetune", [str(id2label[k]) for k in sorted(id2label, key=int)]
    else:
        raise ConfigError(
            f"--model: {path} holds neither {HEAD_CARD} (a head export) nor config.json (a Hugging Face "
            "classifier); expected the folder `molal-ray export` or a loop writes (OUT/model)"
        )
    digest = hashlib.blake2b(card_text.encode(), digest_size=8)
    for name in sorted(files):
        digest.update(f"{name}:{files[name]}".encode())
    return {"kind": kind, "labels": labels, "fingerprint": digest.hexdigest()}


def _json(text: str, path: Any, name: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--model: {path}/{name} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model: {path}/{name} is not a JSON object")
    return data


def load_classifier(path: str | os.PathLike[str], device: str = "cpu") -> Classifier:
    """The classifier exported at ``path`` (a local folder or a URI): a head export
    (``classifier.json``) or a Hugging Face folder (``config.json``). Anything else is a
    :class:`ConfigError` saying what the folder should hold."""
    loc = resolve(os.fspath(path), field="model")
    if not loc.is_dir():
        raise ConfigError(f"model: {path} is not a folder; expected an exported classifier (molal-ray export)")
    folder = loc.path if loc.is_local else loc.download(tempfile.mkdtemp(prefix="molal-model-"))
    card_path = Path(folder, HEAD_CARD)
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if card.get("format") != HEAD_FORMAT:
            raise ConfigError(
                f"model: {path}/{HEAD_CARD} is not a molal_ray head export (format {card.get('format')!r})"
            )
        return HeadClassifier(folder, card, device)
    if Path(folder, "config.json").is_file():
        return FinetunedClassifier(folder, device)
    raise ConfigError(
        f"model: {path} holds neither {HEAD_CARD} (a head export) nor config.json (a Hugging Face "
        "classifier); expected the folder `molal-ray export` or a loop writes (OUT/model)"
    )
