"""Model service benchmark: what HTTP adds to a prediction, and batch scoring against in-memory.

    python -m loadtest.bench_model_service [--quick]

Everything is measured side by side in one run, interleaved in rounds, medians of the rounds
reported (the machine may be small and shared):
- one row at concurrency 1 over a keep-alive connection to a one-worker service (wrk, a C
  client, so the client's own parsing is not counted), against the same row predicted in this
  process: p50 and p99, and what HTTP adds at p50. In-process is ``LoadedModel.predict`` for a
  compiled prediction, and the pipeline's own predict (or predict_proba) for any other;
- 1000-row requests: what the service adds per row on top of the same in-process prediction;
- batch scoring of a 100,000-row CSV (``model_service.batch.score_csv``, streamed) against
  in-process prediction on the same CSV rows (the artifact loaded as score_csv loads it, pandas
  reads the whole file, predict, pandas writes); for reference, predicting the rows already in
  memory, reading the CSV alone (the floor under any scorer that starts from CSV), and loading
  the artifact;
- peak memory of batch runs over 10,000 and 100,000 rows, each in a fresh process.

Uses ``artifacts/`` when both versions are trained there, else trains into a temporary folder.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from loadtest.harness import ROOT, Proc, free_port, stop_together, table, wrk_latency

VERSIONS = ("v1", "v2")
BATCH_ROWS = 100_000
MEMORY_ROWS = (10_000, 100_000)

_PEAK_MEMORY = """
import resource, sys
from model_service.batch import score_csv
def own_peak():
    # Linux carries a parent's peak RSS into ru_maxrss across fork and exec; VmHWM is this
    # process's own high-water mark.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
score_csv(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], progress=False)
print(own_peak())
"""


def _artifacts(scratch: Path) -> Path:
    """``artifacts/`` if both versions are there, else a fresh training in ``scratch``."""
    root = ROOT / "artifacts"
    if all((root / v / "metadata.json").exists() for v in VERSIONS):
        return root
    from model_service.training import train_all

    target = scratch / "artifacts"
    train_all(target, list(VERSIONS))
    return target


def _serve(version: str, artifacts: Path) -> Proc:
    port = free_port()
    return Proc(
        [
            sys.executable,
            "-m",
            "model_service",
            "serve",
            "--version",
            version,
            "--port",
            str(port),
            "--workers",
            "1",
            "--artifacts",
            str(artifacts),
        ],
        {},
        f"http://127.0.0.1:{port}",
    )


def _timed(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def _http_caller(
    url: str, method: str, path: str, body: bytes | None = None
) -> tuple[http.client.HTTPConnection, Callable[[], None]]:
    """One keep-alive connection and a call that sends the pre-encoded request on it."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Content-Type": "application/json"} if body is not None else {}

    def call() -> None:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}{path} answered {resp.status}")

    return conn, call


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _row(measure: str, value: str, target: str = "", verdict: str = "") -> dict[str, Any]:
    return {"measure": measure, "value": value, "target": target, "verdict": verdict}


def _inference_totals(url: str, version: str) -> tuple[float, float]:
    """(seconds, calls) of the service's ``model_inference_duration_seconds`` for ``version``:
    the time its pipeline took inside the server, as the service measures it."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    found = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        if family.name == "model_inference_duration_seconds":
            for sample in family.samples:
                part = sample.name.rsplit("_", 1)[1]
                if part in found and sample.labels.get("version") == version:
                    found[part] = sample.value
    return found["sum"], found["count"]


def _quantiles(times: list[float]) -> tuple[float, float]:
    return float(np.quantile(times, 0.5)), float(np.quantile(times, 0.99))


def _median_of_rounds(got: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p50 for p50, _ in got), statistics.median(p99 for _, p99 in got)


@dataclass(frozen=True)
class Workload:
    """The same rows as a ``/predict`` body and as the pipeline's own input, one row and 1000."""

    one_body: bytes
    block_body: bytes
    one: Any
    block: Any

    @classmethod
    def of_matrix(cls, data: np.ndarray) -> Workload:
        one, block = data[:1], data[np.arange(1000) % len(data)]
        return cls(orjson.dumps({"instances": one.tolist()}),
                   orjson.dumps({"instances": block.tolist()}), one, block)

    @classmethod
    def of_table(cls, model: Any, table: Any) -> Workload:
        """Records keyed by column name (nulls for missing values), from a CSV's rows."""
        block_table = table.iloc[np.arange(1000) % len(table)].reset_index(drop=True)
        records = orjson.loads(block_table.to_json(orient="records"))
        return cls(orjson.dumps({"instances": records[:1]}), orjson.dumps({"instances": records}),
                   model.schema.from_table(block_table.iloc[:1]),
                   model.schema.from_table(block_table))


def _latency_rows(version: str, url: str, model: Any, work: Workload,
                  quick: bool) -> list[dict[str, Any]]:
    """HTTP through wrk (c=1, one keep-alive connection) against the same predict in-process.

    Every measure is taken once per round, the rounds interleaved; medians over the rounds.
    """

    rounds, seconds, n = (3, 1, 500) if quick else (5, 3, 2000)
    one, block, one_body, block_body = work.one, work.block, work.one_body, work.block_body
    own = model.pipeline.predict_proba if model.classes is not None else model.pipeline.predict
    # In-process is what the service calls: the compiled prediction where there is one; for any
    # other pipeline, the pipeline's own predict on the same rows, one row and 1000 alike (the
    # budget's definition for a user's pipeline), with the difference to LoadedModel.predict
    # shown beside it.
    own_baseline = model.prediction != "compiled"
    block_rounds = 100 if quick else 300
    conn, python_client = _http_caller(url, "POST", "/predict", one_body)
    got: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("http", "health", "local", "sklearn", "python", "block_http", "block_local",
                        "block_own")
    }
    # the pipeline's mean time inside the server during the one-row HTTP rounds, and in this
    # process: what the server's surroundings (the client, the other core) do to the same predict
    inside: list[float] = []
    here: list[float] = []
    try:
        wrk_latency(url, "/predict", one_body, 1)  # warm-up
        _timed(lambda: model.predict(one), n // 10)
        for _ in range(rounds):
            before = _inference_totals(url, model.version)
            got["http"].append(wrk_latency(url, "/predict", one_body, seconds))
            after = _inference_totals(url, model.version)
            if after[1] > before[1]:
                inside.append((after[0] - before[0]) / (after[1] - before[1]))
            local = _timed(lambda: model.predict(one), n)
            here.append(statistics.fmean(local))
            got["local"].append(_quantiles(local))
            got["health"].append(wrk_latency(url, "/health", None, seconds))
            got["sklearn"].append(
                _quantiles(_timed(lambda: own(one), n // 4))
            )
            got["python"].append(_quantiles(_timed(python_client, n // 2)))
            got["block_http"].append(wrk_latency(url, "/predict", block_body, seconds))
            got["block_local"].append(_quantiles(_timed(lambda: model.predict(block), block_rounds)))
            if own_baseline:
                got["block_own"].append(_quantiles(_timed(lambda: own(block), block_rounds)))
    finally:
        conn.close()
    m = {k: _median_of_rounds(v) for k, v in got.items() if v}
    added = m["http"][0] - (m["sklearn"][0] if own_baseline else m["local"][0])
    block_in_process = m["block_own"][0] if own_baseline else m["block_local"][0]
    per_row = (m["block_http"][0] - block_in_process) / 1000
    return [
        _row(
            f"{version} one row, HTTP c=1 keep-alive (wrk): p50 / p99",
            f"{_ms(m['http'][0])} / {_ms(m['http'][1])}",
        ),
        _row(
            f"{version} one row, in-process LoadedModel.predict (what the service calls): p50 / p99",
            f"{_ms(m['local'][0])} / {_ms(m['local'][1])} ({model.prediction})",
        ),
        _row(
            f"{version} one row: HTTP p50 minus in-process p50"
            + (f" (the pipeline's own {own.__name__})" if own_baseline else ""),
            _ms(added),
            "<= 0.5 ms",
            _verdict(added <= 0.0005),
        ),
        *([_row(f"{version} for reference: HTTP p50 minus LoadedModel.predict p50",
                _ms(m["http"][0] - m["local"][0]))] if own_baseline else []),
        *([_row(f"{version} for reference: LoadedModel.predict, one row, mean inside the service "
                "during the HTTP rounds (its model_inference_duration_seconds) / in this process",
                f"{_ms(statistics.median(inside))} / {_ms(statistics.median(here))}")]
          if inside else []),
        _row(
            f"{version} HTTP floor: GET /health (wrk, c=1), p50",
            _ms(m["health"][0]),
        ),
        _row(
            f"{version} for reference: scikit-learn's own pipeline.{own.__name__}, one row, p50",
            _ms(m["sklearn"][0]),
        ),
        _row(
            f"{version} for reference: one row with Python's http.client as the client, p50",
            _ms(m["python"][0]),
        ),
        _row(
            f"{version} 1000 rows: HTTP p50 (wrk) / in-process p50"
            + (f" (the pipeline's own {own.__name__})" if own_baseline else ""),
            f"{_ms(m['block_http'][0])} / {_ms(block_in_process)}",
        ),
        _row(
            f"{version} 1000 rows: service overhead per row",
            f"{per_row * 1e6:.2f} us/row",
            "<= 5 us/row",
            _verdict(per_row <= 5e-6),
        ),
        *([_row(f"{version} for reference: 1000 rows, HTTP p50 minus LoadedModel.predict p50, per row",
                f"{(m['block_http'][0] - m['block_local'][0]) / 1000 * 1e6:.2f} us/row")]
          if own_baseline else []),
    ]


def _write_csv(path: Path, data: np.ndarray, features: list[str], n: int) -> None:
    matrix = data[np.arange(n) % len(data)]
    with open(path, "w") as fh:
        fh.write(",".join(["id", *features]) + "\n")
        ids = np.arange(n).reshape(-1, 1)
        np.savetxt(
            fh, np.hstack([ids, matrix]), delimiter=",", fmt=["%d"] + ["%.6g"] * matrix.shape[1]
        )


def _pandas_scorer(model: Any, source: Path, target: Path) -> None:
    """The whole file in memory: read with pandas, predict, write (the streaming scorer's rival)."""
    import pandas as pd

    frame = pd.read_csv(source)
    predictions, proba = model.predict(frame[list(model.feature_names)].to_numpy(np.float64))
    out = pd.DataFrame({"id": frame["id"], "prediction": predictions})
    for i, label in enumerate(model.class_labels):
        out[f"probability_{label}"] = proba[:, i]
    out.to_csv(target, index=False, float_format="%.6f")


def _pandas_read(model: Any, source: Path) -> None:
    """Only reading the file's feature columns into a matrix: a floor for any CSV scorer."""
    import pandas as pd

    pd.read_csv(source, usecols=list(model.feature_names)).to_numpy(np.float64)


def _batch_rows(
    version: str, artifacts: Path, model: Any, data: np.ndarray, scratch: Path, quick: bool
) -> list[dict[str, Any]]:
    from model_service.artifacts import load_artifact
    from model_service.batch import score_csv

    rounds = 3 if quick else 5
    n = BATCH_ROWS // 4 if quick else BATCH_ROWS
    source = scratch / f"batch-{n}.csv"
    if not source.exists():
        _write_csv(source, data, list(model.feature_names), n)
    matrix = data[np.arange(n) % len(data)]
    runs: dict[str, Callable[[], Any]] = {
        "batch": lambda: score_csv(artifacts, version, source, scratch / "out.csv", progress=False),
        # both start from the files: score_csv loads the artifact, so the rival does too
        "pandas": lambda: _pandas_scorer(load_artifact(artifacts, version), source,
                                         scratch / "pandas.csv"),
        "memory": lambda: model.predict(matrix),
        "read": lambda: _pandas_read(model, source),
        "load": lambda: load_artifact(artifacts, version),
    }
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, work in runs.items():
            started = time.perf_counter()
            result = work()
            seconds[name].append(time.perf_counter() - started)
            if name == "batch":
                assert result.rows_ok == n and result.rows_bad == 0
    rate = {k: n / statistics.median(v) for k, v in seconds.items()}
    vs_pandas = rate["batch"] / rate["pandas"]
    return [
        _row(f"{version} batch score_csv, {n:,}-row CSV, streamed", f"{rate['batch']:,.0f} rows/s"),
        _row(
            f"{version} in-process predict on the same CSV rows: the artifact loaded, pandas "
            "reads them all, predict, pandas writes",
            f"{rate['pandas']:,.0f} rows/s",
        ),
        _row(
            f"{version} batch / in-process predict on the same CSV rows",
            f"{vs_pandas:.0%}",
            ">= 80%",
            _verdict(vs_pandas >= 0.8),
        ),
        _row(
            f"{version} for reference: predict_proba on rows already in memory (no CSV) / "
            "reading the CSV alone",
            f"{rate['memory']:,.0f} / {rate['read']:,.0f} rows/s",
        ),
        _row(
            f"{version} for reference: batch / in-memory predict; reading alone / in-memory predict",
            f"{rate['batch'] / rate['memory']:.0%}; {rate['read'] / rate['memory']:.0%}",
        ),
        _row(f"{version} for reference: loading the artifact (sha256, then the model), both sides",
             _ms(statistics.median(seconds["load"]))),
    ]


def _peak_memory(artifacts: Path, version: str, source: Path, scratch: Path) -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK_MEMORY,
            str(artifacts),
            version,
            str(source),
            str(scratch / "peak.csv"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[-1])


def _memory_rows(
    version: str, artifacts: Path, model: Any, data: np.ndarray, scratch: Path, quick: bool
) -> list[dict[str, Any]]:
    sources = {}
    for n in MEMORY_ROWS:
        sources[n] = scratch / f"memory-{n}.csv"
        _write_csv(sources[n], data, list(model.feature_names), n)
    peaks: dict[int, list[int]] = {n: [] for n in MEMORY_ROWS}
    for _ in range(1 if quick else 2):
        for n in MEMORY_ROWS:
            peaks[n].append(_peak_memory(artifacts, version, sources[n], scratch))
    small, large = (statistics.median(peaks[n]) for n in MEMORY_ROWS)
    ratio = large / small
    return [
        _row(
            f"{version} batch peak memory (fresh process), {MEMORY_ROWS[0]:,} / "
            f"{MEMORY_ROWS[1]:,} rows",
            f"{small / 2**20:.0f} / {large / 2**20:.0f} MiB",
        ),
        _row(
            f"{version} batch peak memory ratio, 10x the rows",
            f"{ratio:.2f}",
            "<= 1.2",
            _verdict(ratio <= 1.2),
        ),
    ]


def _package_churn(artifacts: Path, scratch: Path) -> Any:
    """The churn example (``python -m examples.churn``) packaged as ``churn``, loaded."""
    from examples.churn.__main__ import main as build_churn
    from model_service.artifacts import load_artifact
    from model_service.packager import Evaluation, load_user_model, package_model

    build_churn(scratch / "churn")
    version = "churn"
    package_model(load_user_model(scratch / "churn" / "model.skops", ["numpy.dtype"]), version,
                  Evaluation.from_csv(scratch / "churn" / "eval.csv", "churned"), artifacts,
                  description="churn example", trust=["numpy.dtype"])
    return load_artifact(artifacts, version)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure everything; one dict per table row (measure, value, target, verdict)."""
    from sklearn.datasets import load_breast_cancer

    from model_service.artifacts import load_artifact

    scratch = Path(tempfile.mkdtemp(prefix="bench-model-service-"))
    procs: list[Proc] = []
    rows: list[dict[str, Any]] = []
    try:
        artifacts = _artifacts(scratch)
        data = np.asarray(load_breast_cancer().data)
        for version in VERSIONS:
            model = load_artifact(artifacts, version)
            server = _serve(version, artifacts)
            procs.append(server)
            rows += _latency_rows(version, server.url, model, Workload.of_matrix(data), quick)
            stop_together([server])
            procs.remove(server)
        # a user's mixed-type pipeline: a DataFrame of integers, numbers, categories, booleans
        # and missing values through a ColumnTransformer; "in-process" is its own predict_proba
        churn_artifacts = scratch / "churn-artifacts"
        churn = _package_churn(churn_artifacts, scratch)
        server = _serve(churn.version, churn_artifacts)
        procs.append(server)
        table_rows = pd.read_csv(scratch / "churn" / "eval.csv").drop(columns=["churned"])
        rows += _latency_rows(churn.version, server.url, churn,
                              Workload.of_table(churn, table_rows), quick)
        stop_together([server])
        procs.remove(server)
        for version in VERSIONS:
            model = load_artifact(artifacts, version)
            rows += _batch_rows(version, artifacts, model, data, scratch, quick)
        rows += _memory_rows("v1", artifacts, load_artifact(artifacts, "v1"), data, scratch, quick)
    finally:
        stop_together(procs)
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rows")
    args = parser.parse_args()
    print(table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
