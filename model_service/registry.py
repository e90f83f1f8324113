"""The versions in an artifacts folder, for ``python -m model_service list`` and ``show``.

    >>> [entry["version"] for entry in versions("artifacts")]   # doctest: +SKIP
    ['v1', 'v2']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_service.artifacts import METADATA_FILE, ArtifactError, read_metadata

HEADLINE = ("accuracy", "roc_auc", "r2", "mae")  # the first one a version has is its headline


def versions(root: str | Path) -> list[dict[str, Any]]:
    """Metadata of every version folder, oldest first; a broken one carries ``error``."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / METADATA_FILE).exists():
            continue
        try:
            found.append(read_metadata(folder))
        except ArtifactError as exc:
            found.append({"version": folder.name, "error": str(exc)})
    return sorted(found, key=lambda m: (str(m.get("created_at") or m.get("trained_at") or ""),
                                        str(m.get("version"))))


def headline(meta: dict[str, Any]) -> str:
    metrics = meta.get("heldout_metrics") or {}
    for name in HEADLINE:
        if name in metrics:
            return f"{name} {metrics[name]:.4f}"
    return "-"


def table(entries: list[dict[str, Any]]) -> str:
    """One line per version: version, task, description, created, headline metric, sha256."""
    rows = [("VERSION", "TASK", "DESCRIPTION", "CREATED", "METRIC", "SHA256")]
    for meta in entries:
        if "error" in meta:
            rows.append((str(meta["version"]), "-", f"unreadable: {meta['error']}", "-", "-", "-"))
            continue
        created = str(meta.get("created_at") or meta.get("trained_at") or "")[:16].replace("T", " ")
        rows.append((str(meta.get("version")), str(meta.get("task", "classification")),
                     str(meta.get("description") or "")[:48], created, headline(meta),
                     str(meta.get("sha256", ""))[:12]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def describe(meta: dict[str, Any]) -> str:
    """Every metadata field of one version, readable."""
    lines = [f"version      {meta.get('version')}",
             f"task         {meta.get('task', 'classification')}",
             f"description  {meta.get('description') or '-'}",
             f"created      {meta.get('created_at') or meta.get('trained_at')}",
             f"model file   {meta.get('model_file')} ({meta.get('model_format', 'joblib')}), "
             f"sha256 {meta.get('sha256')}"]
    if meta.get("classes") is not None:
        lines.append(f"classes      {', '.join(str(c) for c in meta['classes'])}")
    metrics = meta.get("heldout_metrics") or {}
    lines.append("metrics      " + (", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "-"))
    evaluation = meta.get("evaluation") or {}
    if evaluation:
        lines.append(f"evaluation   {evaluation.get('rows')} rows, target {evaluation.get('target')}"
                     + (f", sha256 {str(evaluation['sha256'])[:12]}" if "sha256" in evaluation else ""))
    schema = (meta.get("input_schema") or {}).get("columns") or [
        {"name": n, "type": "number"} for n in meta.get("feature_names", [])]
    lines.append(f"inputs       {len(schema)} columns"
                 + (" (a DataFrame)" if (meta.get("input_schema") or {}).get("frame") else ""))
    for col in schema:
        extra = " or null" if col.get("nullable") else ""
        cats = col.get("categories")
        seen = f"  seen: {', '.join(cats[:10])}{', ...' if len(cats) > 10 else ''}" if cats else ""
        lines.append(f"  {col['name']:<28} {col['type']}{extra}{seen}")
    libs = meta.get("library_versions") or {"scikit-learn": meta.get("sklearn_version")}
    lines.append("libraries    " + ", ".join(f"{k} {v}" for k, v in libs.items()))
    if meta.get("trusted_types"):
        lines.append(f"trusted      {', '.join(meta['trusted_types'])}")
    for fmt, export in (meta.get("exports") or {}).items():
        lines.append(f"export       {fmt}: {export.get('file')}, sha256 {str(export.get('sha256'))[:12]}")
    return "\n".join(lines)
