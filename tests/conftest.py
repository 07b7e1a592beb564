"""Shared test setup: no test may reach the Hugging Face hub (our machines cannot)."""

import os

import pytest

# Set before diffusers/huggingface_hub are imported, so a download attempt fails at once
# with the hub's offline error instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def karlo_dir(tmp_path_factory):
    """A tiny Karlo pipeline in the hub layout, written once per session."""
    from vslerp_app.fixtures import write_fixture

    return write_fixture("karlo", tmp_path_factory.getbasetemp() / "tiny-karlo")
