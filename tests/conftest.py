"""Shared test settings: offline Hugging Face, one text-embedding cache per session, tiny models."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

_VQ = "dim=32,enc_layers=1,enc_heads=4,tok_layers=1,tok_heads=4,dec_layers=1,dec_heads=4,num_token=16,num_code=64,len_s=32,head_hidden=32"


def vq_overrides(side: str):
    return [f"{side}.vqshape.{kv}" for kv in _VQ.split(",")]


# A few-step run on generated data with ground-truth sub-actions: used by the pipeline tests.
TINY = ["data.name=synthetic", "data.synthetic.num_windows=120", "data.synthetic.num_subjects=6",
        "data.batch_size=8", "data.eval_batch_size=16", "train.max_steps=2", "train.teacher_epochs=1",
        "train.epochs=1", "train.log_every=1", "kd.workspace.num_slots=3",
        *vq_overrides("teacher"), *vq_overrides("student")]


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_cache"))
