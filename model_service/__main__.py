"""Command line of the model service: ``train``, ``serve`` and ``batch``.

    python -m model_service train
    python -m model_service serve --version v2 --port 8002
    python -m model_service batch --version v1 in.csv out.csv
"""

from __future__ import annotations

import argparse
import os
import sys


def _train(args: argparse.Namespace) -> int:
    from model_service.training import VERSIONS, train_all

    versions = args.version or list(VERSIONS)
    for version in versions:
        if version not in VERSIONS:
            print(f"error: unknown version {version!r}; known: {', '.join(VERSIONS)}", file=sys.stderr)
            return 2
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


def _serve(args: argparse.Namespace) -> int:
    from common.serving import bind_address, exec_server

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_service", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train every version into artifacts/<version>/")
    train.add_argument("--version", action="append", help="train only this version (repeatable)")
    train.add_argument("--artifacts", default=os.environ.get("MODEL_ARTIFACTS", "artifacts"))
    train.set_defaults(func=_train)

    serve = sub.add_parser("serve", help="serve one version with gunicorn")
    serve.add_argument("--version", default=os.environ.get("MODEL_VERSION", "v1"))
    serve.add_argument("--port", type=int, help="port (default: $PORT, else 8001)")
    serve.add_argument("--bind", help="full gunicorn bind address, e.g. 127.0.0.1:9000 or fd://3")
    serve.add_argument("--workers", type=int, help="worker processes (default: $WEB_CONCURRENCY or 2)")
    serve.add_argument("--artifacts", help="artifacts folder (default: $MODEL_ARTIFACTS or artifacts)")
    serve.set_defaults(func=_serve)

    batch = sub.add_parser("batch", help="score a CSV file in chunks")
    batch.add_argument("--version", required=True)
    batch.add_argument("input", help="CSV with a header naming the 30 features (and optionally an id)")
    batch.add_argument("output", help="CSV to write: id (or the input columns), prediction, probabilities")
    batch.add_argument("--id-column", help="column to copy as the row id (default: 'id' if present)")
    batch.add_argument("--errors", help="CSV of rejected rows (default: OUTPUT.errors.csv)")
    batch.add_argument("--chunk-rows", type=int, default=10_000)
    batch.add_argument("--artifacts", help="artifacts folder (default: $MODEL_ARTIFACTS or artifacts)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(func=_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
