"""The bundle manifest: what a deployable scorer folder contains, checked on load.

A bundle folder contains ONNX model variants, `tokenizer.json` and `manifest.json`.
The manifest records the format version, the proposition order of the model's one
output, the spec itself and its hash, the rendering settings, the RBR weights when
fitted, library versions and the sha256 of every other file. `load_manifest`
checks all of it, so a bundle copied anywhere either loads exactly as exported or
fails with a message naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rbr.errors import BundleError, RbrError
from rbr.render import RENDER_VERSION, RenderSettings
from rbr.reward import RbrWeights
from rbr.spec import Spec

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "rbr-bundle"
BUNDLE_FORMAT_VERSION = 1
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MODEL_OUTPUT = "p_yes"  # (B, K) probabilities, sigmoid inside the graph


@dataclass(frozen=True)
class BundleManifest:
    """A verified bundle manifest."""

    path: Path  # the bundle folder
    spec: Spec
    propositions: tuple[str, ...]  # column order of the model output
    render: RenderSettings
    models: Mapping[str, str]  # variant ("fp32", "int8", "fp16") -> file name
    tokenizer: str  # file name of the tokenizers JSON
    inputs: tuple[str, ...]  # ONNX input names the model takes
    output: str  # ONNX output name
    weights: RbrWeights | None
    raw: Mapping[str, Any]  # the whole manifest as stored

    def model_path(self, variant: str = "fp32") -> Path:
        if variant not in self.models:
            raise BundleError(
                f"{self.path}: no {variant!r} model in this bundle; it has {', '.join(sorted(self.models))}. "
                f"Re-export with `rbr export --{variant}` to add it."
            )
        return self.path / self.models[variant]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(
    bundle_dir: str | Path,
    *,
    spec: Spec,
    render: RenderSettings,
    models: Mapping[str, str],
    tokenizer: str = "tokenizer.json",
    inputs: tuple[str, ...] = MODEL_INPUTS,
    output: str = MODEL_OUTPUT,
    weights: RbrWeights | None = None,
    versions: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write manifest.json with the sha256 of every other file in the folder."""
    bundle_dir = Path(bundle_dir)
    if weights is not None:
        weights.check_spec(spec, "RBR weights")
    files = {
        p.relative_to(bundle_dir).as_posix(): sha256_file(p)
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    for name in [*models.values(), tokenizer]:
        if name not in files:
            raise BundleError(f"{bundle_dir}: {name} is listed in the manifest but missing from the folder.")
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "propositions": spec.proposition_names,
        "spec": spec.to_dict(),
        "spec_hash": spec.hash(),
        "render": render.to_dict(),
        "max_length": render.max_length,
        "tokenizer": tokenizer,
        "models": dict(models),
        "inputs": list(inputs),
        "output": output,
        "weights": None if weights is None else weights.to_dict(),
        "versions": dict(versions or {}),
        **dict(extra or {}),
        "files": files,
    }
    path = bundle_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_manifest(bundle_dir: str | Path, verify_checksums: bool = True) -> BundleManifest:
    """Read and verify a bundle's manifest; raise BundleError naming what is wrong."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; is this a bundle folder written by `rbr export`?")
    try:
        raw = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: invalid JSON ({exc.msg}); re-export the bundle.") from None

    if raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is {raw.get('format')!r}, expected {BUNDLE_FORMAT!r}.")
    if raw.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {raw.get('format_version')!r} is not supported by this "
            f"version of rbr-distill (supports {BUNDLE_FORMAT_VERSION}); re-export the bundle or "
            "install the matching library version."
        )
    missing = [k for k in ("propositions", "spec", "spec_hash", "render", "models", "tokenizer", "files") if k not in raw]
    if missing:
        raise BundleError(f"{path}: manifest is missing {', '.join(missing)}; re-export the bundle.")

    if verify_checksums:
        _verify_files(bundle_dir, raw["files"])
    for name in [*raw["models"].values(), raw["tokenizer"]]:
        if name not in raw["files"]:
            raise BundleError(f"{path}: {name} has no checksum in the manifest; re-export the bundle.")

    try:
        spec = Spec.from_dict(raw["spec"], source=f"{path} (embedded spec)")
    except RbrError as exc:
        raise BundleError(f"{path}: the embedded spec is invalid: {exc}") from None
    if spec.hash() != raw["spec_hash"]:
        raise BundleError(f"{path}: the embedded spec does not match its recorded hash; the manifest was edited.")
    propositions = tuple(raw["propositions"])
    if list(propositions) != spec.proposition_names:
        raise BundleError(
            f"{path}: the model's proposition order {list(propositions)} differs from the spec's "
            f"{spec.proposition_names}; re-export the student with this spec."
        )

    render = RenderSettings.from_dict(raw["render"])
    if render.version != RENDER_VERSION:
        raise BundleError(f"{path}: rendering version {render.version} is not supported (expected {RENDER_VERSION}).")
    weights = None
    if raw.get("weights") is not None:
        weights = RbrWeights.from_dict(raw["weights"], f"{path} weights")
        weights.check_spec(spec, f"{path} weights")
        weights = weights.aligned(spec)
    return BundleManifest(
        path=bundle_dir,
        spec=spec,
        propositions=propositions,
        render=render,
        models=dict(raw["models"]),
        tokenizer=raw["tokenizer"],
        inputs=tuple(raw.get("inputs") or MODEL_INPUTS),
        output=raw.get("output") or MODEL_OUTPUT,
        weights=weights,
        raw=raw,
    )


def _verify_files(bundle_dir: Path, files: Mapping[str, str]) -> None:
    for name, expected in files.items():
        file_path = bundle_dir / name
        if not file_path.is_file():
            raise BundleError(f"{bundle_dir}: {name} is missing; copy the whole bundle folder or re-export it.")
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(
                f"{bundle_dir}: checksum mismatch for {name} (sha256 {actual[:12]}..., manifest records "
                f"{expected[:12]}...); the file was modified or corrupted. Re-export the bundle."
            )


def attach_weights(bundle_dir: str | Path, weights: RbrWeights) -> None:
    """Store fitted RBR weights in a bundle's manifest (the spec hash must match)."""
    manifest = load_manifest(bundle_dir)
    weights.check_spec(manifest.spec, "RBR weights")
    raw = dict(manifest.raw)
    raw["weights"] = weights.to_dict()
    path = Path(bundle_dir) / MANIFEST_NAME
    path.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
