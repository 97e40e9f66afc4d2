"""Where the project's shipped files live, for an editable install or a source checkout."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
REFERENCE_BUNDLE_DIR = MODELS_DIR / "bundles" / "reference"
REFERENCE_VERIFIER_DIR = MODELS_DIR / "bundles" / "reference-verifier"
REMOTE_BUNDLE_DIR = MODELS_DIR / "bundles" / "remote"
