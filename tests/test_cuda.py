"""exo-spec's CUDA settings: cuDNN attention off unless the user chose, nothing elsewhere."""

from __future__ import annotations

import os

from exo_spec.engine import cuda


def test_turns_cudnn_attention_off_on_cuda_only(monkeypatch):
    monkeypatch.delenv(cuda.CUDNN_SDPA, raising=False)
    monkeypatch.setattr(cuda, "on_cuda", lambda: False)
    cuda.configure()
    assert cuda.CUDNN_SDPA not in os.environ
    monkeypatch.setattr(cuda, "on_cuda", lambda: True)
    cuda.configure()
    assert os.environ[cuda.CUDNN_SDPA] == "0"


def test_leaves_a_users_choice(monkeypatch):
    monkeypatch.setenv(cuda.CUDNN_SDPA, "1")
    monkeypatch.setattr(cuda, "on_cuda", lambda: True)
    cuda.configure()
    assert os.environ[cuda.CUDNN_SDPA] == "1"
