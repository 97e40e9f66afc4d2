"""Writing a schema-2 bundle: files in, digests and sizes filled, manifest validated and written last.

Used by the LeRobot importer and by tests that build small bundles; the runtime only reads bundles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vla_edge.bundle import MANIFEST_FILE
from vla_edge.bundle_schema import BundleManifestV2
from vla_edge.errors import BundleError


def _variant_files(variant: Mapping[str, Any]) -> list[str]:
    out = []
    for graph in variant.get("graphs", {}).values():
        out.append(graph["file"])
        folder = graph["file"].rsplit("/", 1)[0] + "/" if "/" in graph["file"] else ""
        out.extend(folder + e for e in graph.get("external_data", []))
    return out


def assemble_bundle(directory: Path, manifest: Mapping[str, Any], files: Mapping[str, bytes | Path]) -> BundleManifestV2:
    """Write ``files`` ({relative path: bytes, or a file to copy}) under ``directory``, then the manifest with
    ``files`` (sha256, size) and every variant's ``size_bytes`` filled in. Raises BundleError on an invalid manifest
    (nothing is written then)."""
    digests: dict[str, dict[str, Any]] = {}
    blobs: dict[str, bytes | Path] = dict(files)
    for rel, content in blobs.items():
        h = hashlib.sha256()
        if isinstance(content, Path):
            size = 0
            with content.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
                    size += len(block)
        else:
            h.update(content)
            size = len(content)
        digests[rel] = {"sha256": h.hexdigest(), "size_bytes": size}
    data = json.loads(json.dumps(manifest))
    data["files"] = digests
    for variant in data.get("variants", {}).values():
        variant["size_bytes"] = sum(digests[rel]["size_bytes"] for rel in _variant_files(variant) if rel in digests)
    try:
        validated = BundleManifestV2.model_validate(data)
    except ValidationError as exc:
        lines = [f"bundle manifest for {directory} is invalid:"]
        for item in exc.errors()[:10]:
            lines.append(f"  {'.'.join(str(p) for p in item['loc']) or '(top level)'}: {item['msg']}")
        raise BundleError("\n".join(lines)) from None
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in blobs.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            with content.open("rb") as src, target.open("wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
        else:
            target.write_bytes(content)
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(validated.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(directory / MANIFEST_FILE)
    return validated
