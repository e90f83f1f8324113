"""Batch scoring of a CSV file: streamed in chunks, bad rows reported, good rows never lost.

Memory stays flat whatever the file size: only one chunk of lines is held at a time. Each chunk
is parsed by pandas' C reader; a chunk that fails to parse is re-read line by line so every bad
row is reported with its line number and the good rows around it are still scored. Results are
formatted a chunk at a time with numpy (probabilities as fixed six-decimal text, the same digits
``"%.6f"`` gives), so writing costs little more than the bytes themselves.

    >>> report = score_csv("artifacts", "v1", "in.csv", "out.csv")   # doctest: +SKIP
    >>> print(report.summary())                                       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from tqdm import tqdm
from model_service.artifacts import ArtifactError, LoadedModel, load_artifact


class BatchError(Exception):
    """The batch cannot run at all (missing file, unusable header, unloadable model)."""


@dataclass
class BatchReport:
    """What a batch run did."""

    output: Path
    errors_path: Path
    rows_ok: int = 0
    rows_bad: int = 0
    seconds: float = 0.0
    bad_examples: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.rows_ok / self.seconds if self.seconds else 0.0
        text = f"scored {self.rows_ok} rows in {self.seconds:.2f} s ({rate:,.0f} rows/s) -> {self.output}"
        if self.rows_bad:
            text += f"; {self.rows_bad} bad rows skipped, listed in {self.errors_path}"
        return text


@dataclass(frozen=True)
class _Layout:
    header: list[str]
    feature_idx: list[int]
    id_idx: int | None


def _layout(header_line: str, model: LoadedModel, id_column: str | None) -> _Layout:
    if "\r" in header_line:
        raise BatchError(
            "the first line holds a carriage return (\\r) inside it: lines that end with a "
            "lone \\r (classic Mac OS) are not supported; convert the file to \\n or \\r\\n line ends"
        )
    try:
        header = next(csv.reader([header_line]))
    except csv.Error as exc:
        raise BatchError(f"the first line cannot be read as a CSV header: {exc}") from None
    header = [h.strip() for h in header]
    missing = [f for f in model.feature_names if f not in header]
    if missing:
        raise BatchError(
            f"the header lacks {len(missing)} feature column(s), e.g. {missing[:3]}; "
            f"the first line must name the model's features (GET /version lists them)"
        )
    id_idx = None
    if id_column:
        if id_column not in header:
            raise BatchError(f"--id-column {id_column!r} is not in the header")
        id_idx = header.index(id_column)
    elif "id" in header:
        id_idx = header.index("id")
    return _Layout(header, [header.index(f) for f in model.feature_names], id_idx)


@dataclass
class _Chunk:
    """One chunk of input lines (bytes, line endings kept) and what parsing made of them."""

    lines: list[bytes]
    first_line: int  # the file's line number of lines[0]
    text: bytes  # the lines joined
    good: list[int] | None = None  # positions in ``lines`` of the rows in ``matrix``; None: all
    matrix: np.ndarray | None = None
    bad: list[tuple[int, str]] = field(default_factory=list)


def _chunks(fh: BinaryIO, first_line: int, size: int) -> Iterator[_Chunk]:
    number = first_line
    while lines := list(islice(fh, size)):
        yield _Chunk(lines, number, b"".join(lines))
        number += len(lines)


def _parse(chunk: _Chunk, layout: _Layout) -> None:
    """Fill ``chunk.matrix``: pandas' C reader for the whole chunk, line by line if it refuses."""
    try:
        frame = pd.read_csv(
            io.BytesIO(chunk.text),
            header=None,
            names=range(len(layout.header)),
            usecols=layout.feature_idx,
            dtype=np.float64,
            engine="c",
            skip_blank_lines=False,
            na_filter=False,
            quotechar='"',
        )
        matrix = frame[layout.feature_idx].to_numpy(dtype=np.float64)
        if matrix.shape[0] != len(chunk.lines):
            raise ValueError("row count changed")
    except (ValueError, pd.errors.ParserError):
        _parse_slow(chunk, layout)
        return
    finite = np.isfinite(matrix).all(axis=1)
    if finite.all():
        chunk.matrix = matrix
        return
    chunk.bad = [
        (chunk.first_line + int(i), "has a non-finite value (nan or inf)")
        for i in np.flatnonzero(~finite)
    ]
    chunk.good = np.flatnonzero(finite).tolist()
    chunk.matrix = matrix[finite]


def _parse_slow(chunk: _Chunk, layout: _Layout) -> None:
    """Line-by-line parse of a chunk the fast reader refused: good rows kept, bad rows explained."""
    good, rows = [], []
    width = len(layout.header)
    for pos, raw in enumerate(chunk.lines):
        number = chunk.first_line + pos
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line.strip():
            continue  # a blank line is no row
        try:
            fields = next(csv.reader([line]))
        except csv.Error as exc:  # a field over the csv module's limit, say
            chunk.bad.append((number, f"cannot be read as CSV: {exc}"))
            continue
        if len(fields) != width:
            unclosed = "; it opens a quote it never closes" if line.count('"') % 2 else ""
            chunk.bad.append((number, f"has {len(fields)} fields; the header has {width}{unclosed}"))
            continue
        try:
            row = [float(fields[i]) for i in layout.feature_idx]
        except ValueError:
            col = next(i for i in layout.feature_idx if not _is_float(fields[i]))
            chunk.bad.append(
                (number, f"column {layout.header[col]!r} is not a number: {fields[col]!r}")
            )
            continue
        if not all(math.isfinite(v) for v in row):
            chunk.bad.append((number, "has a non-finite value (nan or inf)"))
            continue
        good.append(pos)
        rows.append(row)
    chunk.good = good
    chunk.matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(layout.feature_idx))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def score_csv(
    artifacts: str | Path,
    version: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    chunk_rows: int = 10_000,
    id_column: str | None = None,
    errors_path: str | Path | None = None,
    progress: bool = True,
) -> BatchReport:
    """Score every row of ``input_path`` with ``version`` into ``output_path``."""
    try:
        model = load_artifact(artifacts, version)
    except ArtifactError as exc:
        raise BatchError(str(exc)) from None
    input_path, output_path = Path(input_path), Path(output_path)
    errors = Path(errors_path) if errors_path else output_path.with_suffix(".errors.csv")
    report = BatchReport(output_path, errors)
    if not input_path.is_file():
        raise BatchError(f"input file {input_path} does not exist")
    if chunk_rows < 1:
        raise BatchError(f"chunk size must be at least 1 row, not {chunk_rows}")
    for target in (output_path, errors):
        if not target.parent.is_dir():
            raise BatchError(f"cannot write {target}: folder {target.parent} does not exist")
    started = time.perf_counter()
    # Results go to hidden files beside the targets, renamed over them only when the whole file
    # has been read: a run that stops early (bad header, Ctrl-C, a full disk) leaves an earlier
    # output untouched.
    partial_out = output_path.with_name(f".{output_path.name}.partial")
    partial_err = errors.with_name(f".{errors.name}.partial")
    try:
        with open(input_path, "rb") as fin:
            raw_header = fin.readline()
            header_line = raw_header.decode("utf-8-sig", errors="replace").rstrip("\r\n")
            if not header_line.strip():
                raise BatchError(f"{input_path} is empty; the first line must be a header")
            layout = _layout(header_line, model, id_column)
            with (
                open(partial_out, "wb") as fout,
                open(partial_err, "w", newline="") as ferr,
                tqdm(
                    total=os.path.getsize(input_path),
                    initial=len(raw_header),
                    unit="B",
                    unit_scale=True,
                    desc=f"scoring with {version}",
                    disable=not progress,
                ) as bar,
            ):
                writer = _Writer(fout, model, layout)
                writer.header(header_line)
                err_writer = csv.writer(ferr)
                err_writer.writerow(["line", "reason"])
                for chunk in _chunks(fin, 2, chunk_rows):
                    _parse(chunk, layout)
                    for number, reason in chunk.bad:
                        err_writer.writerow([number, reason])
                        if len(report.bad_examples) < 20:
                            report.bad_examples.append((number, reason))
                    report.rows_bad += len(chunk.bad)
                    report.rows_ok += writer.rows(chunk)
                    bar.update(len(chunk.text))
        os.replace(partial_out, output_path)
        os.replace(partial_err, errors)
    except OSError as exc:  # unreadable input, a full disk, no permission to write
        raise BatchError(f"the batch stopped: {exc.strerror or exc} ({exc.filename or input_path})") from None
    finally:
        partial_out.unlink(missing_ok=True)
        partial_err.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - started
    return report


class _Writer:
    """Writes each scored row as its lead (the id, or the whole input line), class, probabilities."""

    def __init__(self, out: BinaryIO, model: LoadedModel, layout: _Layout) -> None:
        self.out, self.model, self.layout = out, model, layout
        self.class_text = {c: b"," + str(c).encode() for c in model.classes.tolist()}

    def header(self, header_line: str) -> None:
        if self.layout.id_idx is None:
            lead = header_line
        else:
            lead = _csv_text(self.layout.header[self.layout.id_idx])
        columns = ["prediction", *(f"probability_{label}" for label in self.model.class_labels)]
        self.out.write((lead + "," + ",".join(map(_csv_text, columns)) + "\n").encode())

    def rows(self, chunk: _Chunk) -> int:
        """Score and write the chunk's good rows; returns how many."""
        if chunk.matrix is None or not len(chunk.matrix):
            return 0
        predictions, proba = self.model.predict(chunk.matrix)
        classes = [self.class_text[c] for c in predictions.tolist()]
        lines = chunk.lines if chunk.good is None else [chunk.lines[i] for i in chunk.good]
        self.out.write(
            b"".join(
                chain.from_iterable(
                    zip(
                        self._leads(lines, quoted=b'"' in chunk.text),
                        classes,
                        _fixed6(proba),
                        strict=True,
                    )
                )
            )
        )
        return len(lines)

    def _leads(self, lines: list[bytes], *, quoted: bool) -> list[bytes]:
        idx = self.layout.id_idx
        if idx is None:
            return [line.rstrip(b"\r\n") for line in lines]
        if quoted:
            return [_field(line, idx) for line in lines]
        return [line.split(b",", idx + 1)[idx].rstrip(b"\r\n") for line in lines]


def _field(line: bytes, index: int) -> bytes:
    """Field ``index`` of a CSV line, as CSV text again (quoted where the value needs it)."""
    text = line.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
    try:
        value = next(csv.reader([text]))[index]
    except (csv.Error, IndexError):  # pandas read the line; keep its text as it is
        return line.rstrip(b"\r\n").split(b",", index + 1)[index]
    return _csv_text(value).encode("utf-8", errors="surrogateescape")


def _csv_text(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


_DIGITS = 10 ** np.arange(5, -1, -1, dtype=np.int64)  # 100000 ... 1


def _fixed6(proba: np.ndarray) -> list[bytes]:
    """Each row's probabilities as ``,p0,p1...\\n`` with six decimals, exactly as ``%.6f`` writes them.

    The digits come from the probabilities scaled to integers of millionths, in numpy. A value
    outside [0, 1], or one whose scaled value lies so close to a half that the scaling's rounding
    could pick the other neighbour, is written by ``%.6f`` itself.
    """
    n, k = proba.shape
    valid = ~np.signbit(proba) & (proba <= 1.0)  # NaN fails the second test
    scaled = np.where(valid, proba, 0.0) * 1e6
    micro = np.rint(scaled).astype(np.int64)
    exact = valid & (np.abs(np.abs(scaled - micro) - 0.5) > 1e-6)
    text = np.empty((n, k, 9), dtype=np.uint8)
    text[:, :, 0] = ord(",")
    text[:, :, 1] = ord("0") + micro // 1_000_000
    text[:, :, 2] = ord(".")
    text[:, :, 3:] = ord("0") + (micro[:, :, None] // _DIGITS) % 10
    rows = np.empty((n, 9 * k + 1), dtype=np.uint8)
    rows[:, :-1] = text.reshape(n, 9 * k)
    rows[:, -1] = ord("\n")
    out = rows.view(f"S{9 * k + 1}").ravel().tolist()
    for i in np.flatnonzero(~exact.all(axis=1)).tolist():
        out[i] = ("".join(f",{p:.6f}" for p in proba[i].tolist()) + "\n").encode()
    return out
