"""Command line of the model service: ``train``, ``package``, ``list``, ``show``, ``serve``, ``batch``.

    python -m model_service train
    python -m model_service package model.skops --version v3 --eval eval.csv --target churned
    python -m model_service list
    python -m model_service serve --version v2 --port 8002
    python -m model_service batch --version v1 in.csv out.csv
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from model_service.training import VERSIONS, train_all

    versions = args.version or list(VERSIONS)
    for version in versions:
        if version not in VERSIONS:
            print(f"error: unknown version {version!r}; `train` builds the example versions "
                  f"{', '.join(VERSIONS)}; package a model of your own with "
                  "`python -m model_service package MODEL --version V --eval EVAL.csv --target COL`",
                  file=sys.stderr)
            return 2
    existing = [v for v in versions if (Path(args.artifacts) / v).exists()]
    for version in existing:
        print(f"{version}: already in {args.artifacts}, kept (versions are immutable; remove "
              f"{Path(args.artifacts) / version} to build it again)")
    versions = [v for v in versions if v not in existing]
    if not versions:
        return 0
    try:
        folders = train_all(args.artifacts, versions)
    except OSError as exc:
        print(f"error: cannot write the artifacts to {args.artifacts}: {exc.strerror or exc}"
              f" ({exc.filename}); give --artifacts a folder you can write", file=sys.stderr)
        return 2
    for folder in folders:
        from model_service.artifacts import read_metadata

        meta = read_metadata(folder)
        metrics = meta["heldout_metrics"]
        print(
            f"{meta['version']}: {meta['description']}; held-out accuracy {metrics['accuracy']:.4f}, "
            f"ROC AUC {metrics['roc_auc']:.4f}; sha256 {meta['sha256'][:12]} -> {folder}"
        )
    return 0


def _package(args: argparse.Namespace) -> int:
    from model_service.artifacts import read_metadata
    from model_service.packager import Evaluation, PackageError, load_user_model, package_model
    from model_service.registry import headline

    trust = [t.strip() for item in args.trust for t in item.split(",") if t.strip()]
    try:
        estimator = load_user_model(args.model, trust)
        evaluation = Evaluation.from_csv(args.eval, args.target)
        folder = package_model(estimator, args.version, evaluation, args.artifacts,
                               description=args.description or "", model_format=args.format,
                               trust=trust)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write to {args.artifacts}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    meta = read_metadata(folder)
    columns = meta["input_schema"]["columns"]
    print(f"{meta['version']}: {meta['task']} on {len(columns)} columns, "
          f"{headline(meta)} on {meta['evaluation']['rows']} evaluation rows; "
          f"{meta['model_format']} sha256 {meta['sha256'][:12]} -> {folder}")
    return 0


def _list(args: argparse.Namespace) -> int:
    import json

    from model_service.registry import table, versions

    entries = versions(args.artifacts)
    if args.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print(f"no versions in {args.artifacts}: `python -m model_service train` builds the "
              "examples, `python -m model_service package` packages your own")
    else:
        print(table(entries))
    return 0


def _show(args: argparse.Namespace) -> int:
    import json

    from model_service.artifacts import ArtifactError, read_metadata
    from model_service.registry import describe

    try:
        meta = read_metadata(Path(args.artifacts) / args.version)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(meta, indent=2) if args.json else describe(meta))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from serving.process import bind_address, exec_server

    os.environ["MODEL_VERSION"] = args.version
    if args.artifacts:
        os.environ["MODEL_ARTIFACTS"] = args.artifacts
    exec_server("model_service.wsgi:app", bind_address(args.bind, args.port, 8001), args.workers)
    return 0  # not reached: exec replaces this process


def _batch(args: argparse.Namespace) -> int:
    from model_service.batch import BatchError, score_csv

    try:
        report = score_csv(
            args.artifacts or os.environ.get("MODEL_ARTIFACTS", "artifacts"),
            args.version,
            args.input,
            args.output,
            chunk_rows=args.chunk_rows,
            id_column=args.id_column,
            errors_path=args.errors,
            progress=not args.quiet,
        )
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.rows_ok else 1


def _export(args: argparse.Namespace) -> int:
    from model_service.export import ExportError, export_onnx

    try:
        exported = export_onnx(args.artifacts, args.version, args.output, args.eval)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(exported.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_service", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train every version into artifacts/<version>/")
    train.add_argument("--version", action="append", help="train only this version (repeatable)")
    train.add_argument("--artifacts", default=os.environ.get("MODEL_ARTIFACTS", "artifacts"))
    train.set_defaults(func=_train)

    package = sub.add_parser("package", help="package your fitted pipeline as a new version")
    package.add_argument("model", help="the fitted estimator or Pipeline, saved with skops "
                         "(.skops) or joblib")
    package.add_argument("--version", required=True, help="the new version's label, e.g. v3")
    package.add_argument("--eval", required=True, help="CSV of evaluation rows: the model's "
                         "columns plus the target")
    package.add_argument("--target", required=True, help="the target column of the --eval CSV")
    package.add_argument("--description", help="one line saying what this version is")
    package.add_argument("--format", choices=["skops", "joblib"], default="skops",
                         help="how the model file is written (default skops: loading it runs no "
                         "code; joblib for pipelines skops cannot hold)")
    package.add_argument("--trust", action="append", default=[], metavar="TYPES",
                         help="types skops may build when loading (comma-separated; repeatable): "
                         "package says which it needs")
    package.add_argument("--artifacts", default=os.environ.get("MODEL_ARTIFACTS", "artifacts"))
    package.set_defaults(func=_package)

    listing = sub.add_parser("list", help="the versions in the artifacts folder")
    listing.add_argument("--json", action="store_true", help="every version's metadata as JSON")
    listing.add_argument("--artifacts", default=os.environ.get("MODEL_ARTIFACTS", "artifacts"))
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="all metadata of one version")
    show.add_argument("version")
    show.add_argument("--json", action="store_true", help="metadata.json as it is")
    show.add_argument("--artifacts", default=os.environ.get("MODEL_ARTIFACTS", "artifacts"))
    show.set_defaults(func=_show)

    serve = sub.add_parser("serve", help="serve one version with gunicorn")
    serve.add_argument("--version", default=os.environ.get("MODEL_VERSION", "v1"))
    serve.add_argument("--port", type=int, help="port (default: $PORT, else 8001)")
    serve.add_argument("--bind", help="full gunicorn bind address, e.g. 127.0.0.1:9000 or fd://3")
    serve.add_argument("--workers", type=int, help="worker processes (default: $WEB_CONCURRENCY or 2)")
    serve.add_argument("--artifacts", help="artifacts folder (default: $MODEL_ARTIFACTS or artifacts)")
    serve.set_defaults(func=_serve)

    batch = sub.add_parser("batch", help="score a CSV file in chunks")
    batch.add_argument("--version", required=True)
    batch.add_argument("input", help="CSV whose header names the model's columns (any order; an id "
                       "and other columns may be there too; `show V` lists them)")
    batch.add_argument("output", help="CSV to write: id (or the input columns), prediction, and "
                       "for classifiers one probability_<class> column per class")
    batch.add_argument("--id-column", help="column to copy as the row id (default: 'id' if present)")
    batch.add_argument("--errors", help="CSV of rejected rows (default: OUTPUT.errors.csv)")
    batch.add_argument("--chunk-rows", type=int, default=10_000)
    batch.add_argument("--artifacts", help="artifacts folder (default: $MODEL_ARTIFACTS or artifacts)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(func=_batch)

    export = sub.add_parser("export", help="export a version to ONNX, checked on its evaluation "
                            "rows first")
    export.add_argument("--version", required=True)
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("output", help="the .onnx file to write")
    export.add_argument("--eval", required=True, help="the evaluation CSV the version was "
                        "packaged with (a target column in it is ignored)")
    export.add_argument("--artifacts", default=os.environ.get("MODEL_ARTIFACTS", "artifacts"))
    export.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
