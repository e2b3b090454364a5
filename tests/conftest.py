import os
import sys
from pathlib import Path

# No network in tests: every Hub call fails fast unless a test opts in to the local test Hub (`hub` fixture).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).parent))

import hf_starsse  # noqa: E402,F401  (before transformers' vision code: torchvision compatibility)

import pytest  # noqa: E402

HUB_TOKEN = "hf_testToken0123456789abcdefSECRET"
HUB_USER = "alice"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub-compatible server (tests/hub_server.py) with the real `huggingface_hub` client pointed at it.

    `huggingface_hub.constants` reads `HF_ENDPOINT` / `HF_HUB_OFFLINE` / `HF_HUB_CACHE` once at import, and
    `huggingface_hub` and `transformers` read those constants at call time, so the fixture sets the environment (for
    subprocesses) and the constants (for this process), and restores both afterwards. The cache and token paths point
    into `tmp_path`, so no stored token is used and nothing lands in the user's cache.
    """
    from hub_server import HubServer
    from huggingface_hub import constants

    server = HubServer(tmp_path / "hub_storage", tokens={HUB_TOKEN: HUB_USER}).start()
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    server.token = HUB_TOKEN
    server.user = HUB_USER
    yield server
    server.stop()
