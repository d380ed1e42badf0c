"""Resolve model ids (hub ids or local folders) with clear, fast errors when offline.

``from_pretrained`` on a hub id that is neither cached nor reachable can spend minutes in silent retries
(transformers retries the tokenizer download for ~4 minutes). We first look for a local folder, then for the hub
cache, then check in a few seconds whether the hub answers at all, and only then download.

:func:`model_fingerprint` names a model's weights in records (bench keys, judge sources).
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse


class ModelNotFoundError(FileNotFoundError):
    """A model id that is neither a local folder nor downloadable right now."""


def _looks_like_path(model_id: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with separators is meant as a folder.
    return model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(model_id: str, kind: str, required_file: str | None = None) -> tuple[str, bool]:
    """Return ``(id_or_path, local_files_only)`` for ``from_pretrained``, or raise :class:`ModelNotFoundError`.

    Args:
        model_id: a hub id (``"openai/clip-vit-base-patch32"``) or a local folder.
        kind: what the model is for, used in messages (``"Stable Diffusion model"``, ``"CLIP judge"``).
        required_file: a file a valid local folder must contain (``"model_index.json"``, ``"config.json"``).
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        if required_file and not (path / required_file).is_file():
            raise ModelNotFoundError(
                f"{kind} folder {str(path)!r} has no {required_file}; point at the folder that contains it "
                f"(a diffusers/transformers model saved with save_pretrained)"
            )
        return str(path), True
    if path.exists():
        raise ModelNotFoundError(f"{kind} {model_id!r} is a file; give the model's folder or a hub id")
    if _looks_like_path(model_id):
        raise ModelNotFoundError(f"{kind} folder {model_id!r} does not exist; check the path")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, required_file or "config.json")
        if isinstance(cached, str):
            return model_id, True
    except Exception:  # malformed id: let the checks below produce the message
        pass
    if not _hub_reachable():
        raise ModelNotFoundError(
            f"{kind} {model_id!r} is not a local folder, not in the Hugging Face cache, and the hub cannot be "
            f"reached (offline, or HF_HUB_OFFLINE=1). Download it on a connected machine "
            f"(e.g. `hf download {model_id} --local-dir DIR`) and pass the folder path instead; "
            f"also check the id for typos."
        )
    return model_id, False


def resolve_device(device: str | None) -> str:
    """``device`` checked against this torch build before anything is loaded onto it (``None``/``"auto"``: cuda
    where available, else cpu). Raises ``ValueError`` saying what was given and what this machine offers, instead
    of torch's ``AssertionError: Torch not compiled with CUDA enabled`` deep inside a model load."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ValueError(f"device {device!r}: this torch ({torch.__version__}) is a CPU-only build; install a "
                             f"CUDA build of torch (see pytorch.org) or use --device cpu")
        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError(f"device {device!r}: torch sees no CUDA GPU (check the driver and "
                             f"CUDA_VISIBLE_DEVICES); use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device!r}: only {n} GPU(s) visible (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS (Apple GPU) is not available in this torch; use --device cpu")
    return device


def model_fingerprint(source: str) -> str:
    """A hub id as is; a local file or folder as a hash of its files' names, sizes and first/last MiB.

    Hashing whole multi-GB checkpoints would take tens of seconds; the head and tail of each file (headers, last
    layers) and its size change whenever the weights are retrained or replaced.
    """
    p = Path(source)
    if not source or not p.exists():
        return source
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256()
    chunk = 1 << 20
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(size - chunk)
                h.update(fh.read(chunk))
    return f"sha256:{h.hexdigest()[:16]}"
