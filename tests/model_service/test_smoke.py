from __future__ import annotations

import requests
from sklearn.datasets import load_breast_cancer


def test_v1_answers_a_prediction(v1_service) -> None:
    row = load_breast_cancer().data[0].tolist()
    resp = requests.post(v1_service.url + "/predict", json={"instances": [row]}, timeout=5)
    assert resp.status_code == 200
    body = resp.json()
    assert body["model_version"] == "v1"
    assert body["predictions"] == [0]
