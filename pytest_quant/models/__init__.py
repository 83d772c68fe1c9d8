"""The embedded default model and texts, resolution of ``--quant-model`` values, and what a model folder holds
(its config, weights, tokenizer files, shipped code, context and chat template), read without torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TINY_DIR = Path(__file__).parent / "tiny"
EMBEDDED = {"tiny": TINY_DIR}


@dataclass(frozen=True)
class ModelSource:
    """A model to gate: a short name (used in test ids and baseline paths) and its folder."""

    name: str
    path: Path

    @property
    def is_embedded(self) -> bool:
        return self.path.parent == Path(__file__).parent


def embedded_eval_text() -> Path:
    """Persuasion (held out from training), paragraphs unwrapped."""
    return TINY_DIR / "eval.txt"


def embedded_calibration_text() -> Path:
    """A 60,000-character slice of Northanger Abbey (held out from training and evaluation)."""
    return TINY_DIR / "calibration.txt"


def read_config(model_path: Path) -> dict:
    """config.json of a model folder, or ValueError naming the file and what is wrong."""
    config_file = Path(model_path) / "config.json"
    try:
        text = config_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{config_file}: cannot read the model config ({exc.strerror or exc})") from exc
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object, found {type(config).__name__}")
    return config


def is_gguf_file(path: Path) -> bool:
    """Whether a model is a GGUF file (run by the llama_cpp backend) rather than a Hugging Face folder."""
    return Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


def resolve_gguf(value: str, path: Path) -> ModelSource:
    """A ``.gguf`` file as a model: its header must read (architecture, file type) before anything loads."""
    from .gguf_header import read_header

    try:
        header = read_header(path)
    except ValueError as exc:
        raise ValueError(f"--quant-model {value!r}: {exc}") from None
    if not header.architecture:
        raise ValueError(f"--quant-model {value!r}: {path} has no general.architecture in its GGUF header")
    return ModelSource(_short_name(path.with_suffix("")), path.resolve())


def resolve_model(value: str) -> ModelSource:
    """``tiny``, a local folder holding a transformers ``config.json``, or a ``.gguf`` file (also a folder whose
    only weights are one ``.gguf`` file)."""
    if value in EMBEDDED:
        return ModelSource(value, EMBEDDED[value])
    path = Path(value).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return resolve_gguf(value, path)
    if path.is_dir() and not any(path.glob("*.safetensors")) and len(list(path.glob("*.gguf"))) == 1:
        return resolve_gguf(value, next(path.glob("*.gguf")))
    if not path.is_dir():
        raise ValueError(
            f"--quant-model {value!r}: no such folder; give a local model folder, a .gguf file or one of {sorted(EMBEDDED)}"
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"--quant-model {value!r}: {path} has no config.json, so it is not a transformers model folder")
    from ..qcache import WEIGHT_SUFFIXES

    try:
        read_config(path)
    except ValueError as exc:
        raise ValueError(f"--quant-model {value!r}: {exc}") from None
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir() if p.is_file()):
        raise ValueError(f"--quant-model {value!r}: {path} has a config.json but no weight files "
                         f"({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    for problem in (weights_problem(path), tokenizer_problem(path)):
        if problem:
            raise ValueError(f"--quant-model {value!r}: {problem}")
    return ModelSource(_short_name(path), path.resolve())


SAFE_WEIGHTS = ".safetensors"
PICKLED_WEIGHTS = (".bin", ".pt", ".pth")
# What AutoTokenizer builds a tokenizer from: a tokenizers serialization, a sentencepiece or tiktoken model,
# or a BPE/WordPiece vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "tiktoken.model",
                   "vocab.json", "vocab.txt")
# Files whose ``auto_map`` makes transformers import Python code shipped in the model folder.
CODE_MAP_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                  "image_processor_config.json", "feature_extractor_config.json")


def _top_files(path: Path) -> list[str]:
    return sorted(p.name for p in Path(path).iterdir() if p.is_file())


def weights_problem(path: Path) -> str | None:
    """Why a folder's weights cannot be loaded here: only pickled files (``.bin``/``.pt``, refused in favour of
    safetensors: unpickling can run code) or only GGUF (no backend reads it); None when safetensors are there."""
    names = _top_files(path)
    if any(n.endswith(SAFE_WEIGHTS) for n in names):
        return None
    pickled = [n for n in names if n.endswith(PICKLED_WEIGHTS)]
    if pickled:
        return (f"{path} holds only pickled weights ({', '.join(pickled)}); pytest-quant loads *.safetensors only "
                "(unpickling a file can run code): convert it once, e.g. model = AutoModelForCausalLM."
                "from_pretrained(folder); model.save_pretrained(folder, safe_serialization=True)")
    gguf = [n for n in names if n.endswith(".gguf")]
    if gguf:
        return (f"{path} holds only GGUF weights, several of them ({', '.join(gguf)}): give the one to gate as "
                f"--quant-model={path / gguf[0]} (the llama_cpp backend, pytest-quant[gguf])")
    return None


def tokenizer_problem(path: Path) -> str | None:
    """Why a folder has no tokenizer transformers can build (None when it has one of ``TOKENIZER_FILES``)."""
    names = set(_top_files(path))
    if names & set(TOKENIZER_FILES) or any(n.endswith(".tiktoken") for n in names):
        return None
    return (f"{path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); save the tokenizer into it "
            "(tokenizer.save_pretrained(folder))")


def remote_code_files(path: Path) -> list[str]:
    """``file (what)`` for every file of a model folder that makes transformers run the folder's own code: an
    ``auto_map`` in config.json, tokenizer_config.json or a processor config."""
    found = []
    for name in CODE_MAP_FILES:
        file = Path(path) / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # config.json is checked by resolve_model; a broken other file fails where it is read
        if isinstance(data, dict) and data.get("auto_map"):
            mapped = data["auto_map"]
            classes = ", ".join(f"{k} -> {v}" for k, v in mapped.items()) if isinstance(mapped, dict) else str(mapped)
            found.append(f"{file} (auto_map: {classes})")
    return found


def context_length(path: Path) -> int | None:
    """The model's context in tokens: ``max_position_embeddings`` of config.json (or its text_config, or the
    older names n_positions / max_sequence_length / seq_length); None when it declares none."""
    if is_gguf_file(path):
        from .gguf_header import read_header

        return read_header(path).context_length
    config = read_config(path)
    for section in (config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def has_chat_template(path: Path) -> bool:
    """Whether the folder's tokenizer carries a chat template (tokenizer_config.json's ``chat_template``, or a
    chat_template.jinja / chat_template.json file beside it)."""
    folder = Path(path)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _short_name(path: Path) -> str:
    name = path.resolve().name.lower()
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.")
    return cleaned or "model"
